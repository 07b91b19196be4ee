"""Every config under configs/ifso loads, builds and is consistent.

Prune configs build the masked model at their real demo-input size; deploy
and fine-tune configs are built from a structure exported from their prune
config (30% of every unit pruned) and must compute what the masked model
computes; the ResNet-56 pipeline (prune -> export -> fine-tune -> test) runs
end to end with mmengine's Runner on a few fake CIFAR-10 images.
"""
import copy
import functools
import os.path as osp
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmifso.utils import pruned_architecture_cfg

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / 'configs' / 'ifso'
# The classification zoo; detection configs have their own tests.
CLS_DIR = CONFIG_DIR / 'classification'
CLS_FOLDERS = ('resnet50', 'resnet56', 'vgg16', 'mobilenet_v2')
CONFIGS = sorted(
    p for p in CLS_DIR.rglob('*.py')
    if '_base_' not in p.parts and p.parent.name in CLS_FOLDERS)
PRUNE = [p for p in CONFIGS if p.name.startswith('ifso_prune')]
PRUNED = [
    p for p in CONFIGS if p.name.startswith(('ifso_finetune', 'ifso_deploy'))
]
BASELINES = [p for p in CONFIGS if not p.name.startswith('ifso_')]
IMAGENET_SHAPE = (1, 3, 224, 224)
CIFAR_SHAPE = (1, 3, 32, 32)

# The settings each prune config must carry.
PRUNE_SETTINGS = {
    'ifso_prune_resnet50_8xb32_in1k.py':
    dict(target=0.5, interval=25, lr=0.1 * 0.04, batch=32, wd=1e-4),
    'ifso_prune_mobilenet-v2_8xb32_in1k.py':
    dict(target=0.65, interval=25, lr=0.045 * 0.1125, batch=32, wd=4e-5),
    'ifso_prune_resnet56_1xb128_cifar10.py':
    dict(target=0.5, interval=10, lr=0.1, batch=128, wd=1e-4),
    'ifso_prune_vgg16bn_1xb128_cifar10.py':
    dict(target=0.3, interval=10, lr=0.1, batch=128, wd=1e-4),
}


def _id(p: Path) -> str:
    return str(p.relative_to(CONFIG_DIR))


@functools.lru_cache(maxsize=None)
def _load(path: str) -> Config:
    return Config.fromfile(path)


def load(path) -> Config:
    """A private copy of the config (parsed once per session)."""
    return copy.deepcopy(_load(str(path)))


def build(model_cfg, cfg: Config):
    """Build ``model_cfg`` as mmengine's Runner does (data_preprocessor
    merged from the top level)."""
    init_default_scope(cfg.default_scope)
    import mmifso  # noqa: F401
    from mmifso.registry import MODELS
    model_cfg = copy.deepcopy(model_cfg)
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    return MODELS.build(model_cfg)


def is_imagenet(path: Path) -> bool:
    return path.stem.endswith('_in1k')


def prune_config_of(path: Path) -> Path:
    (prune, ) = [p for p in PRUNE if p.parent == path.parent]
    return prune


def randomise(model: nn.Module) -> None:
    """Non-trivial weights and BN statistics (BN bias != 0 makes a pruned
    channel's activation non-zero, so masking must really remove it)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0, 1 / np.sqrt(m.weight[0].numel()),
                                 generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1, generator=g)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.3, 0.3, generator=g)
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    """Small models: one thread is as fast and does not stall (OpenMP
    spin-waits) when other processes share the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------- #
def test_configs_found():
    assert len(PRUNE) == 4 and len(BASELINES) == 2
    assert len(PRUNE) + len(PRUNED) + len(BASELINES) == len(CONFIGS)
    assert {p.parent.parent for p in CONFIGS} == {CLS_DIR}
    for folder in CLS_FOLDERS:
        names = [p.name for p in CONFIGS if p.parent.name == folder]
        assert any(n.startswith('ifso_prune') for n in names), folder
        assert any(n.startswith('ifso_finetune') for n in names), folder
        assert any(n.startswith('ifso_deploy') for n in names), folder


