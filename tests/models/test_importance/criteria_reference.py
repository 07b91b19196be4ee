"""Brute-force references for the criteria tests on TinyNet (float64).

Everything here is written independently of mmifso's criteria: the channel
slices of TinyNet are spelled out by hand, Hessians are formed entry by
entry, per-sample quantities with loops over samples.
"""
from typing import Dict, List

import torch

from mmifso.models.importance import ScoringContext
from tiny import TinyNet, tiny_batch, tiny_mutator  # noqa: F401


def tiny_setup(bn: bool = False, seed: int = 0):
    """TinyNet in float64 with its mutator and scoring context."""
    torch.manual_seed(seed)
    model = TinyNet(bn=bn).double()
    if bn:
        with torch.no_grad():
            model.bn.weight.uniform_(0.5, 1.5)
            model.bn.bias.uniform_(-0.3, 0.3)
            model.bn.running_mean.uniform_(-0.2, 0.2)
            model.bn.running_var.uniform_(0.5, 1.5)
    mutator = tiny_mutator(model)
    for u in mutator.units:
        u.mask.data = u.mask.double()
    return model, mutator, ScoringContext(model, mutator)


def named_params(model) -> Dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def unit_kind(unit) -> str:
    """``'conv2'`` for the block-internal unit, ``'trunk'`` for the other
    (the unit's name is whichever producer DepGraph took as root)."""
    outs = {s.module for s in unit.sites if s.role == 'out'}
    return 'conv2' if outs == {'conv2'} else 'trunk'


def slice_masks(model, mutator) -> List[List[Dict[str, torch.Tensor]]]:
    """Per unit (mutator order), per channel: ``{param_name: bool mask}``.

    TinyNet: unit ``conv1`` = conv1 rows + bias, conv3 rows + bias and the
    BN affine (the residual add couples conv1 and conv3 outputs); unit
    ``conv2`` = conv2 rows (no bias).
    """
    params = named_params(model)
    trunk = ['conv1.weight', 'conv1.bias', 'conv3.weight', 'conv3.bias',
             'bn.weight', 'bn.bias']
    out = []
    for unit in mutator.units:
        names = ['conv2.weight'] if unit_kind(unit) == 'conv2' else trunk
        chans = []
        for c in range(unit.num_channels):
            masks = {}
            for name in names:
                if name not in params:
                    continue
                m = torch.zeros_like(params[name], dtype=torch.bool)
                m[c] = True
                masks[name] = m
            chans.append(masks)
        out.append(chans)
    return out


def per_channel(values: Dict[str, torch.Tensor], masks) -> List[torch.Tensor]:
    """Sum of ``values`` over each channel's slice."""
    return [
        torch.stack([
            sum((values[n] * m).sum() for n, m in ch.items())
            for ch in unit
        ]) for unit in masks
    ]


def loss_of(model, data) -> torch.Tensor:
    return model(**data, mode='loss')['loss']


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: torch.Tensor, model) -> Dict[str, torch.Tensor]:
    out, i = {}, 0
    for n, p in named_params(model).items():
        out[n] = vec[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out


def explicit_gradient_hessian(model, data):
    """Gradient and full Hessian over every trainable parameter (every
    entry formed by autograd; the rows are vectorised with vmap)."""
    params = named_params(model)
    shapes = {n: p.shape for n, p in params.items()}

    def loss_at(flat):
        values, i = {}, 0
        for n, shape in shapes.items():
            values[n] = flat[i:i + shape.numel()].view(shape)
            i += shape.numel()
        return torch.func.functional_call(
            model, values, (data['inputs'], data['data_samples']),
            dict(mode='loss'))['loss']

    theta = flatten([p.detach() for p in params.values()])
    g = flatten(torch.autograd.grad(loss_of(model, data),
                                    list(params.values())))
    h = torch.autograd.functional.hessian(loss_at, theta, vectorize=True)
    return g.detach(), h.detach()


def sample(data, n, k=1):
    return dict(inputs=data['inputs'][n:n + k],
                data_samples=data['data_samples'][n:n + k])


def assert_close(actual, expected, rtol):
    a = torch.cat([torch.as_tensor(x).double().flatten() for x in actual])
    e = torch.cat([torch.as_tensor(x).double().flatten() for x in expected])
    rel = (a - e).norm() / e.norm().clamp_min(1e-300)
    assert rel < rtol, f'relative error {rel:.2e} >= {rtol}\n{a}\n{e}'
