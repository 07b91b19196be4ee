"""Group Fisher, Taylor, Inf-CP, BN scale and the parameter slices against
brute-force references on TinyNet (float64)."""
import pytest
import torch
import torch.nn as nn

from criteria_reference import (assert_close, loss_of, named_params,
                                per_channel, sample, slice_masks, tiny_batch,
                                tiny_setup, unit_kind)
from mmifso.models.importance import (BNScaleImportance, ChannelSlices,
                                      GroupFisherImportance, InfCPImportance,
                                      ScoringContext, TaylorImportance)
from mmifso.registry import TASK_UTILS


@pytest.mark.parametrize('bn', [False, True])
def test_slices_are_the_hand_written_ones(bn):
    model, mutator, ctx = tiny_setup(bn)
    slices = ChannelSlices(ctx)
    masks = slice_masks(model, mutator)
    params = named_params(model)
    names = {id(p): n for n, p in params.items()}
    # One indicator per parameter element and channel, both ways.
    for u, unit in enumerate(mutator.units):
        for c in range(unit.num_channels):
            ind = [torch.zeros_like(p) for p in slices.params]
            for s in slices.units[u]:
                keep = s.idxs[s.root == c]
                view = ind[s.param].transpose(0, s.dim)
                view[keep] = 1
            got = {names[id(p)]: t for p, t in zip(slices.params, ind)
                   if t.any()}
            want = {n: m.double() for n, m in masks[u][c].items()}
            assert got.keys() == want.keys()
            for n in got:
                assert torch.equal(got[n], want[n]), (unit.name, c, n)


@pytest.mark.parametrize('train', [True, False])
def test_zeroing_a_slice_removes_the_channel(train):
    """The slice definition: zeroing it equals masking the channel."""
    model, mutator, ctx = tiny_setup(bn=True)
    model.train(train)
    data = tiny_batch()
    slices = ChannelSlices(ctx)
    for u, unit in enumerate(mutator.units):
        for c in (0, unit.num_channels - 1):
            saved = [p.detach().clone() for p in slices.params]
            unit.mask[c] = 0
            with torch.no_grad():
                masked = model(data['inputs'])
            unit.mask[c] = 1
            with torch.no_grad():
                for s in slices.units[u]:
                    p = slices.params[s.param]
                    p.transpose(0, s.dim)[s.idxs[s.root == c]] = 0
                zeroed = model(data['inputs'])
                for p, v in zip(slices.params, saved):
                    p.copy_(v)
            assert torch.allclose(masked, zeroed, atol=1e-12), (unit.name, c)