@pytest.mark.parametrize('path', CONFIGS, ids=_id)
def test_config_loads(path):
    cfg = load(path)
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.custom_imports['imports'] == ['mmifso']
    assert cfg.custom_imports['allow_failed_imports'] is False
    # OpenMMLab naming: {algo}_{model}_{schedule}_{dataset}.py
    assert re.fullmatch(
        r'(ifso_(prune|(finetune|deploy)(-flops\d\d)?)_)?'
        r'[a-z0-9-]+_\d+xb\d+_(in1k|cifar10)', path.stem), path.stem
    # Every _base_ outside this repo is an mmpretrain:: path.
    match = re.search(r"^_base_ = (\[.*?\]|'[^']*')", path.read_text(),
                      re.S | re.M)
    assert match, 'no _base_'
    for base in re.findall(r"'([^']+)'", match.group(1)):
        assert base.startswith(('mmpretrain::', './', '../')), base
    kind = cfg.model['type']
    if path in PRUNE:
        assert kind == 'mmifso.PruningAlgorithm'
    elif path in PRUNED:
        assert kind == 'mmifso.PrunedModel'
        assert cfg.model['structure'].endswith('structure.json')
        # The flat form: the upstream fields where mmpretrain reads them.
        assert cfg.model['architecture_type'] == 'ImageClassifier'
        assert 'architecture' not in cfg.model and 'backbone' in cfg.model
        assert not any('PruningHook' in h['type']
                       for h in cfg.get('custom_hooks', []))
    else:
        assert kind == 'ImageClassifier'
    if 'finetune' in path.name:
        assert cfg.load_from.endswith('pruned.pth')
        # The structure and the checkpoint come from the same export.
        assert osp.dirname(cfg.load_from) == osp.dirname(
            cfg.model['structure'])
    if path in PRUNED:
        # It is the architecture of its prune config.
        prune_cfg = load(prune_config_of(path))
        assert pruned_architecture_cfg(
            cfg.model) == prune_cfg.model['architecture']


@pytest.mark.parametrize('path', PRUNE, ids=_id)
def test_prune_config(path):
    cfg = load(path)
    want = PRUNE_SETTINGS[path.name]

    # Optimisation settings.
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == 'SGD' and opt.momentum == 0.9
    assert opt.lr == pytest.approx(want['lr'])
    assert opt.weight_decay == pytest.approx(want['wd'])
    assert cfg.train_dataloader.batch_size == want['batch']
    assert cfg.load_from == cfg.pretrained_ckpt and cfg.load_from

    # The pruning hook.
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'mmifso.PruningHook']
    assert len(hooks) == 1
    hook_cfg = hooks[0]
    assert 0 < hook_cfg['target_flops'] < 1
    assert hook_cfg['target_flops'] == want['target']
    assert hook_cfg['interval'] == want['interval']
    assert hook_cfg['channels_per_step'] == 1
    assert hook_cfg['importance']['type'] == 'mmifso.IFSOImportance'
    assert hook_cfg['importance']['lam'] is None  # = weight decay
    assert hook_cfg['stop_at_target'] is True
    from mmifso.registry import HOOKS
    hook = HOOKS.build(copy.deepcopy(hook_cfg))
    assert hook.thresholds[-1] == want['target']

    # The masked model at the config's own demo-input size.
    shape = IMAGENET_SHAPE if is_imagenet(path) else CIFAR_SHAPE
    assert tuple(cfg.model.mutator.demo_input.input_shape) == shape
    model = build(cfg.model, cfg)
    from mmifso.models.algorithms import PruningAlgorithm
    assert isinstance(model, PruningAlgorithm)
    assert len(model.mutator.units) > 0
    assert all(u.num_channels > 1 for u in model.mutator.units)
    res = model.mutator.resources()
    assert res['flops_ratio'] == 1.0
    assert res['params_ratio'] == 1.0
    # The config's mean/std reached the wrapped classifier.
    mean = torch.tensor(cfg.data_preprocessor['mean']).view(-1, 1, 1)
    assert torch.allclose(model.data_preprocessor.mean, mean)
    # The classifier's output is never pruned.
    head_fc = model.architecture.head.fc
    assert all(site.module != 'head.fc' or site.role != 'out'
               for u in model.mutator.units for site in u.sites)
    assert head_fc.out_features == (1000 if is_imagenet(path) else 10)


