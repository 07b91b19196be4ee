"""Export of a masked checkpoint from a real pruning run."""
import copy
import hashlib
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from helpers import OTHER_ARCH_MSG, TINY_CLASSIFIER, digits_loader, runner_cfg
from mmifso.apis.checks import checkpoint_kind
from mmifso.apis.export import ExportError, export_checkpoint
from mmifso.structures import StructureMismatchError, load_structure


@pytest.fixture(scope='module')
def pruned_run(tmp_path_factory):
    work = tmp_path_factory.mktemp('prune')
    cfg = runner_cfg(work, target=0.6)
    cfg.val_dataloader = digits_loader('test', 64)
    cfg.val_evaluator = dict(type='Accuracy', topk=(1, ))
    cfg.test_dataloader = cfg.val_dataloader
    cfg.test_evaluator = cfg.val_evaluator
    cfg.val_cfg = dict()
    cfg.test_cfg = dict()
    runner = Runner.from_cfg(cfg)
    runner.train()
    masked_metrics = runner.test()
    return cfg, str(work / 'flops_60.pth'), masked_metrics


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_export_and_evaluate_from_deploy_config(pruned_run, tmp_path):
    cfg, ckpt, masked_metrics = pruned_run
    digest = sha(ckpt)
    out = export_checkpoint(cfg, ckpt, str(tmp_path / 'export'))
    assert sha(ckpt) == digest  # the source checkpoint is never modified
    for key in ('checkpoint', 'structure', 'config'):
        assert osp.isfile(out[key])
    assert out['max_abs_diff'] <= 1e-4
    assert out['flops'] / out['flops_unpruned'] <= 0.6
    assert out['params'] < out['params_unpruned']
    # The deploy config rebuilds the smaller model and tools/test.py-style
    # evaluation gives the masked model's accuracy.
    deploy = Config.fromfile(out['config'])
    assert deploy.model.type == 'mmifso.PrunedModel'
    assert not any('PruningHook' in h['type'] for h in deploy.custom_hooks)
    deploy.work_dir = str(tmp_path / 'deploy')
    runner = Runner.from_cfg(deploy)
    metrics = runner.test()
    assert metrics['accuracy/top1'] == pytest.approx(
        masked_metrics['accuracy/top1'], abs=1e-6)
    n_params = sum(p.numel() for p in runner.model.parameters())
    assert n_params == out['params']
    ckpt_data = torch.load(out['checkpoint'], map_location='cpu')
    assert ckpt_data['meta']['mmifso']['kind'] == 'pruned'


def test_export_rejects_plain_checkpoint(pruned_run, tmp_path):
    cfg, ckpt, _ = pruned_run
    state = torch.load(ckpt, map_location='cpu')['state_dict']
    plain = {k[len('architecture.'):]: v
             for k, v in state.items() if k.startswith('architecture.')}
    path = str(tmp_path / 'plain.pth')
    torch.save(dict(state_dict=plain), path)
    with pytest.raises(ExportError, match='no channel masks'):
        export_checkpoint(cfg, path, str(tmp_path / 'out'))
    plain_cfg = cfg.copy()
    plain_cfg.model = TINY_CLASSIFIER
    with pytest.raises(ExportError, match='PruningAlgorithm'):
        export_checkpoint(plain_cfg, ckpt, str(tmp_path / 'out'))


def test_structure_of_another_architecture(pruned_run, tmp_path):
    cfg, ckpt, _ = pruned_run
    out = export_checkpoint(cfg, ckpt, str(tmp_path / 'export'))
    from mmifso.models.algorithms import PrunedModel
    other = dict(TINY_CLASSIFIER,
                 backbone=dict(type='mmifso.CifarResNet', depth=8,
                               base_channels=6),
                 head=dict(TINY_CLASSIFIER['head'], in_channels=24))
    with pytest.raises(StructureMismatchError, match='another architecture'):
        PrunedModel(other, out['structure'])
    bad = tmp_path / 'bad.json'
    bad.write_text(open(out['structure']).read()[:50])
    with pytest.raises(StructureMismatchError, match='truncated'):
        load_structure(str(bad))


def test_plain_checkpoint_loads_into_pruning_model(pruned_run, tmp_path):
    from helpers import build_algorithm
    cfg, ckpt, _ = pruned_run
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    plain = {k: v.clone() for k, v in algo.architecture.state_dict().items()}
    fresh = build_algorithm(input_shape=(1, 3, 16, 16))
    missing, unexpected = fresh.load_state_dict(plain, strict=True)
    assert not missing and not unexpected
    for k, v in plain.items():
        assert torch.equal(fresh.architecture.state_dict()[k], v)
    assert all(u.num_alive == u.num_channels for u in fresh.mutator.units)