def test_depthwise_filters_are_in_the_slice():
    from mmifso.models import ChannelMutator

    class DW(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(2, 4, 1)
            self.bn1 = nn.BatchNorm2d(4)
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.conv2 = nn.Conv2d(4, 3, 1)

        def forward(self, x):
            return self.conv2(self.dw(self.bn1(self.conv1(x)).relu())).mean(
                (2, 3))

    class Demo:
        def __call__(self, m):
            return m(torch.rand(1, 2, 5, 5))

        def to_dict(self):
            return {}

    model = DW()
    mutator = ChannelMutator(demo_input=Demo())
    mutator.prepare_from_supernet(model)
    ctx = ScoringContext(model, mutator)
    slices = ChannelSlices(ctx)
    owned = {id(slices.params[s.param]) for s in slices.units[0]}
    for p in (model.conv1.weight, model.conv1.bias, model.bn1.weight,
              model.bn1.bias, model.dw.weight, model.dw.bias):
        assert id(p) in owned
    assert id(model.conv2.weight) not in owned


def test_group_fisher_is_sum_of_squared_per_sample_mask_grads():
    model, mutator, ctx = tiny_setup()
    data = tiny_batch()
    mutator.units[1].prune([2])
    expected = [torch.zeros(u.num_channels, dtype=torch.float64)
                for u in mutator.units]
    masks = [u.mask for u in mutator.units]
    for m in masks:
        m.requires_grad_(True)
    try:
        for n in range(len(data['data_samples'])):
            grads = torch.autograd.grad(loss_of(model, sample(data, n)),
                                        masks)
            for e, g, u in zip(expected, grads, mutator.units):
                # The gate of a removed channel is 0: no gradient flows.
                e += (g * u.mask.detach()).pow(2)
    finally:
        for m in masks:
            m.requires_grad_(False)
    got = GroupFisherImportance().score(ctx, [data])
    assert_close(got, expected, 1e-6)
    assert got[1][2] == 0


@pytest.mark.parametrize('bn', [False, True])
@pytest.mark.parametrize('variant', ['taylor_fo', 'snip'])
def test_taylor_matches_gradient_times_weight(bn, variant):
    model, mutator, ctx = tiny_setup(bn)
    batches = [tiny_batch(seed=0), tiny_batch(seed=1)]
    masks = slice_masks(model, mutator)
    params = named_params(model)
    per_batch = []
    for data in batches:
        grads = dict(zip(params, torch.autograd.grad(
            loss_of(model, data), list(params.values()))))
        prod = {n: p.detach() * grads[n] for n, p in params.items()}
        if variant == 'taylor_fo':
            per_batch.append([s.abs() for s in per_channel(prod, masks)])
        else:
            per_batch.append(per_channel(
                {n: v.abs() for n, v in prod.items()}, masks))
    expected = [(a + b) / 2 for a, b in zip(*per_batch)]
    got = TaylorImportance(variant=variant).score(ctx, batches)
    assert_close(got, expected, 1e-6)


@pytest.mark.parametrize('normalize', ['rank', 'layer', 'none'])
def test_infcp_normalises_each_batch_before_the_mean(normalize):
    model, mutator, ctx = tiny_setup()
    batches = [tiny_batch(seed=0), tiny_batch(seed=1), tiny_batch(seed=2)]
    mutator.units[0].prune([1])
    per_batch = []
    for data in batches:
        s = TaylorImportance().score(ctx, [data])
        alive = [u.alive for u in mutator.units]
        s = [torch.where(a, x, torch.zeros_like(x)) for x, a in zip(s, alive)]
        if normalize == 'layer':
            s = [x / x.norm() for x in s]
        elif normalize == 'rank':
            flat = torch.cat([x[a] for x, a in zip(s, alive)])
            # Rank by counting (no ties in continuous scores).
            ranks = (flat[None, :] < flat[:, None]).sum(1).double()
            ranks = ranks / (len(flat) - 1)
            out, i = [], 0
            for x, a in zip(s, alive):
                r = torch.zeros_like(x)
                r[a] = ranks[i:i + int(a.sum())]
                i += int(a.sum())
                out.append(r)
            s = out
        per_batch.append(s)
    expected = [sum(x) / len(batches) for x in zip(*per_batch)]
    got = InfCPImportance(normalize=normalize).score(ctx, batches)
    assert_close(got, expected, 1e-6)
    assert got[0][1] == 0


def test_infcp_rank_ties_share_the_mean_rank():
    from mmifso.models.importance.infcp import average_ranks
    ranks = average_ranks(torch.tensor([3., 1., 3., 0.], dtype=torch.float64))
    assert ranks.tolist() == [2.5, 1.0, 2.5, 0.0]


def test_infcp_needs_a_data_driven_base():
    with pytest.raises(TypeError, match='data-driven'):
        InfCPImportance(base=dict(type='mmifso.MagnitudeImportance'))
    with pytest.raises(ValueError, match='normalize'):
        InfCPImportance(normalize='zscore')


def test_bn_scale():
    model, mutator, ctx = tiny_setup(bn=True)
    with pytest.raises(ValueError, match='without an affine BatchNorm'):
        BNScaleImportance().score(ctx)
    got = BNScaleImportance(missing='keep').score(ctx)
    by_kind = {unit_kind(u): s for u, s in zip(mutator.units, got)}
    assert torch.equal(by_kind['trunk'], model.bn.weight.detach().abs())
    assert torch.isinf(by_kind['conv2']).all()


def test_bn_scale_sums_over_the_units_batchnorms():
    from helpers import build_algorithm
    algo = build_algorithm()
    ctx = ScoringContext(algo.architecture, algo.mutator)
    with torch.no_grad():
        for m in algo.architecture.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)
    scores = TASK_UTILS.build(dict(type='mmifso.BNScaleImportance')).score(
        ctx)
    unit = algo.mutator.units[0]
    bns = [s.module for s in unit.sites if s.role == 'param']
    assert len(bns) >= 2
    expected = sum(
        algo.architecture.get_submodule(b).weight.detach().abs().double()
        for b in bns)
    assert torch.allclose(scores[0], expected)
