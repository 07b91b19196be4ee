"""The detection configs (configs/ifso/detection/<detector>/,
configs/demo_det/) load, carry the pruning settings, and build their models
(no weights) with units.

Models are built at a small demo-input size to keep this fast; the configs'
own sizes are checked as values.
"""
import copy
import re
from pathlib import Path

import pytest
import torch
import yaml
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmifso.utils import pruned_architecture_cfg

ROOT = Path(__file__).resolve().parents[3]
IFSO = ROOT / 'configs' / 'ifso' / 'detection'
DETECTORS = ('retinanet', 'fcos', 'atss', 'gfl', 'faster_rcnn', 'yolox',
             'rtmdet', 'ssdlite')
PRUNE = sorted(p for d in DETECTORS
               for p in (IFSO / d).glob('ifso_prune_*.py'))
RETINANET = IFSO / 'retinanet'
DEMO_DET = ROOT / 'configs' / 'demo_det'
SHAPES = {
    'yolox': (1, 3, 416, 416),
    'rtmdet': (1, 3, 640, 640),
    'ssdlite': (1, 3, 320, 320),
}
SMALL = (1, 3, 64, 64)


def build(cfg: Config, shape=SMALL):
    init_default_scope(cfg.default_scope)
    import mmifso  # noqa: F401
    from mmifso.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    if 'mutator' in model_cfg:
        model_cfg.mutator.demo_input.input_shape = shape
    return MODELS.build(model_cfg)


def test_every_detector_has_a_prune_config():
    assert [p.parent.name for p in PRUNE] == sorted(DETECTORS)
    for folder in DETECTORS:
        (upstream, ) = [p for p in PRUNE if p.parent.name == folder]
        # OpenMMLab naming: ifso_prune_<upstream config name>.py
        base = re.search(r"_base_ = \[\s*'mmdet::([^']+)'",
                         upstream.read_text()).group(1)
        assert upstream.name == 'ifso_prune_' + base.split('/')[-1]


@pytest.mark.parametrize('path', PRUNE, ids=lambda p: p.parent.name)
def test_prune_config_builds_with_units(path):
    cfg = Config.fromfile(str(path))
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports.imports[0] == 'mmifso'
    assert cfg.custom_imports.allow_failed_imports is False
    assert cfg.model.type == 'mmifso.PruningAlgorithm'
    assert cfg.load_from == cfg.pretrained_ckpt
    assert cfg.load_from.startswith('https://download.openmmlab.com/')
    mutator = cfg.model.mutator
    assert mutator.type == 'mmifso.ChannelMutator'
    assert mutator.demo_input.type == 'mmifso.DetDemoInput'
    assert tuple(mutator.demo_input.input_shape) == SHAPES.get(
        path.parent.name, (1, 3, 800, 1333))
    (hook, ) = [h for h in cfg.custom_hooks if h.type == 'mmifso.PruningHook']
    assert hook.importance == dict(type='mmifso.IFSOImportance')
    assert (hook.target_flops, hook.interval, hook.channels_per_step,
            hook.score_batches) == (0.5, 10, 1, 2)
    algo = build(cfg)
    assert len(algo.mutator.units) > 5
    assert algo.mutator.resources()['flops_ratio'] == 1.0
    # Backbone, neck and head are all prunable.
    names = [u.name for u in algo.mutator.units]
    for part in ('backbone.', 'neck.', 'head.'):
        assert any(part in n for n in names), part
    # Prediction layers are never pruned.
    for unit in algo.mutator.units:
        for site in unit.sites:
            if site.role == 'out':
                assert not re.search(r'(_cls|_reg|_obj|centerness)(\.\d+)?$',
                                     site.module), site.module


def test_retinanet_finetune_and_deploy_configs(tmp_path):
    prune = Config.fromfile(
        str(RETINANET / 'ifso_prune_retinanet_r50_fpn_1x_coco.py'))
    algo = build(prune)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in algo.architecture.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.uniform_(-0.3, 0.3, generator=g)
    for unit in algo.mutator.units:
        n = int(unit.num_channels * 0.3)
        unit.prune(torch.randperm(unit.num_channels, generator=g)[:n].tolist())
    algo.eval()
    pruned, structure = algo.export()
    from mmifso.structures import save_structure
    save_structure(structure, str(tmp_path / 'structure.json'))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = algo(x, mode='tensor')
    for name in ('ifso_finetune_retinanet_r50_fpn_1x_coco.py',
                 'ifso_deploy_retinanet_r50_fpn_1x_coco.py'):
        cfg = Config.fromfile(str(RETINANET / name))
        assert cfg.model.type == 'mmifso.PrunedModel'
        assert cfg.model.structure.endswith('/export/structure.json')
        if 'finetune' in name:
            # (The deploy config keeps upstream's frozen stages:
            # tests/test_detection_config_sets.py.)
            assert pruned_architecture_cfg(cfg.model) == \
                prune.model.architecture
            assert cfg.load_from.endswith('/export/pruned.pth')
    # Same architecture: building the deploy config checks both.
    cfg.model.structure = str(tmp_path / 'structure.json')
    model = build(cfg)
    model.load_state_dict(pruned.state_dict(), strict=True)
    model.eval()
    with torch.no_grad():
        actual = model(x, mode='tensor')
    for a, b in zip(expected, actual):
        for ta, tb in zip(a, b):
            assert (ta - tb).abs().max() <= 1e-4


def test_retinanet_metafile():
    meta = yaml.safe_load((RETINANET / 'metafile.yml').read_text())
    assert meta['Models']
    for model in meta['Models']:
        assert (ROOT / model['Config']).is_file(), model['Config']
        for key in ('Pruning Config', 'Deploy Config'):
            assert (ROOT / model['Metadata'][key]).is_file()
        assert isinstance(model['Metadata']['FLOPs'], int)
        assert model['Weights'] is None
        for result in model['Results']:
            assert 'Metrics' not in result  # nothing measured on COCO yet


def test_demo_det_configs_build():
    base = Config.fromfile(
        str(DEMO_DET / 'retinanet_r18-w32_fpn_1xb16-48e_shapes.py'))
    assert base.model.bbox_head.num_classes == len(base.classes) == 5
    init_default_scope('mmdet')
    from mmifso.registry import MODELS
    detector = MODELS.build(copy.deepcopy(base.model))
    assert type(detector).__name__ == 'RetinaNet'
    prune = Config.fromfile(
        str(DEMO_DET / 'ifso_retinanet_r18-w32_prune_shapes.py'))
    algo = build(prune, (1, 3, base.image_size, base.image_size))
    assert len(algo.mutator.units) > 10
    hook = prune.custom_hooks[0]
    assert hook.type == 'mmifso.PruningHook'
    assert hook.importance.type == 'mmifso.IFSOImportance'
    ft = Config.fromfile(
        str(DEMO_DET / 'ifso_retinanet_r18-w32_finetune_shapes.py'))
    assert ft.model.type == 'mmifso.PrunedModel'
    assert pruned_architecture_cfg(ft.model) == prune.model.architecture
