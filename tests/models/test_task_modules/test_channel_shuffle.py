"""Channel shuffles (``x.view(B, g, C // g, H, W).transpose(1, 2)
.view(B, C, H, W)``, ShuffleNet): the index mapping through the shuffle is
its permutation, and channel ``b`` of every one of the ``g`` pieces is tied
(the pieces' producers join one unit), so the masked model equals the
exported one. A shuffle whose last view has a fixed size stays skipped,
with its reason. Along a stage, cuts into halves are balanced by counts; a
stage too deep for its width (4 units of 2 x 6) has no exact cut at all,
and one that the greedy balancing merges into one block (4 units of 2 x 13)
is split by the exact search.
"""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor, BaseModel

from helpers import (assert_masked_equals_exported, prepared_mutator,
                     randomise_norms)
from mmifso.models.task_modules import (ChannelAnalyzer, DemoInput,
                                        channel_ties)


def shuffle(x: torch.Tensor, groups: int, fixed: bool = False):
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, 8 if fixed else c, h, w)


class ShuffleStage(BaseModel):
    """Two ShuffleNetV2 units: ``a`` and ``b`` (4 channels each) are
    concatenated and shuffled; the next unit halves the result from its
    size, passes the first half and concatenates it with ``c`` (computed
    from the second half), shuffled again. ``fixed`` gives the first
    shuffle's last view a literal size."""

    def __init__(self, fixed: bool = False) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.fixed = fixed
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 4, 1)
        self.a_bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(6, 4, 1)
        self.b_bn = nn.BatchNorm2d(4)
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.c_bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.relu(self.stem(inputs))
        x = torch.cat((torch.relu(self.a_bn(self.a(x))),
                       torch.relu(self.b_bn(self.b(x)))), dim=1)
        x = shuffle(x, 2, self.fixed)
        half = x.shape[1] // 2
        first, second = x[:, :half], x[:, half:]
        second = torch.relu(self.c_bn(self.c(second)))
        return self.head(shuffle(torch.cat((first, second), dim=1), 2))


def demo():
    return DemoInput((1, 3, 8, 8))


def test_shuffle_maps_the_permutation_and_ties_the_pieces():
    result = ChannelAnalyzer(demo()).analyse(ShuffleStage())
    # a, b and c are one unit (rooted at a or b, as DepGraph meets them).
    assert len(result.units) == 2
    unit = next(u for u in result.units if u.name != 'stem')
    sites = {(s.module, s.role): s for s in unit.sites}
    assert {('a', 'out'), ('b', 'out'), ('c', 'out'), ('c', 'in'),
            ('head', 'in')} <= set(sites)
    assert sites[('a', 'out')].root_idxs == sites[('b', 'out')].root_idxs
    # Channel k of a and of b go to positions 2k and 2k + 1; the first half
    # (k < 2) is concatenated with c, whose channel j is paired with
    # position j, and shuffled again; the second half feeds c. The halves
    # cut ties channel k to k + 2.
    assert sites[('c', 'out')].root_idxs == [0, 0, 1, 1]
    assert sites[('c', 'in')].root_idxs == [2, 2, 3, 3]
    assert sites[('head', 'in')].root_idxs == [0, 0, 0, 0, 1, 1, 1, 1]
    assert unit.blocks == [[0, 2], [1, 3]]


@pytest.mark.parametrize('trial', range(4))
def test_masked_equals_exported_across_the_shuffle(trial):
    torch.manual_seed(trial)
    model = ShuffleStage()
    mutator = prepared_mutator(model)
    units = {u.name: u for u in mutator.units}
    unit = next(u for n, u in units.items() if n != 'stem')
    randomise_norms(model, trial)
    model.eval()
    g = torch.Generator().manual_seed(100 + trial)
    unit.prune(unit.blocks[trial % 2])
    drop = torch.randperm(6, generator=g)[:trial % 3].tolist()
    if drop:
        units['stem'].prune(drop)
    pruned = assert_masked_equals_exported(model, mutator, g)
    assert (pruned.a.out_channels, pruned.b.out_channels,
            pruned.c.out_channels, pruned.head.in_channels) == (2, 2, 2, 4)


