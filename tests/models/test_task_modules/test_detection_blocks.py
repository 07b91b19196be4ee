"""Tied channels: GroupNorm groups and grouped convolutions are removed as
whole blocks; masking equals the exported model, which has fewer GN groups.
"""
import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor, BaseModel

from mmifso.models.mutators import (ChannelMutator, export_pruned_model,
                                    select_channels)
from mmifso.models.task_modules import (DemoInput, GroupNormBlockPruner,
                                        count_params, count_resources,
                                        record_layers)
from mmifso.models.task_modules.groups import (GroupDivergedError,
                                               get_all_groups)


class GNHead(BaseModel):
    """A detection-style head: conv-GN-ReLU twice, shared by two levels,
    with a residual add, and a grouped conv."""

    def __init__(self, gn_groups=4, conv_groups=4):
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.gn1 = nn.GroupNorm(gn_groups, 16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=conv_groups)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.gn2 = nn.GroupNorm(gn_groups, 16)
        self.out = nn.Conv2d(16, 5, 1)

    def head(self, x):
        y = torch.relu(self.gn1(self.conv1(x)))
        y = torch.relu(self.bn(self.grouped(y)))
        y = torch.relu(self.gn2(self.conv2(y)) + x)
        return self.out(y)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.relu(self.stem(inputs))
        small = nn.functional.avg_pool2d(x, 2)
        return self.head(x), self.head(small)  # shared across two levels


def Demo():
    return DemoInput((1, 3, 16, 16))


def randomise(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


def prepare(model):
    mutator = ChannelMutator(demo_input=Demo())
    mutator.prepare_from_supernet(model)
    return mutator


def unit(mutator, name):
    (u, ) = [u for u in mutator.units if u.name == name]
    return u


def test_gn_and_grouped_units_have_blocks():
    model = GNHead()
    mutator = prepare(model)
    # conv1 -> gn1 -> grouped conv: GN ties 4 contiguous channels, the
    # grouped conv (4 groups of 4) ties position j of every group; together
    # every channel is tied, so the unit is left out with the reason.
    skipped = {s.name: s.reason for s in mutator.analysis.skipped}
    assert 'conv1' in skipped and 'tied into one block' in skipped['conv1']
    trunk = unit(mutator, 'stem')  # stem + residual add + conv2/gn2
    assert trunk.block_size == 4
    assert trunk.blocks[0] == [0, 1, 2, 3]
    grouped = unit(mutator, 'grouped')  # output of the grouped conv
    assert grouped.block_size == 4
    assert grouped.blocks[0] == [0, 4, 8, 12]


def test_partial_blocks_are_rejected():
    mutator = prepare(GNHead())
    trunk = unit(mutator, 'stem')
    with pytest.raises(ValueError, match='whole blocks'):
        trunk.prune([0, 1])
    with pytest.raises(ValueError, match='whole blocks'):
        trunk.current_choice = list(range(2, 16))
    trunk.prune([4, 5, 6, 7])
    assert trunk.num_alive == 12


def test_masked_equals_exported_with_fewer_gn_groups():
    torch.manual_seed(0)
    model = GNHead()
    mutator = prepare(model)
    randomise(model)
    model.eval()
    unit(mutator, 'stem').prune([4, 5, 6, 7, 12, 13, 14, 15])
    unit(mutator, 'grouped').prune([1, 5, 9, 13])
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        masked = model(x)
    pruned, structure = export_pruned_model(model, mutator)
    assert pruned.gn2.num_channels == 8 and pruned.gn2.num_groups == 2
    assert pruned.gn1.num_groups == 4  # its unit is not prunable
    assert pruned.grouped.groups == 4 and pruned.grouped.out_channels == 12
    pruned.eval()
    with torch.no_grad():
        exported = pruned(x)
    for a, b in zip(masked, exported):
        assert (a - b).abs().max() <= 1e-5
    # The head runs on both levels: its FLOPs count both calls.
    records = record_layers(model, Demo())
    assert records['conv2'].spatial == 16 * 16 + 8 * 8
    counted = count_resources(record_layers(pruned, Demo()))['flops']
    assert counted == mutator.resources()['flops']
    assert count_params(pruned) == mutator.resources()['params']


def test_selection_removes_whole_blocks():
    mutator = prepare(GNHead())
    trunk = unit(mutator, 'stem')
    i = list(mutator.units).index(trunk)
    scores = [torch.full((u.num_channels, ), 100.0) for u in mutator.units]
    # Block 2 (channels 8..11) has the lowest mean, though channel 0 alone
    # is the single lowest score.
    scores[i] = torch.tensor([0.0, 50, 50, 50, 9, 9, 9, 9, 1, 1, 1, 1, 9, 9,
                              9, 9])
    removed = select_channels(mutator, scores, 1, cost_power=0)
    assert sorted(c for _, c in removed) == [8, 9, 10, 11]
    assert trunk.num_alive == 12
    # Never below min_channels: at most 3 of 4 blocks go.
    select_channels(mutator, scores, 10**6, cost_power=0)
    assert trunk.num_alive == 4


def test_gn_with_one_group_or_shared_groups_is_skipped():
    class Mixed(GNHead):
        def __init__(self):
            super().__init__(gn_groups=1)

    mutator = prepare(Mixed())
    skipped = {s.name: s.reason for s in mutator.analysis.skipped}
    assert 'tied into one block' in skipped['stem']

    class Concat(BaseModel):
        def __init__(self):
            super().__init__(data_preprocessor=BaseDataPreprocessor())
            self.a = nn.Conv2d(3, 2, 1)
            self.b = nn.Conv2d(3, 6, 1)
            self.gn = nn.GroupNorm(2, 8)  # group 0 = a's 2 + b's first 2
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            x = torch.cat([self.a(inputs), self.b(inputs)], 1)
            return self.c(torch.relu(self.gn(x)))

    mutator = ChannelMutator(demo_input=Demo())
    with pytest.raises(RuntimeError, match='no prunable'):
        mutator.prepare_from_supernet(Concat())
    skipped = {s.name: s.reason for s in mutator.analysis.skipped}
    assert 'several units' in skipped['a']


def test_group_norm_pruner_reduces_groups_and_rejects_partial_groups():
    gn = nn.GroupNorm(4, 16)
    GroupNormBlockPruner().prune_out_channels(gn, [4, 5, 6, 7])
    assert gn.num_groups == 3 and gn.num_channels == 12
    assert gn.weight.shape == (12, )
    with pytest.raises(ValueError, match='not whole groups'):
        GroupNormBlockPruner().prune_out_channels(nn.GroupNorm(4, 16), [0])


def test_diverging_groups_are_reported_not_hung():
    from mmifso.models.task_modules import ChannelAnalyzer
    model = GNHead()
    graph = ChannelAnalyzer(Demo()).build_graph(model)
    results = list(get_all_groups(graph, budget=10))
    assert any(isinstance(g, GroupDivergedError) for _, g in results)
