"""Channels cut into two halves whose cut point the model computes from the
size (CSPNet's ``x[:, :C // 2]`` / ``x[:, C // 2:]``, ``x.chunk(2, 1)``):
channel ``i`` of each half is tied to channel ``i`` of the other, so both
halves lose the same channels and the masked model equals the exported one.
Cuts at fixed sizes stay skipped, with their reasons (channel shuffles:
test_channel_shuffle.py).
"""
import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor, BaseModel

from helpers import (assert_masked_equals_exported, export_trials,
                     prepared_mutator, prune_at_random)
from mmifso.models.task_modules import ChannelAnalyzer, DemoInput
from mmifso.models.task_modules.groups import get_all_groups


class Halves(BaseModel):
    """expand (12 channels) is cut in two: the first half goes straight to
    the concatenation, the second through a residual block and a conv (a
    CSPNet stage). ``cut`` picks how; ``swap`` concatenates the block's half
    first, so DepGraph meets the layers behind the cut before ``expand``."""

    def __init__(self, cut: str = 'slice', swap: bool = False) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.cut, self.swap = cut, swap
        width = 8 if cut.startswith('unequal') else 6  # the second part
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 12, 1)
        self.bn = nn.BatchNorm2d(12)
        self.block = nn.Conv2d(width, width, 3, padding=1)
        self.block_bn = nn.BatchNorm2d(width)
        self.after = nn.Conv2d(width, 6, 1)
        self.final = nn.Conv2d(12 - width + 6, 4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.relu(self.bn(self.expand(torch.relu(self.stem(inputs)))))
        if self.cut == 'slice':
            half = x.shape[1] // 2
            first, second = x[:, :half], x[:, half:]
        elif self.cut == 'chunk':
            first, second = x.chunk(2, dim=1)
        elif self.cut == 'fixed':  # the halves of 12, but always 6
            first, second = x[:, :6], x[:, 6:]
        elif self.cut == 'unequal_slice':
            first, second = x[:, :4], x[:, 4:]
        else:  # 'unequal_split'
            first, second = x.split([4, 8], dim=1)
        second = second + torch.relu(self.block_bn(self.block(second)))
        second = torch.relu(self.after(second))
        parts = (second, first) if self.swap else (first, second)
        return self.final(torch.cat(parts, dim=1))


def demo():
    return DemoInput((1, 3, 8, 8))


@pytest.mark.parametrize('cut', ['slice', 'chunk'])
@pytest.mark.parametrize('swap', [False, True])
def test_halves_are_tied_and_masked_equals_exported(cut, swap):
    for model, mutator, units, g in export_trials(
            lambda: Halves(cut, swap), 8):
        # Rooted at the producer before the cut (also when DepGraph meets
        # the block first), with both halves and the block's residual.
        assert set(units) == {'stem', 'expand', 'after'}
        expand = units['expand']
        assert expand.blocks == [[i, i + 6] for i in range(6)]
        assert {'block', 'expand'} <= set(
            s.module for s in expand.sites if s.role == 'out')
        k = int(torch.randint(1, 6, (1, ), generator=g))
        pairs = torch.randperm(6, generator=g)[:k].tolist()
        expand.prune([c for i in pairs for c in (i, i + 6)])
        prune_at_random(units['stem'], g)
        prune_at_random(units['after'], g)
        pruned = assert_masked_equals_exported(model, mutator, g)
        assert pruned.expand.out_channels == 12 - 2 * k
        assert pruned.block.in_channels == 6 - k


def test_group_is_rooted_before_the_cut():
    """Rooted at the block behind the cut, the walk reaches only the second
    half of expand's channels; the group is re-rooted at expand."""
    model = Halves()
    graph = ChannelAnalyzer(demo()).build_graph(model)
    # DepGraph's order follows the trace: put the block first.
    nodes = graph.module2node
    graph.module2node = {model.block: nodes[model.block]}
    graph.module2node.update(nodes)
    groups = dict(get_all_groups(graph))
    assert model.block not in groups
    group = groups[model.expand]
    assert len(group[0].idxs) == 12
    assert any(item.dep.target.module is model.block for item in group)


def test_partial_removal_of_a_pair_is_rejected():
    expand = {u.name: u for u in prepared_mutator(Halves()).units}['expand']
    with pytest.raises(ValueError, match='whole blocks'):
        expand.prune([0])


def test_cut_at_fixed_sizes_stays_skipped():
    # Unequal parts: not halves, skipped from the graph alone.
    for cut, op in (('unequal_slice', 'channel slicing'),
                    ('unequal_split', 'torch.split/chunk')):
        result = ChannelAnalyzer(demo()).analyse(Halves(cut))
        skipped = {s.name: s.reason for s in result.skipped}
        assert 'expand' not in {u.name for u in result.units}
        assert f'cut by {op}' in skipped['expand']
        assert 'fixed sizes' in skipped['expand']
        # The layers around it are still units, with the right channels.
        units = {u.name: u for u in result.units}
        assert set(units) == {'stem', 'after'}
        assert [(s.module, s.idxs) for s in units['after'].sites] == [
            ('after', list(range(6))), ('final', list(range(4, 10)))]
    # Halves of 12 in the graph, but the cut stays at 6 channels: the probe
    # (one pair removed in a copy) finds it.
    result = ChannelAnalyzer(demo()).analyse(Halves('fixed'))
    skipped = {s.name: s.reason for s in result.skipped}
    assert 'expand' not in {u.name for u in result.units}
    assert 'cut by channel slicing into halves' in skipped['expand']
    assert 'cuts at a fixed number of channels' in skipped['expand']
    assert {'stem', 'after'} <= {u.name for u in result.units}


def test_split_read_piece_by_piece():
    """Each reader of a split gets the offsets of the piece it reads (also
    when a piece has several readers); a reader of two pieces makes the
    split ambiguous."""

    class Pieces(BaseModel):
        def __init__(self, mix: bool) -> None:
            super().__init__(data_preprocessor=BaseDataPreprocessor())
            self.mix = mix
            self.stem = nn.Conv2d(3, 10, 1)
            self.a = nn.Conv2d(4, 3, 1)
            self.b = nn.Conv2d(6, 3, 1)
            self.c = nn.Conv2d(10, 3, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            first, second = self.stem(inputs).split([4, 6], dim=1)
            out = self.a(first) + self.b(second) + self.b(torch.relu(second))
            if self.mix:  # an op reading both pieces
                out = out + self.c(torch.cat((second, first), dim=1))
            return out

    result = ChannelAnalyzer(demo()).analyse(Pieces(False))
    assert 'fixed sizes' in {s.name: s.reason
                             for s in result.skipped}['stem']
    graph = ChannelAnalyzer(demo()).build_graph(Pieces(False))
    model = graph.model
    (root, group), = [(r, g) for r, g in get_all_groups(graph)
                      if r is model.stem]
    sites = {(item.dep.target.module, item.dep.handler.__name__):
             sorted(item.idxs) for item in group}
    assert sites[(model.a, 'prune_in_channels')] == list(range(4))
    assert sites[(model.b, 'prune_in_channels')] == list(range(6))
    result = ChannelAnalyzer(demo()).analyse(Pieces(True))
    assert 'reads several of the pieces' in {
        s.name: s.reason for s in result.skipped}['stem']