def test_shuffle_at_a_fixed_size_stays_skipped():
    result = ChannelAnalyzer(demo()).analyse(ShuffleStage(fixed=True))
    reasons = [s.reason for s in result.skipped if s.name in 'ab']
    assert len(reasons) == 1
    assert 'a channel shuffle (2 groups)' in reasons[0]
    assert 'failed' in reasons[0]
    assert {u.name for u in result.units} == {'stem'}


class FourProducers(BaseModel):
    """Four producers (3 channels each) concatenated and shuffled in 2
    groups: ``p0`` is tied to ``p2`` and ``p1`` to ``p3``, two units that
    cross the same shuffle (the export prunes them one after the other, so
    the mapping must follow the shuffle's current size)."""

    def __init__(self) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.p = nn.ModuleList(nn.Conv2d(3, 3, 1) for _ in range(4))
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.cat([torch.relu(p(inputs)) for p in self.p], dim=1)
        return self.head(shuffle(x, 2))


def test_two_units_across_one_shuffle():
    model = FourProducers()
    mutator = prepared_mutator(model)
    units = {u.name: u for u in mutator.units}
    assert len(units) == 2
    for unit in units.values():
        outs = {s.module for s in unit.sites if s.role == 'out'}
        assert outs in ({'p.0', 'p.2'}, {'p.1', 'p.3'})
    model.eval()
    for i, unit in enumerate(sorted(units.values(), key=lambda u: u.name)):
        unit.prune([i, 2][:i + 1])
    pruned = assert_masked_equals_exported(
        model, mutator, torch.Generator().manual_seed(0))
    assert [p.out_channels for p in pruned.p] == [2, 1, 2, 1]


