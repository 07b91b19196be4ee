"""mmifso.apis.coverage: the pieces of tools/analysis/coverage.py's check
(the whole check on real models is tested with the tool)."""
import copy

import pytest
import torch

from helpers import build_algorithm
from mmifso.apis.coverage import (ModuleTracker, analysis_summary,
                                  check_config, random_prune, randomise_norms)
from mmifso.models.task_modules import DemoInput


def test_random_prune_is_seeded_and_keeps_channels():
    masks = []
    for _ in range(2):
        algo = build_algorithm(min_channels=2)
        random_prune(algo.mutator, 0.5, seed=3)
        masks.append([u.mask.clone() for u in algo.mutator.units])
        for unit in algo.mutator.units:
            alive = int(unit.mask.sum())
            assert alive >= 2
            assert alive <= unit.num_channels - round(unit.num_channels *
                                                      0.5) + 1
    assert all(torch.equal(a, b) for a, b in zip(*masks))
    other = build_algorithm(min_channels=2)
    random_prune(other.mutator, 0.5, seed=4)
    assert not all(
        torch.equal(a, u.mask) for a, u in zip(masks[0], other.mutator.units))


def test_random_prune_round_to():
    # TINY_CLASSIFIER's units have 4, 8 and 16 channels: with round_to=4
    # the 8- and 16-channel units keep a multiple of 4 (about 0.6 of them),
    # the 4-channel ones stay whole.
    algo = build_algorithm()
    random_prune(algo.mutator, 0.4, seed=0, round_to=4)
    for unit in algo.mutator.units:
        alive = int(unit.mask.sum())
        if unit.num_channels > 4:
            assert alive % 4 == 0 and alive < unit.num_channels
        else:
            assert alive == unit.num_channels


def test_random_prune_removes_whole_blocks():
    algo = build_algorithm()
    unit = algo.mutator.units[0]
    # Tied pairs, as a GroupNorm of num_channels / 2 groups gives.
    unit.blocks = [[c, c + 1] for c in range(0, unit.num_channels, 2)]
    unit.block_ids = torch.arange(unit.num_channels) // 2
    random_prune(algo.mutator, 0.5, seed=0)
    mask = unit.mask.tolist()
    assert not all(mask)
    assert all(mask[b[0]] == mask[b[1]] for b in unit.blocks)


def test_analysis_summary_of_a_resnet():
    algo = build_algorithm()
    summary = analysis_summary(algo.mutator)
    assert summary['units'] == len(algo.mutator.units) > 0
    assert summary['prunable_channels'] == sum(
        u.num_channels for u in algo.mutator.units)
    # The share counts hidden layers only: every conv of the ResNet is in a
    # unit, the classifier's fc (a model output) is not counted; the share
    # of all layers counts its 10 output channels too.
    assert summary['output_layers'] == 1
    assert summary['prunable_share'] == 1.0
    layers = {n: r for n, r in algo.mutator.layer_records.items()
              if r.spatial}
    total = sum(r.out_channels for r in layers.values())
    assert summary['prunable_share_all'] == round(
        (total - layers['head.fc'].out_channels) / total, 3)
    assert summary['blocked_units'] == 0
    # The classifier's output is left out, with its reason.
    assert any('outputs of the model' in s['reason']
               for s in summary['skipped'])


def test_module_tracker_names_the_failing_module():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1),
                                torch.nn.Linear(5, 2))
    tracker = ModuleTracker(model)
    try:
        with tracker.track():
            model(torch.rand(1, 3, 4, 4))
    except RuntimeError:
        pass
    assert tracker.failed == '1 (Linear)'
    # A copy of the model (as the export makes) carries the hooks; its
    # modules are named by their type, and the model's error is kept.
    with pytest.raises(RuntimeError, match='mat1 and mat2'):
        with tracker.track():
            copy.deepcopy(model)(torch.rand(1, 3, 4, 4))
    assert tracker.failed == '<unnamed> (Linear)'


def test_check_config_records_the_failing_stage(tmp_path):
    record = check_config('mmpretrain::no/such_config.py', timeout=60)
    assert record['export_ok'] is False
    assert record['error'].startswith('build: FileNotFoundError')
    assert record['seconds'] is not None


def test_cspnet_stages_cut_in_halves_export_exactly():
    """CSPResNet cuts each stage's expanded channels in halves computed from
    the size: those units are prunable with tied pairs, and the randomly
    pruned model exports exactly. ShuffleNetV2's halves follow a channel
    shuffle: those units stay skipped, with the reason."""
    record = check_config('mmpretrain::cspnet/cspresnet50_8xb32_in1k.py@32',
                          timeout=240)
    assert record['export_ok'], record['error']
    assert record['prunable_share'] == 1.0
    assert record['blocked_units'] == 4  # one expand_conv per stage
    assert [s['name'] for s in record['skipped']] == ['head.fc']
    record = check_config(
        'mmpretrain::shufflenet_v2/shufflenet-v2-1x_16xb64_in1k.py@32',
        timeout=240)
    assert record['export_ok'], record['error']
    reasons = [s['reason'] for s in record['skipped'][1:]]
    assert reasons and all('channel shuffle' in r for r in reasons)


class _TrainModeRefusingHead(torch.nn.Module):
    """A conv + BN body and a head that raises in train mode, as LeViT's
    distillation head does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, input):
        if self.head.training:
            raise NotImplementedError('no training in distillation mode')
        x = self.drop(self.bn(self.conv(input))).mean((2, 3))
        return self.head(x)


def test_randomise_norms_trains_only_the_calibrated_norms():
    model = _TrainModeRefusingHead().eval()
    randomise_norms(model, DemoInput((1, 3, 8, 8)), seed=0)
    # Calibrated (statistics of two random batches, not the defaults), and
    # every module back in eval mode.
    assert int(model.bn.num_batches_tracked) == 2
    assert not torch.allclose(model.bn.running_mean, torch.zeros(4))
    assert not any(m.training for m in model.modules())