# Every prune config, classification and detection: the settings of the
# variables-only fragments (configs/ifso/_base_/pruning/) reach it, so that a
# default changed there changes every prune config.
ALL_PRUNE = sorted(p for p in CONFIG_DIR.rglob('ifso_prune_*.py')
                   if '_base_' not in p.parts)
FRAGMENTS = CONFIG_DIR / '_base_' / 'pruning'


@pytest.mark.parametrize('path', ALL_PRUNE, ids=_id)
def test_prune_config_uses_the_fragment(path):
    kind = 'det' if 'mmdet::' in path.read_text() else 'cls'
    fragment = Config.fromfile(str(FRAGMENTS / f'ifso_{kind}.py'))
    assert set(fragment.keys()) == {'ifso_model', 'ifso_hook'}  # variables
    cfg = load(path)
    # The model: the fragment's, with the config's architecture and size.
    model = copy.deepcopy(cfg.model.to_dict())
    assert model.pop('architecture')
    shape = model['mutator']['demo_input'].pop('input_shape')
    assert tuple(shape) == tuple(cfg.input_shape)
    assert model == fragment.ifso_model.to_dict()
    # The hook: the fragment's, with the config's target and interval.
    (hook, ) = [
        h for h in cfg.custom_hooks if h['type'] == 'mmifso.PruningHook'
    ]
    hook = dict(hook)
    assert (hook.pop('target_flops'), hook.pop('interval')) == (
        cfg.target_flops, cfg.interval)
    if path.name.startswith('ifso_prune_mobilenet-v2'):  # its checkpoints
        assert hook.pop('save_thresholds') == (0.9, 0.8, 0.7)
        fragment.ifso_hook.pop('save_thresholds')
    assert hook == fragment.ifso_hook.to_dict()


@pytest.mark.parametrize('path', BASELINES, ids=_id)
def test_baseline_config(path):
    cfg = load(path)
    assert cfg.train_cfg.max_epochs == 200
    assert cfg.train_dataloader.batch_size * 8 == 128  # 8xb16
    model = build(cfg.model, cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32), mode='tensor')
    assert out.shape == (2, 10)


def _export_structure(path: Path, tmp_path: Path, fraction: float = 0.3):
    """Build the prune config of ``path``, prune ``fraction`` of every unit
    and export it; returns the masked model, the pruned copy and the
    structure file."""
    prune_cfg = load(prune_config_of(path))
    if is_imagenet(path):
        # Structure and equality only: a smaller image keeps this fast.
        prune_cfg.model.mutator.demo_input.input_shape = (1, 3, 64, 64)
    algo = build(prune_cfg.model, prune_cfg)
    randomise(algo)
    algo.eval()
    for unit in algo.mutator.units:
        n = int(unit.num_channels * fraction)
        if n:
            unit.prune(torch.randperm(unit.num_channels)[:n].tolist())
    assert algo.mutator.resources()['flops_ratio'] < 1.0
    pruned, structure = algo.export()
    from mmifso.structures import save_structure
    structure_file = tmp_path / 's.json'
    save_structure(structure, str(structure_file))
    return algo, pruned, structure_file


