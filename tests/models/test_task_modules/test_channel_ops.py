"""Channels cut into ``n`` equal pieces (Res2Net's ``torch.split(x,
self.width, 1)``, ``chunk``, a split of a computed size): channel ``c`` of
every piece is tied to channel ``c`` of the others, the module attribute
that holds the piece size is updated at export, and the masked model equals
the exported one. Nested concatenations of the pieces get their traced
sizes. A size no single attribute holds stays skipped, with its reason.
"""
import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor, BaseModel

from helpers import (assert_masked_equals_exported, export_trials,
                     prune_at_random)
from mmifso.models.task_modules import ChannelAnalyzer, DemoInput
from mmifso.models.task_modules.channel_ops import (ChannelCutError,
                                                    fix_split_sizes,
                                                    record_channel_ops)

WIDTH, SCALES = 3, 4


class Res2Block(BaseModel):
    """A Res2Net bottleneck: ``conv1``'s output is cut into ``SCALES``
    pieces of ``WIDTH``; piece ``i`` (plus the previous branch's output,
    unless ``stage``) goes through ``convs[i]``; the branch outputs and the
    last piece are concatenated one by one into ``conv3``.

    ``cut`` picks how the pieces are made: ``'attr'`` (``torch.split`` with
    the ``width`` attribute, as Res2Net), ``'list'`` (a list of equal sizes
    built from it), ``'chunk'``, ``'computed'`` (a size computed from the
    tensor), ``'literal'`` (a fixed number; ``width`` holds the same value
    but is not what the split reads), ``'twice'`` (the size is read from
    ``width``, and ``depth`` holds the same value).
    """

    def __init__(self, cut: str = 'attr', stage: bool = False) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.cut, self.stage = cut, stage
        self.width, self.scales = WIDTH, SCALES
        if cut == 'twice':
            self.depth = WIDTH
        channels = WIDTH * SCALES
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, channels, 1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(WIDTH, WIDTH, 3, padding=1) for _ in range(SCALES - 1))
        self.bns = nn.ModuleList(
            nn.BatchNorm2d(WIDTH) for _ in range(SCALES - 1))
        self.conv3 = nn.Conv2d(channels, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def pieces(self, x):
        if self.cut in ('attr', 'twice'):
            return torch.split(x, self.width, 1)
        if self.cut == 'list':
            return x.split([self.width] * self.scales, dim=1)
        if self.cut == 'chunk':
            return x.chunk(self.scales, dim=1)
        if self.cut == 'computed':
            return torch.split(x, x.shape[1] // self.scales, 1)
        return torch.split(x, WIDTH, 1)  # 'literal'

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.relu(self.stem(inputs))
        spx = self.pieces(torch.relu(self.bn1(self.conv1(x))))
        sp = torch.relu(self.bns[0](self.convs[0](spx[0])))
        out = sp
        for i in range(1, self.scales - 1):
            sp = spx[i] if self.stage else sp + spx[i]
            sp = torch.relu(self.bns[i](self.convs[i](sp)))
            out = torch.cat((out, sp), 1)
        out = torch.cat((out, spx[-1]), 1)
        return self.head(torch.relu(self.conv3(out) + x))


def demo():
    return DemoInput((1, 3, 8, 8))


@pytest.mark.parametrize('cut', ['attr', 'list', 'chunk', 'computed'])
@pytest.mark.parametrize('stage', [False, True])
def test_equal_pieces_are_tied_and_masked_equals_exported(cut, stage):
    for model, mutator, units, g in export_trials(
            lambda: Res2Block(cut, stage), 4):
        conv1 = units['conv1']
        assert conv1.blocks == [[c + k * WIDTH for k in range(SCALES)]
                                for c in range(WIDTH)]
        k = int(torch.randint(1, WIDTH, (1, ), generator=g))
        drop = torch.randperm(WIDTH, generator=g)[:k].tolist()
        conv1.prune([c for b in drop for c in conv1.blocks[b]])
        for unit in units.values():
            if unit is not conv1 and unit.blocks is None:
                prune_at_random(unit, g)
        pruned = assert_masked_equals_exported(model, mutator, g)
        assert pruned.conv1.out_channels == SCALES * (WIDTH - k)
        assert pruned.convs[0].in_channels == WIDTH - k
        # The attribute the split reads holds the new piece size; the
        # unpruned model keeps its own.
        expected = WIDTH - k if cut in ('attr', 'list') else WIDTH
        assert (pruned.width, model.width) == (expected, WIDTH)


def test_concatenated_pieces_map_to_their_own_channels():
    """The nested concatenations get their traced sizes, and the last
    piece, concatenated directly, maps back to its own channels of conv1
    (Torch-Pruning applied the split's mapping before the
    concatenation's)."""
    result = ChannelAnalyzer(demo()).analyse(Res2Block())
    units = {u.name: u for u in result.units}
    site = next(s for s in units['conv1'].sites
                if (s.module, s.role) == ('conv3', 'in'))
    # conv3 reads convs[0], convs[1] (added to pieces 1 and 2), convs[2]
    # (its own unit) and piece 3.
    pairs = dict(zip(site.idxs, site.root_idxs))
    last = range(3 * WIDTH, 4 * WIDTH)  # at its own position
    assert pairs == {
        **{i: i + WIDTH for i in range(2 * WIDTH)}, **{i: i for i in last}}
    assert [(s.module, s.idxs) for s in units['convs.2'].sites
            if s.module == 'conv3'] == [('conv3', list(range(6, 9)))]


def test_recorder_sees_concatenations_and_cuts():
    model = Res2Block()
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    with record_channel_ops(model) as recorder:
        model(x)
    assert sorted(s for _, _, s in recorder.concat_sizes.values()) == [
        [3, 3], [6, 3], [9, 3]]
    assert recorder.pieces == {('', 0): (SCALES, SCALES * WIDTH)}


@pytest.mark.parametrize('cut, reason', [
    ('literal', 'failed'),
    ('twice', 'several (width, depth) of the attributes'),
])
def test_a_size_no_single_attribute_holds_stays_skipped(cut, reason):
    result = ChannelAnalyzer(demo()).analyse(Res2Block(cut))
    skipped = {s.name: s.reason for s in result.skipped}
    assert 'conv1' not in {u.name for u in result.units}
    assert 'cut by torch.split/chunk into 4 equal pieces' in skipped['conv1']
    assert 'cuts at a fixed number of channels' in skipped['conv1']
    assert reason in skipped['conv1']
    # The last branch and the trunk are units of their own.
    assert 'convs.2' in {u.name for u in result.units}
    assert len(result.units) == 2


def test_fix_split_sizes_refuses_an_ambiguous_attribute():
    model = Res2Block('twice')
    model.conv1 = nn.Conv2d(8, 8, 1)  # as if pruned to pieces of 2
    model.bn1 = nn.BatchNorm2d(8)
    with pytest.raises(ChannelCutError, match='must become 2, but several'):
        fix_split_sizes(model, demo(), {('', 0): (SCALES, SCALES * WIDTH)})
    # Nothing to fix when the pieces keep their size.
    assert fix_split_sizes(Res2Block('twice'), demo(),
                           {('', 0): (SCALES, SCALES * WIDTH)}) == {}


class RaggedSplit(BaseModel):
    """EdgeNeXt's SDTA encoder in small: the 7-channel trunk is cut with
    ``torch.split(x, self.width, 1)`` into pieces of 3, 3 and 1 (the last
    piece is shorter); the first two go through depthwise convs, the pieces
    are concatenated again and an MLP (``pw1``: 7 -> 12, ``pw2``: 12 -> 7)
    adds to the trunk."""

    def __init__(self) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.width = 3
        self.stem = nn.Conv2d(3, 7, 3, padding=1)
        self.convs = nn.ModuleList(
            nn.Conv2d(3, 3, 3, padding=1, groups=3) for _ in range(2))
        self.pw1 = nn.Conv2d(7, 12, 1)
        self.pw2 = nn.Conv2d(12, 7, 1)
        self.head = nn.Conv2d(7, 2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.relu(self.stem(inputs))
        spx = torch.split(x, self.width, 1)
        out = torch.cat([conv(p) for conv, p in zip(self.convs, spx)] +
                        [spx[-1]], 1)
        x = x + self.pw2(torch.relu(self.pw1(out)))
        return self.head(x)


def test_a_ragged_split_that_keeps_its_channels_exports():
    """A split whose last piece is shorter is left alone by the export when
    no unit changes its input (EdgeNeXt: every export failed with 'no
    equal cut exists' before)."""
    for model, mutator, units, g in export_trials(RaggedSplit, 3):
        assert set(units) == {'pw1'}  # the trunk is cut unequally: skipped
        prune_at_random(units['pw1'], g)
        assert_masked_equals_exported(model, mutator, g)
