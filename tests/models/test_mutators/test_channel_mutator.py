import pytest
import torch
from mmengine.analysis import FlopAnalyzer

from helpers import build_algorithm, random_prune
from mmifso.models.mutators import NoPrunableUnitsError, select_channels
from mmifso.models.task_modules import (DemoInputError, FrozenUnitError,
                                        count_params, count_resources,
                                        record_layers)

RESNET18 = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet', depth=18),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=512))
MOBILENET_V2 = dict(
    type='ImageClassifier',
    backbone=dict(type='MobileNetV2', widen_factor=0.5),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=1280))
VGG11 = dict(
    type='ImageClassifier',
    backbone=dict(type='VGG', depth=11, norm_cfg=dict(type='BN')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=512))


def test_units_of_cifar_resnet():
    algo = build_algorithm()
    names = [u.name for u in algo.mutator.units]
    # One trunk unit per stage (stem + residual adds) and one per block.
    assert len(names) == 3 + 3 * 1
    trunk = algo.mutator.units[[n for n in names].index('backbone.conv1')]
    consumers = {s.module for s in trunk.sites if s.role == 'in'}
    assert 'backbone.stages.0.0.conv1' in consumers
    # Image channels and logits are never units.
    assert all(s.module != 'head.fc' or s.role == 'in'
               for u in algo.mutator.units for s in u.sites)
    assert algo.mutator.resources()['flops_ratio'] == 1.0


def test_masks_are_buffers_in_state_dict():
    algo = build_algorithm()
    keys = [k for k in algo.state_dict() if k.startswith('mutator.')]
    assert keys == [f'mutator.units.{i}.mask'
                    for i in range(len(algo.mutator.units))]


@pytest.mark.parametrize('arch,shape', [(RESNET18, 64), (MOBILENET_V2, 64),
                                        (VGG11, 32)])
def test_masked_equals_exported(arch, shape):
    algo = build_algorithm(arch, input_shape=(1, 3, shape, shape))
    random_prune(algo.mutator)
    algo.eval()
    x = torch.rand(2, 3, shape, shape)
    with torch.no_grad():
        masked = algo(x, mode='tensor')
    pruned, structure = algo.export()
    pruned.eval()
    with torch.no_grad():
        exported = pruned(x, mode='tensor')
    assert (masked - exported).abs().max() <= 1e-4
    # Really smaller, and FLOPs/params agree with the masked count.
    res = algo.mutator.resources()
    assert res['flops_ratio'] < 0.95
    counted = count_resources(
        record_layers(pruned, lambda m: m(x[:1], mode='tensor')))
    assert counted['flops'] == res['flops']
    assert count_params(pruned) == res['params']
    # Cross-check with mmengine's own FLOP counter (conv + linear MACs).
    by_op = FlopAnalyzer(pruned, (x[:1], )).by_operator()
    assert by_op['conv'] + by_op.get('linear', 0) == res['flops']


def test_mutator_choices_roundtrip():
    algo = build_algorithm()
    random_prune(algo.mutator)
    choices = algo.mutator.get_choices()
    other = build_algorithm()
    other.mutator.set_choices(choices)
    assert other.mutator.get_choices() == choices
    with pytest.raises(KeyError, match='unknown units'):
        other.mutator.set_choices({'nope': [0]})


def test_min_channels_respected_by_selection():
    algo = build_algorithm(min_channels=2)
    scores = [torch.zeros(u.num_channels) for u in algo.mutator.units]
    removed = select_channels(algo.mutator, scores, 10**6, cost_power=0)
    assert removed
    assert all(u.num_alive == 2 for u in algo.mutator.units)


def test_selection_is_global_and_stops_at_target():
    algo = build_algorithm()
    units = algo.mutator.units
    # Unit 0 is the least important everywhere: pruned first.
    scores = [torch.full((u.num_channels, ), 10.0 + i)
              for i, u in enumerate(units)]
    scores[0][:] = torch.arange(units[0].num_channels) * 0.01
    removed = select_channels(algo.mutator, scores, 2, cost_power=0)
    assert removed == [(0, 0), (0, 1)]
    select_channels(algo.mutator, scores, 10**6, target_flops=0.6)
    ratio = algo.mutator.resources()['flops_ratio']
    assert ratio <= 0.6
    with pytest.raises(FloatingPointError):
        bad = [s.clone() for s in scores]
        bad[1][0] = float('nan')
        select_channels(algo.mutator, bad, 1)


def test_bad_demo_input_is_explained():
    with pytest.raises(DemoInputError, match='input_shape'):
        build_algorithm(input_shape=(1, 1, 32, 32))


def test_frozen_stage_is_an_error_or_skipped():
    arch = dict(RESNET18, backbone=dict(type='ResNet', depth=18,
                                        frozen_stages=1))
    with pytest.raises(FrozenUnitError, match='frozen_stages'):
        build_algorithm(arch, input_shape=(1, 3, 64, 64))
    algo = build_algorithm(arch, input_shape=(1, 3, 64, 64), frozen='skip')
    skipped = algo.mutator.analysis.skipped
    assert any('frozen' in s.reason for s in skipped)
    assert all('layer1' not in s.module for u in algo.mutator.units
               for s in u.sites)


def test_no_prunable_units():
    arch = dict(
        type='ImageClassifier',
        backbone=dict(type='mmifso.CifarResNet', depth=8, base_channels=1),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=4))
    with pytest.raises(NoPrunableUnitsError, match='has no prunable channel '
                       'units .*why they were skipped'):
        build_algorithm(arch, min_channels=4)


def test_min_channels_below_one():
    with pytest.raises(ValueError, match='min_channels must be >= 1, got 0'):
        build_algorithm(input_shape=(1, 3, 16, 16), min_channels=0)


def test_choices_below_min_channels_or_out_of_range():
    algo = build_algorithm(input_shape=(1, 3, 16, 16), min_channels=2)
    unit = algo.mutator.units[0]
    with pytest.raises(ValueError, match=f'unit {unit.name}: 1 channels kept, '
                       'fewer than min_channels=2'):
        algo.mutator.set_choices({unit.name: [0]})
    with pytest.raises(ValueError, match='channel index out of range'):
        algo.mutator.set_choices({unit.name: [0, unit.num_channels]})
    with pytest.raises(KeyError, match='unknown units'):
        algo.mutator.set_choices({'nope': [0]})
    assert unit.num_alive == unit.num_channels  # nothing changed


def test_building_leaves_bn_statistics_untouched():
    from helpers import TINY_CLASSIFIER
    from mmifso.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    arch = MODELS.build(TINY_CLASSIFIER)
    arch.train()
    before = {k: v.clone() for k, v in arch.state_dict().items()}
    algo = build_algorithm(arch)
    assert algo.architecture.training
    for k, v in arch.state_dict().items():
        assert torch.equal(v, before[k]), k