@pytest.mark.parametrize('path', PRUNED, ids=_id)
def test_pruned_config_builds(path, tmp_path):
    cfg = load(path)
    algo, pruned, structure_file = _export_structure(path, tmp_path)
    cfg.model.structure = str(structure_file)
    model = build(cfg.model, cfg)
    assert type(model).__name__ == 'ImageClassifier'
    # Physically smaller, with the exported shapes.
    ours = model.state_dict()
    theirs = pruned.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    n_full = sum(p.numel() for p in algo.architecture.parameters())
    assert sum(p.numel() for p in model.parameters()) < n_full
    # The exported weights load with upstream key names and compute what the
    # masked model computes.
    model.load_state_dict(theirs, strict=True)
    model.eval()
    size = 32 if not is_imagenet(path) else 64
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = algo(x, mode='tensor')
        actual = model(x, mode='tensor')
    assert (expected - actual).abs().max() <= 1e-4


def test_plain_checkpoint_loads_into_prune_model(tmp_path):
    """``load_from`` a baseline (upstream key names) into the prune config."""
    from mmengine.runner import load_checkpoint
    path = CLS_DIR / 'resnet56' / 'ifso_prune_resnet56_1xb128_cifar10.py'
    cfg = load(path)
    plain = build(load(path.parent / 'resnet56_8xb16_cifar10.py').model, cfg)
    randomise(plain)
    ckpt = tmp_path / 'epoch_200.pth'
    torch.save(dict(state_dict=plain.state_dict()), ckpt)
    algo = build(cfg.model, cfg)
    load_checkpoint(algo, str(ckpt), strict=True)
    for k, v in plain.state_dict().items():
        assert torch.equal(algo.architecture.state_dict()[k], v), k
    assert all(bool(u.mask.all()) for u in algo.mutator.units)