# --------------------------------------------------------------------------- #
# Bad input (the ckpts and other_arch_ckpt fixtures are in tests/conftest.py)
# --------------------------------------------------------------------------- #
def test_checkpoint_of_another_architecture_into_export(
        tmp_path, other_arch_ckpt):
    with pytest.raises(ExportError, match=OTHER_ARCH_MSG):
        export_checkpoint(runner_cfg(tmp_path), other_arch_ckpt,
                          str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


def test_export_needs_a_masked_checkpoint_and_a_pruning_config(
        tmp_path, ckpts):
    cfg = runner_cfg(tmp_path)
    with pytest.raises(ExportError, match='holds no channel masks: it is not '
                       'a checkpoint of a pruning run.*Export the '
                       'flops_XX.pth'):
        export_checkpoint(cfg, ckpts['plain'], str(tmp_path / 'out'))
    plain_cfg = copy.deepcopy(cfg)
    plain_cfg.model = copy.deepcopy(TINY_CLASSIFIER)
    with pytest.raises(ExportError, match='export needs the pruning config '
                       r'\(model.type="mmifso.PruningAlgorithm"\)'):
        export_checkpoint(plain_cfg, ckpts['masked'], str(tmp_path / 'out'))
    assert checkpoint_kind(ckpts['masked']) == 'masked'


def test_exported_classifier_through_mmpretrain_apis(pruned_run, tmp_path):
    """mmpretrain's own get_model / ImageClassificationInferencer use the
    deploy config
    and pruned.pth as any upstream model: the pruned weights, the class
    names of the checkpoint; a checkpoint of other shapes fails loudly."""
    from mmengine.runner import load_checkpoint
    from mmpretrain.apis import ImageClassificationInferencer, get_model
    cfg, ckpt, _ = pruned_run
    out = export_checkpoint(cfg, ckpt, str(tmp_path / 'export'))
    saved = torch.load(out['checkpoint'], map_location='cpu')
    assert saved['meta']['dataset_meta']['classes'] == tuple(
        str(i) for i in range(10))
    model = get_model(out['config'], pretrained=out['checkpoint'])
    assert sum(p.numel() for p in model.parameters()) == out['params']
    for k, v in saved['state_dict'].items():
        assert torch.equal(model.state_dict()[k], v), k
    image = np.random.RandomState(0).randint(0, 255, (16, 16, 3), np.uint8)
    # (inference_model needs a model of mmpretrain's model zoo.)
    [result] = ImageClassificationInferencer(model)(image)
    assert result['pred_class'] == str(result['pred_label'])

    # The masked checkpoint's unpruned weights: refused by mmpretrain's
    # loader and by mmengine's non-strict load_checkpoint (which would skip
    # every mismatched tensor with a warning).
    state = torch.load(ckpt, map_location='cpu')['state_dict']
    plain = tmp_path / 'plain.pth'
    torch.save({'state_dict': {
        k[len('architecture.'):]: v
        for k, v in state.items() if k.startswith('architecture.')
    }}, str(plain))
    with pytest.raises(RuntimeError, match='does not fit this pruned model'):
        get_model(out['config'], pretrained=str(plain))
    with pytest.raises(RuntimeError, match='does not fit this pruned model'):
        load_checkpoint(model, str(plain), strict=False)
    # Nothing was loaded: the pruned weights are intact.
    for k, v in saved['state_dict'].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_deploy_config_is_minimal(pruned_run, tmp_path):
    cfg, ckpt, _ = pruned_run
    cfg = copy.deepcopy(cfg)
    cfg.target_flops = 0.6  # a pruning-time variable
    cfg.param_scheduler = []  # pruning at a constant lr
    out = export_checkpoint(cfg, ckpt, str(tmp_path / 'export'))
    deploy = Config.fromfile(out['config'])
    assert 'target_flops' not in deploy and 'architecture' not in deploy
    # The flat form: the upstream fields where the upstream tools read them.
    assert deploy.model.architecture_type == cfg.model.architecture.type
    assert deploy.model.backbone == cfg.model.architecture.backbone
    # Fine-tuning decays the lr the pruning run kept constant.
    [sched] = deploy.param_scheduler
    assert sched.type == 'CosineAnnealingLR'
    assert sched.end == cfg.train_cfg.max_iters and not sched.by_epoch
    text = open(out['config']).read()
    [left_out] = [line for line in text.splitlines() if 'left out:' in line]
    assert 'target_flops' in left_out
