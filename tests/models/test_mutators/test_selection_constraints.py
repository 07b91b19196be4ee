"""Hardware-friendly widths: ``round_to`` and ``max_prune_ratio`` of the
ChannelSelector, on plain units, GroupNorm block units and through the API
and the hooks' ``selection`` dict."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor, BaseModel

from helpers import (TINY_CLASSIFIER, build_algorithm, digits_batch,
                     warnings_logged)
from mmifso.apis import prune_to_target
from mmifso.models.mutators import ChannelMutator, ChannelSelector
from mmifso.models.mutators.selection import unit_floor

# Units of 8, 16 and 32 channels (CIFAR ResNet-8 with base width 8).
WIDE = copy.deepcopy(TINY_CLASSIFIER)
WIDE['backbone']['base_channels'] = 8
WIDE['head']['in_channels'] = 32


def _random_scores(mutator, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(u.num_channels, generator=g) for u in mutator.units]


@pytest.mark.parametrize('round_to', [4, 8])
def test_round_to_keeps_multiples(round_to):
    algo = build_algorithm(WIDE)
    mutator = algo.mutator
    sel = ChannelSelector(cost='flops', round_to=round_to)
    sel.select(mutator, _random_scores(mutator), target_flops=0.6)
    assert mutator.resources()['flops_ratio'] <= 0.6
    widths = [u.num_alive for u in mutator.units]
    assert all(n % round_to == 0 and n >= round_to for n in widths), widths
    assert any(n < u.num_channels for n, u in zip(widths, mutator.units))


def test_round_to_takes_least_important_chunks():
    """A unit of 9 channels with round_to=4 first loses its single least
    important channel (9 -> 8), then chunks of the next 4."""
    algo = build_algorithm(WIDE)
    mutator = algo.mutator
    units = mutator.units
    scores = [torch.full((u.num_channels, ), 100.0) for u in units]
    u0 = units[0]
    u0.prune(list(range(u0.num_channels - 9)))  # 9 alive
    alive = u0.current_choice
    scores[0][alive] = torch.arange(len(alive), dtype=torch.float) * 0.1
    removed = ChannelSelector(cost='none', round_to=4).select(
        mutator, scores, num_channels=1)
    assert removed == [(0, alive[0])]
    removed = ChannelSelector(cost='none', round_to=4).select(
        mutator, scores, num_channels=1)
    assert removed == [(0, c) for c in alive[1:5]]  # one whole chunk
    assert u0.num_alive == 4


def test_max_prune_ratio_floors_every_unit():
    algo = build_algorithm(WIDE)
    mutator = algo.mutator
    zeros = [torch.zeros(u.num_channels) for u in mutator.units]
    ChannelSelector(cost='none', max_prune_ratio=0.7).select(mutator, zeros)
    for u in mutator.units:  # 0.3 of 8, 16, 32 rounded up
        assert u.num_alive == -(-3 * u.num_channels // 10), u
    # With round_to the floor is rounded up to a multiple as well.
    algo = build_algorithm(WIDE)
    ChannelSelector(cost='none', max_prune_ratio=0.7, round_to=4).select(
        algo.mutator, zeros)
    for u in algo.mutator.units:
        assert u.num_alive == unit_floor(u, 4, 0.7)
        assert u.num_alive % 4 == 0 and u.num_alive >= 0.3 * u.num_channels


def test_small_units_are_kept_whole_and_logged():
    algo = build_algorithm()  # units of 4, 8 and 16 channels
    mutator = algo.mutator
    sel = ChannelSelector(cost='none', round_to=8)
    zeros = [torch.zeros(u.num_channels) for u in mutator.units]
    with warnings_logged() as out:
        sel.select(mutator, zeros)
        sel.select(mutator, zeros)  # logged once
    out = '\n'.join(out)
    small = [u for u in mutator.units if u.num_channels < 8]
    assert small and all(u.num_alive == u.num_channels for u in small)
    assert all(u.num_alive == 8 for u in mutator.units if u.num_channels >= 8)
    assert small[0].name in out and out.count('kept whole') == 1


class GNNet(BaseModel):
    """conv(3->16) -> GN(4 groups of 4) -> relu -> conv(16->12) -> GAP -> fc;
    the first unit has blocks of 4 channels."""

    def __init__(self):
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 12, 3, padding=1)
        self.fc = nn.Linear(12, 3)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = self.conv2(torch.relu(self.gn(self.conv1(inputs))))
        return self.fc(torch.relu(x).mean((2, 3)))


def test_round_to_with_groupnorm_blocks():
    torch.manual_seed(0)
    model = GNNet()
    mutator = ChannelMutator(
        demo_input=dict(type='mmifso.DemoInput', input_shape=(1, 3, 8, 8)))
    mutator.prepare_from_supernet(model)
    gn_unit = [u for u in mutator.units if u.blocks is not None]
    assert len(gn_unit) == 1 and gn_unit[0].block_size == 4
    g = torch.Generator().manual_seed(1)
    scores = [torch.rand(u.num_channels, generator=g) for u in mutator.units]
    removed = ChannelSelector(cost='none', round_to=8).select(
        mutator, scores, num_channels=1)
    unit = gn_unit[0]
    i = list(mutator.units).index(unit)
    if removed[0][0] == i:  # lcm(8, 4): two whole groups at once
        assert len(removed) == 8
    ChannelSelector(cost='none', round_to=8).select(mutator, scores)
    assert unit.num_alive == 8
    dead = set((~unit.alive).nonzero().flatten().tolist())
    assert all(set(b) <= dead or not set(b) & dead for b in unit.blocks)
    other = [u for u in mutator.units if u is not unit]
    assert all(u.num_alive == 8 for u in other)  # 12 -> 8


@pytest.mark.parametrize('criterion', [
    'mmifso.MagnitudeImportance', 'mmifso.TaylorImportance'])
def test_every_criterion_through_the_api(criterion):
    torch.manual_seed(0)
    algo = build_algorithm(WIDE)
    res = prune_to_target(
        algo.architecture, algo.mutator, criterion, [digits_batch(8)],
        target_flops=0.6, step_fraction=0.1, cost='flops',
        selection=dict(round_to=4, max_prune_ratio=0.6))
    assert res['flops_ratio'] <= 0.6
    for u in algo.mutator.units:
        assert u.num_alive % 4 == 0 and u.num_alive >= 0.4 * u.num_channels


def test_hooks_pass_selection_to_the_selector():
    from mmifso.engine.hooks import OneShotPruningHook, PruningHook
    for hook_type in (PruningHook, OneShotPruningHook):
        hook = hook_type(
            importance=dict(type='mmifso.MagnitudeImportance'),
            selection=dict(round_to=8, max_prune_ratio=0.7))
        assert hook.selector.round_to == 8
        assert hook.selector.max_prune_ratio == 0.7


@pytest.mark.parametrize('kwargs, match', [
    (dict(round_to=0), 'round_to must be an integer >= 1'),
    (dict(round_to=2.5), 'round_to must be an integer >= 1'),
    (dict(round_to=True), 'round_to must be an integer >= 1'),
    (dict(max_prune_ratio=0), r'max_prune_ratio must be in \(0, 1\)'),
    (dict(max_prune_ratio=1.0), r'max_prune_ratio must be in \(0, 1\)'),
    (dict(max_prune_ratio=-0.5), r'max_prune_ratio must be in \(0, 1\)'),
    (dict(max_prune_ratio='0.5'), r'max_prune_ratio must be in \(0, 1\)'),
])
def test_bad_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChannelSelector(**kwargs)


def test_round_to_larger_than_every_unit():
    algo = build_algorithm()
    sel = ChannelSelector(round_to=64)
    zeros = [torch.zeros(u.num_channels) for u in algo.mutator.units]
    with pytest.raises(ValueError, match='larger than every unit.*lower '
                       'round_to'):
        sel.select(algo.mutator, zeros)
    assert all(u.num_alive == u.num_channels for u in algo.mutator.units)