# --------------------------------------------------------------------- #
# End to end on fake CIFAR-10 data with mmengine's Runner.
def _fake_cifar(root: Path, n_train: int = 40, n_test: int = 16) -> None:
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)

    def batch(n):
        return dict(
            data=rng.randint(0, 256, (n, 3072), dtype=np.uint8),
            labels=rng.randint(0, 10, n).tolist())

    for i in range(1, 6):
        with open(folder / f'data_batch_{i}', 'wb') as f:
            pickle.dump(batch(n_train // 5), f)
    with open(folder / 'test_batch', 'wb') as f:
        pickle.dump(batch(n_test), f)
    with open(folder / 'batches.meta', 'wb') as f:
        pickle.dump(dict(label_names=[str(i) for i in range(10)]), f)


def _small(cfg: Config, data_root: Path, work_dir: Path, name: str) -> Config:
    """Same config on fake data, one short epoch, no workers."""
    cfg = copy.deepcopy(cfg)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[key]
        loader.dataset.data_root = str(data_root)
        loader.dataset.download = False
        loader.batch_size = 8
        loader.num_workers = 0
        loader.persistent_workers = False
    cfg.train_cfg.max_epochs = 1
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = name
    cfg.default_hooks.logger.interval = 1
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    cfg.randomness = dict(seed=0)
    return cfg


def test_resnet56_pipeline_end_to_end(tmp_path, monkeypatch):
    from mmengine.runner import Runner
    from mmpretrain.datasets import CIFAR10

    from mmifso.apis.export import export_checkpoint
    try:
        from mmifso.apis import checks
    except ImportError:  # the tools' checkpoint checks are optional here
        checks = None
    monkeypatch.setattr(CIFAR10, '_check_integrity', lambda self: True)
    data = tmp_path / 'cifar10'
    _fake_cifar(data)
    folder = CLS_DIR / 'resnet56'

    # A "trained" baseline: initialised weights with upstream key names.
    base_cfg = load(folder / 'resnet56_8xb16_cifar10.py')
    plain = build(base_cfg.model, base_cfg)
    plain.init_weights()
    baseline_ckpt = tmp_path / 'baseline.pth'
    torch.save(dict(state_dict=plain.state_dict()), baseline_ckpt)

    # Prune: two or three steps of up to 250 channels reach 50% FLOPs in one
    # epoch (saving checkpoints costs seconds: only the target's is kept).
    prune_path = folder / 'ifso_prune_resnet56_1xb128_cifar10.py'
    cfg = _small(load(prune_path), data, tmp_path / 'prune', 'prune')
    cfg.load_from = str(baseline_ckpt)
    cfg.default_hooks.checkpoint.interval = -1
    # lr 0.1 on eight random images blows the logits up to ~1e7, where
    # float32 round-off alone exceeds the export's absolute tolerance.
    cfg.optim_wrapper.optimizer.lr = 0.01
    cfg.custom_hooks[0].update(
        interval=1, channels_per_step=250, score_batches=1,
        save_thresholds=())
    if checks is not None:  # what tools/train.py checks before training
        assert checks.check_checkpoint_matches_config(
            cfg, cfg.load_from) == 'plain'
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.train_loop.stop_training  # stopped at the target
    ckpt = tmp_path / 'prune' / 'flops_50.pth'
    assert ckpt.is_file()

    # Export with the prune config, as tools/export_pruned.py does.
    result = export_checkpoint(
        str(prune_path), str(ckpt), str(tmp_path / 'export'))
    assert result['flops'] <= 0.5 * result['flops_unpruned']
    assert result['max_abs_diff'] <= 1e-4

    # Fine-tune the pruned model, then test it with the deploy config.
    ft = load(folder / 'ifso_finetune_resnet56_1xb128_cifar10.py')
    ft = _small(ft, data, tmp_path / 'finetune', 'finetune')
    ft.model.structure = result['structure']
    ft.load_from = result['checkpoint']
    if checks is not None:
        assert checks.check_checkpoint_matches_config(
            ft, ft.load_from) == 'pruned'
    runner = Runner.from_cfg(ft)
    runner.train()
    assert (tmp_path / 'finetune' / 'epoch_1.pth').is_file()

    dep = load(folder / 'ifso_deploy_resnet56_1xb128_cifar10.py')
    dep = _small(dep, data, tmp_path / 'deploy', 'deploy')
    dep.model.structure = result['structure']
    dep.load_from = str(tmp_path / 'finetune' / 'epoch_1.pth')
    if checks is not None:  # what tools/test.py checks
        assert checks.check_checkpoint_matches_config(
            dep, dep.load_from) == 'pruned'
    metrics = Runner.from_cfg(dep).test()
    assert 'accuracy/top1' in metrics


# --------------------------------------------------------------------- #
@pytest.mark.parametrize(
    'folder', ['resnet50', 'resnet56', 'vgg16', 'mobilenet_v2'])
def test_metafile(folder):
    meta = yaml.safe_load((CLS_DIR / folder / 'metafile.yml').read_text())
    collections = {c['Name'] for c in meta['Collections']}
    assert meta['Models']
    for model in meta['Models']:
        assert model['In Collection'] in collections
        assert (ROOT / model['Config']).is_file(), model['Config']
        for key in ('Pruning Config', 'Deploy Config'):
            if key in model['Metadata']:
                assert (ROOT / model['Metadata'][key]).is_file()
        assert isinstance(model['Metadata']['FLOPs'], int)
        assert model['Metadata']['Training Data']
        assert model['Weights'] is None
        # No accuracy is claimed: nothing has been measured yet.
        for result in model['Results']:
            assert 'Metrics' not in result
        assert Path(model['Config']).stem == model['Name']


def test_readme_claims_no_results():
    text = (CONFIG_DIR / 'README.md').read_text()
    rows = [
        line for line in text.splitlines()
        if line.startswith('| ') and 'not yet measured' in line
    ]
    assert len(rows) == 5
    for line in rows:
        cells = [c.strip() for c in line.strip('|').split('|')]
        assert cells[4] == cells[5] == 'not yet measured'
    for link in re.findall(r'\]\(([\w/.-]+\.py)\)', text):
        assert (CONFIG_DIR / link).is_file(), link
