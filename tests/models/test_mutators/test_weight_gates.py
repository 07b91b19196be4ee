"""Weight-side channel gates against input-side ones.

``conv(x * g, W) = conv(x, W * g)``: the mutator's default weight-side gates
must give the same losses, gradients w.r.t. weights and masks, and
Hessian-vector products as input-side gates, on plain, grouped, depthwise
and transposed convolutions and linear layers, and keep per-sample gates,
state dicts and the layers' parameters as they are.
"""
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel

from mmifso.models import ChannelMutator
from mmifso.models.importance import IFSOImportance, ScoringContext
from mmifso.models.importance.base import dot, grad_or_zeros
from mmifso.models.mutators import InputGate, WeightGate, strip_gates
from helpers import messages_logged
from tiny import TinyNet, tiny_batch, tiny_mutator


class ScaledConv(nn.Conv2d):
    """A conv subclass (its forward could transform the weight), so the
    mutator must not gate its weight."""


class GroupedNet(BaseModel):
    """conv(2->6) -> depthwise(6) -> grouped conv(6->4, groups 2) ->
    transposed conv(4->4) -> GAP -> fc(4->3), tanh in between."""

    def __init__(self, last: type = nn.Conv2d) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.grouped = nn.Conv2d(6, 4, 1, groups=2)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.last = last(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.tanh(self.conv1(inputs))
        x = torch.tanh(self.dw(x))
        x = torch.tanh(self.grouped(x))
        x = torch.tanh(self.up(x))
        x = torch.tanh(self.last(x)).mean((2, 3))
        logits = self.fc(x)
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, data_samples))
        return logits


def build(net: type, gate: str, **kw):
    torch.manual_seed(0)
    model = net(**kw).double()
    mutator = tiny_mutator(model, gate=gate)
    for u in mutator.units:
        u.mask.data = u.mask.double()
    # A pruned channel and a mask away from 1 exercise both values.
    mutator.units[0].prune([1])
    with torch.no_grad():
        mutator.units[-1].mask.mul_(0.7)
    return model, mutator


def derivatives(model, mutator):
    """Loss, gradients w.r.t. weights and masks, and H v for a fixed v."""
    ctx = ScoringContext(model, mutator)
    data = tiny_batch(n=4)
    with ctx.session():
        data = ctx.prepare(data, seed=0)
        loss = ctx.loss(data)
        wrt = ctx.weights + ctx.masks
        grads = grad_or_zeros(loss, wrt, create_graph=True)
        g = torch.Generator().manual_seed(1)
        vec = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in wrt]
        hv = grad_or_zeros(dot(grads, vec), wrt)
        per_sample = ctx.per_sample_mask_grads(data)
    return ([loss.detach()], [x.detach() for x in grads], hv, per_sample)


@pytest.mark.parametrize('net', [TinyNet, GroupedNet])
def test_weight_and_input_gates_agree(net):
    weight, input_ = build(net, 'weight'), build(net, 'input')
    kinds = {
        type(h)
        for m in weight[0].modules() for h in m._forward_pre_hooks.values()
    }
    assert kinds == {WeightGate}
    gated = {n for n, m in weight[0].named_modules() if m._forward_pre_hooks}
    if net is GroupedNet:  # depthwise, grouped, transposed, conv, linear
        assert gated == {'dw', 'grouped', 'up', 'last', 'fc'}
    for a, b in zip(derivatives(*weight), derivatives(*input_)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)
    # Scores too, and the weights are the modules' Parameters afterwards.
    scores = [
        IFSOImportance(lam=0.5, second_order_mm=True, first_order=True).score(
            ScoringContext(*m), [tiny_batch(n=4)], seed=0)
        for m in (weight, input_)
    ]
    for x, y in zip(*scores):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-14)
    for m in weight[0].modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            assert type(m.weight) is nn.Parameter
    assert list(weight[0].state_dict()) == list(input_[0].state_dict())
    assert list(weight[1].state_dict()) == list(input_[1].state_dict())


def test_unsupported_consumer_falls_back_to_input_gate():
    with messages_logged(logging.INFO) as messages:
        model, mutator = build(GroupedNet, 'weight', last=ScaledConv)
    hooks = model.last._forward_pre_hooks.values()
    assert [type(h) for h in hooks] == [InputGate]
    fallback = [m for m in messages if 'input-side channel gates' in m]
    assert len(fallback) == 1 and 'last (ScaledConv)' in fallback[0]
    # Still the same derivatives as all-input gating.
    other = build(GroupedNet, 'input', last=ScaledConv)
    for a, b in zip(derivatives(model, mutator), derivatives(*other)):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)


def test_weight_restored_when_forward_raises():
    model, mutator = build(TinyNet, 'weight')
    weight = model.conv2.weight
    with pytest.raises(RuntimeError):
        model.conv2(torch.zeros(1, 3, 5, 5, dtype=torch.float64))
    assert model.conv2.weight is weight
    # Stripped copies (export) have no gate hooks left.
    strip_gates(model)
    assert not any(m._forward_pre_hooks or m._forward_hooks
                   for m in model.modules())


def test_gate_mode_is_checked():
    with pytest.raises(ValueError, match="'weight' or 'input'"):
        ChannelMutator(gate='output')


def test_weight_outside_parameters_gates_the_input():
    """A layer whose weight is not in ``_parameters`` (a replica of
    nn.DataParallel) gates its input instead; torch.func.functional_call
    (weights swapped into ``_parameters``) gates the swapped weight."""
    model, mutator = build(TinyNet, 'weight')
    ref_model, _ = build(TinyNet, 'input')
    x = tiny_batch(n=2)['inputs']
    with torch.no_grad():
        expected = ref_model(x)
        params = {k: v * 1.5 for k, v in model.named_parameters()}
        ref_params = {k: v * 1.5 for k, v in ref_model.named_parameters()}
        swapped = torch.func.functional_call(model, params, (x, ))
        assert torch.allclose(
            swapped, torch.func.functional_call(ref_model, ref_params, (x, )))
        weight = model.conv2._parameters.pop('weight')
        model.conv2.weight = weight.detach().clone()  # a plain attribute
        assert torch.allclose(model(x), expected)
