"""Real mmdet detectors (tiny widths): coupled FPN/head channels, heads shared
across levels, GroupNorm heads, two-stage detectors with DetDemoInput, frozen
stages; masked == exported and the deploy path rebuilds the pruned model."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.utils import get_installed_path

from helpers import randomise_norms
from mmifso.models.task_modules import (DemoInputError, DetDemoInput,
                                        FrozenUnitError, count_resources,
                                        record_layers)

SIZE = 64


def upstream(rel: str) -> Config:
    return Config.fromfile(
        osp.join(get_installed_path('mmdet'), '.mim', 'configs', rel))


def small_backbone(norm_requires_grad=True, frozen_stages=-1):
    return dict(
        type='ResNet',
        depth=18,
        base_channels=8,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=frozen_stages,
        norm_cfg=dict(type='BN', requires_grad=norm_requires_grad),
        norm_eval=False,
        style='pytorch',
        init_cfg=None)


def retinanet_gn(**backbone):
    cfg = upstream('retinanet/retinanet_r50_fpn_1x_coco.py').model
    cfg.backbone = small_backbone(**backbone)
    cfg.neck.update(in_channels=[8, 16, 32, 64], out_channels=16)
    cfg.bbox_head.update(
        num_classes=3,
        in_channels=16,
        feat_channels=16,
        stacked_convs=2,
        norm_cfg=dict(type='GN', num_groups=4, requires_grad=True))
    return cfg


def faster_rcnn():
    cfg = upstream('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py').model
    cfg.backbone = small_backbone()
    cfg.neck.update(in_channels=[8, 16, 32, 64], out_channels=16)
    cfg.rpn_head.update(in_channels=16, feat_channels=16)
    cfg.roi_head.bbox_roi_extractor.out_channels = 16
    cfg.roi_head.bbox_head.update(
        in_channels=16, fc_out_channels=32, num_classes=3)
    return cfg


def build(arch, demo, **mutator):
    init_default_scope('mmdet')
    import mmifso  # noqa: F401
    from mmifso.registry import MODELS
    return MODELS.build(
        dict(
            type='mmifso.PruningAlgorithm',
            architecture=copy.deepcopy(arch),
            mutator=dict(
                type='mmifso.ChannelMutator', demo_input=demo, **mutator)))


def prune_blocks(mutator, fraction=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for unit in mutator.units:
        blocks = unit.blocks or [[c] for c in range(unit.num_channels)]
        n = max(1, int(len(blocks) * fraction))
        if n >= len(blocks):
            continue
        order = torch.randperm(len(blocks), generator=g)[:n].tolist()
        unit.prune([c for k in order for c in blocks[k]])


def flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for v in x for t in flat(v)]


def check_export(algo, demo):
    """Masked == exported on the demo input and FLOPs agree."""
    algo.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        masked = flat(demo(algo.architecture))
    pruned, structure = algo.export()
    pruned.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        exported = flat(demo(pruned))
    assert [t.shape for t in masked] == [t.shape for t in exported]
    assert max((a - b).abs().max() for a, b in zip(masked, exported)) <= 1e-4
    counted = count_resources(record_layers(pruned, demo))['flops']
    assert counted == algo.mutator.resources()['flops'] < \
        count_resources(algo.mutator.layer_records)['flops']
    return pruned, structure


@pytest.fixture(scope='module')
def retina():
    torch.manual_seed(0)
    arch = retinanet_gn()
    algo = build(arch, dict(type='mmifso.DemoInput',
                            input_shape=(1, 3, SIZE, SIZE)))
    return arch, algo


def test_retinanet_units(retina):
    _, algo = retina
    units = {u.name: u for u in algo.mutator.units}
    # The lateral convs are tied by the top-down adds, the FPN outputs by the
    # head shared across the five levels.
    lateral = units['neck.lateral_convs.0.conv']
    assert {s.module for s in lateral.sites if s.role == 'out'} == {
        f'neck.lateral_convs.{i}.conv' for i in range(3)}
    fpn = units['neck.fpn_convs.0.conv']
    consumers = {s.module for s in fpn.sites if s.role == 'in'}
    assert {'bbox_head.cls_convs.0.conv', 'bbox_head.reg_convs.0.conv'} <= \
        consumers
    # GN head convs: whole GN groups (4 channels) go together.
    head = units['bbox_head.cls_convs.0.conv']
    assert head.block_size == 4
    skipped = {s.name: s.reason for s in algo.mutator.analysis.skipped}
    assert 'bbox_head.retina_cls' in skipped
    assert 'bbox_head.retina_reg' in skipped
    # A head conv runs on every level: FLOPs sum the calls.
    rec = algo.mutator.layer_records['bbox_head.cls_convs.0.conv']
    levels = [8, 4, 2, 1, 1]  # strides 8..128 on a 64x64 image
    assert rec.spatial == sum(s * s for s in levels)
    assert algo.mutator.analysis.call_counts[
        'bbox_head.cls_convs.0.conv'] == 5


def test_retinanet_masked_equals_exported(retina):
    arch, algo = retina
    randomise_norms(algo.architecture)
    prune_blocks(algo.mutator)
    demo = algo.mutator.demo_input
    pruned, structure = check_export(algo, demo)
    gn = pruned.bbox_head.cls_convs[0].gn
    assert gn.num_channels < 16 and gn.num_channels // gn.num_groups == 4
    # The deploy path: a fresh build + the structure gives the same shapes.
    from mmifso.registry import MODELS
    rebuilt = MODELS.build(
        dict(type='mmifso.PrunedModel', architecture=arch,
             structure=structure))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in pruned.state_dict().items()}


def test_two_stage_detector_with_det_demo_input():
    torch.manual_seed(0)
    arch = faster_rcnn()
    demo_cfg = dict(type='mmifso.DetDemoInput', input_shape=(1, 3, SIZE, SIZE),
                    num_proposals=10)
    algo = build(arch, demo_cfg)
    skipped = {s.name: s.reason for s in algo.mutator.analysis.skipped}
    # Predictions of the RPN and of the RoI head are never pruned.
    for name in ('rpn_head.rpn_cls', 'rpn_head.rpn_reg',
                 'roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg'):
        assert 'outputs of the model' in skipped[name], name
    units = {u.name for u in algo.mutator.units}
    assert 'roi_head.bbox_head.shared_fcs.0' in units
    # The FPN outputs feed the RPN conv and the RoI head's first fc (7x7
    # features per channel).
    fpn = [u for u in algo.mutator.units if u.name == 'neck.fpn_convs.0.conv']
    fc_site = [s for s in fpn[0].sites
               if s.module == 'roi_head.bbox_head.shared_fcs.0']
    assert len(fc_site[0].idxs) == 16 * 49
    # RoI-head FLOPs count every RoI of the image.
    rec = algo.mutator.layer_records['roi_head.bbox_head.shared_fcs.0']
    assert rec.spatial == 10
    randomise_norms(algo.architecture)
    prune_blocks(algo.mutator)
    demo = algo.mutator.demo_input
    pruned, structure = check_export(algo, demo)
    assert structure['demo_input'] == dict(
        type='mmifso.DetDemoInput', input_shape=(1, 3, SIZE, SIZE),
        num_proposals=10)
    # The RoI extractor allocates its output with out_channels: updated.
    alive = algo.mutator.units[[u.name for u in algo.mutator.units].index(
        'neck.fpn_convs.0.conv')].num_alive
    assert pruned.roi_head.bbox_roi_extractor.out_channels == alive
    # The pruned detector still predicts through mmdet's own post-processing.
    samples = demo.data_samples()
    for s in samples:
        del s.proposals
    with torch.no_grad():
        results = pruned(torch.rand(1, 3, SIZE, SIZE), samples,
                         mode='predict')
    assert len(results) == 1 and 'bboxes' in results[0].pred_instances


def test_frozen_stages_skip_or_error():
    arch = retinanet_gn(frozen_stages=1)
    demo = dict(type='mmifso.DemoInput', input_shape=(1, 3, SIZE, SIZE))
    with pytest.raises(FrozenUnitError, match='frozen'):
        build(arch, demo)
    algo = build(arch, demo, frozen='skip')
    skipped = {s.name: s.reason for s in algo.mutator.analysis.skipped}
    assert 'frozen' in skipped['backbone.conv1']
    assert all(not u.name.startswith('backbone.layer1.')
               for u in algo.mutator.units)


def test_det_demo_input_checks():
    with pytest.raises(DemoInputError):
        DetDemoInput((1, 3, 64, 64), num_proposals=0)
    demo = DetDemoInput((2, 3, 64, 96), num_proposals=7)
    samples = demo.data_samples()
    assert len(samples) == 2
    assert samples[0].metainfo['img_shape'] == (64, 96)
    boxes = samples[1].proposals.bboxes
    assert boxes.shape == (7, 4)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] >
                                                   boxes[:, 1]).all()
    assert boxes[:, 2].max() <= 96 and boxes[:, 3].max() <= 64