class LongStage(BaseModel):
    """A stage of ``1 + len(convs)`` ShuffleNetV2 units of 2 x 6 channels:
    tying channel ``c`` of the halves to ``c + 6`` at every cut would merge
    the whole stage into one block; balancing the halves' counts keeps it
    prunable."""

    def __init__(self, extra: int = 2) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.convs = nn.ModuleList(nn.Conv2d(6, 6, 1) for _ in range(extra))
        self.bns = nn.ModuleList(nn.BatchNorm2d(6) for _ in range(extra))
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = shuffle(torch.cat((self.a(inputs), self.b(inputs)), dim=1), 2)
        for conv, bn in zip(self.convs, self.bns):
            first, second = x[:, :x.shape[1] // 2], x[:, x.shape[1] // 2:]
            second = torch.relu(bn(conv(second)))
            x = shuffle(torch.cat((first, second), dim=1), 2)
        return self.head(x)


@pytest.mark.parametrize('trial', range(3))
def test_halves_are_balanced_along_a_stage(trial):
    torch.manual_seed(trial)
    model = LongStage()
    mutator = prepared_mutator(model)
    assert len(mutator.units) == 1
    unit = mutator.units[0]
    # Tied by position, the three cuts would leave one block.
    assert unit.blocks is not None and len(unit.blocks) == 2
    randomise_norms(model, trial)
    model.eval()
    unit.prune(unit.blocks[trial % len(unit.blocks)])
    pruned = assert_masked_equals_exported(
        model, mutator, torch.Generator().manual_seed(1))
    assert pruned.head.in_channels < 12


class PlainStage(BaseModel):
    """``LongStage`` with units of 2 x ``width`` channels and without
    norms (a removed channel is zero wherever it goes, so masking is zeroing
    the producers' outputs)."""

    def __init__(self, extra: int, width: int = 6) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.a = nn.Conv2d(3, width, 1)
        self.b = nn.Conv2d(3, width, 1)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 1) for _ in range(extra))
        self.head = nn.Conv2d(2 * width, 2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.cat((torch.relu(self.a(inputs)),
                       torch.relu(self.b(inputs))), dim=1)
        x = shuffle(x, 2)
        for conv in self.convs:
            first, second = x[:, :x.shape[1] // 2], x[:, x.shape[1] // 2:]
            x = shuffle(torch.cat((first, torch.relu(conv(second))), dim=1),
                        2)
        return self.head(x)


def _removal_is_exact(model: nn.Module, root: str, idxs) -> bool:
    """Remove root channels ``idxs`` (and everything DepGraph couples to
    them) once by zeroing the producers' outputs, once by slicing a copy;
    True when both models run and agree."""
    from mmifso.models.task_modules.groups import get_pruning_group

    def prune(m):
        graph = ChannelAnalyzer(demo()).build_graph(m)
        module = dict(m.named_modules())[root]
        return graph, get_pruning_group(
            graph, module,
            graph.get_pruner_of_module(module).prune_out_channels, idxs)

    graph, group = prune(model)
    names = {m: n for n, m in model.named_modules()}
    zeroed = {}
    for item in group:
        target = item.dep.target.module
        if isinstance(target, nn.Conv2d) and \
                graph.is_out_channel_pruning_fn(item.dep.handler):
            zeroed.setdefault(names[target], set()).update(item.idxs)

    def zero(channels):
        def hook(module, args, out):
            out = out.clone()
            out[:, sorted(channels)] = 0
            return out
        return hook

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    handles = [
        dict(model.named_modules())[n].register_forward_hook(zero(c))
        for n, c in zeroed.items()
    ]
    with torch.no_grad():
        masked = model(x)
    for h in handles:
        h.remove()
    pruned = copy.deepcopy(model)
    try:
        prune(pruned)[1].prune()
        with torch.no_grad():
            exported = pruned(x)
    except RuntimeError:  # e.g. a view into two groups of an odd size
        return False
    return exported.shape == masked.shape and bool(
        (masked - exported).abs().max() <= 1e-5)


def test_a_stage_of_four_units_of_six_has_no_exact_cut():
    """With order-preserving slicing, each shuffle output must lose whole
    pairs (channel ``b`` of both groups) and each cut into halves as many
    channels of one half as of the other. Along 3 units of 2 x 6 the
    analysis finds 2 blocks, and removing either is exact; along 4 units no
    union of the 6 tied sets is balanced at every cut, so the analysis
    skips the stage, and indeed none of the 62 proper subsets of its
    channels is removed exactly."""
    torch.manual_seed(0)
    model = PlainStage(extra=2)
    result = ChannelAnalyzer(demo()).analyse(model)
    unit = result.units[0]
    assert len(unit.blocks) == 2
    assert all(_removal_is_exact(model, unit.name, b) for b in unit.blocks)

    model = PlainStage(extra=3)
    result = ChannelAnalyzer(demo()).analyse(model)
    assert not result.units
    skipped = next(s for s in result.skipped if s.name in 'ab')
    assert 'tied into one block' in skipped.reason
    assert ('no union of its 6 tied sets of channels has as many channels '
            'in each half of all 3 cuts into halves (exact search)'
            ) in skipped.reason
    subsets = [[c for c in range(6) if mask >> c & 1]
               for mask in range(1, 2**6 - 1)]
    assert not any(_removal_is_exact(model, skipped.name, s)
                   for s in subsets)


@pytest.mark.parametrize('trial', range(2))
def test_an_exact_search_splits_what_greedy_balancing_merges(
        trial, monkeypatch):
    """A stage of 4 units of 2 x 13: balancing the halves greedily, in the
    order of the forward, merges every tied set into one block, but two
    unions of the 13 sets are balanced at all 3 cuts
    (:func:`channel_ties.balanced_unions`); removing either is exact."""
    torch.manual_seed(trial)
    model = PlainStage(extra=3, width=13)
    mutator = prepared_mutator(model)
    unit = next(u for u in mutator.units if u.name in 'ab')
    assert len(unit.blocks) == 2
    assert sorted(r for b in unit.blocks for r in b) == list(range(13))
    model.eval()
    unit.prune(unit.blocks[trial])
    pruned = assert_masked_equals_exported(
        model, mutator, torch.Generator().manual_seed(1))
    assert pruned.head.in_channels == 26 - 2 * len(unit.blocks[trial])

    # Without the exact search the stage is one block.
    monkeypatch.setattr(channel_ties, 'balanced_unions',
                        lambda comps, halves: ([sum(comps, [])], ''))
    result = ChannelAnalyzer(demo()).analyse(PlainStage(extra=3, width=13))
    assert not [u for u in result.units if u.name in 'ab']
