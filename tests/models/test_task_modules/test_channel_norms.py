"""LayerNorm trunks (ConvNeXt): a LayerNorm over the channels is recomputed
with statistics over the alive channels while channels are masked, and
per-channel ``nn.Parameter`` s (layer scale) are sliced at export, so the
masked model equals the exported one; the mask gradients include the
channels' effect on the statistics. Norms whose forward does more than
normalise, functional norms and parameters that are not per-channel stay
skipped.
"""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmpretrain.models.utils import LayerNorm2d

from helpers import prepared_mutator, randomise_norms
from mmifso.models.mutators import NormGate, export_pruned_model
from mmifso.models.task_modules import (ChannelAnalyzer, DemoInput,
                                        count_params)


class ScaledNorm(nn.LayerNorm):
    """A LayerNorm whose forward does more than normalise."""

    def forward(self, x):
        return 2 * super().forward(x)


class Trunk(BaseModel):
    """A ConvNeXt-like trunk of 8 channels: stem + ``LayerNorm2d``
    (channels first), a block (depthwise conv, ``nn.LayerNorm`` on channels
    last, MLP, layer scale ``gamma``, residual), a ``LayerNorm2d`` called
    with ``data_format='channel_last'`` and a conv head. ``bad`` replaces the
    block's norm (``'norm'``; ``'functional'``: ``F.layer_norm``) or its
    layer scale (``'param'``, a 2-D parameter mixing channels) by something
    masking cannot follow."""

    def __init__(self, bad: str = '') -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.bad = bad
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.stem_norm = LayerNorm2d(8, eps=1e-6)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = ScaledNorm(8) if bad == 'norm' else nn.LayerNorm(8)
        self.pw1 = nn.Linear(8, 16)
        self.pw2 = nn.Linear(16, 8)
        shape = (8, 8) if bad == 'param' else (8, )
        self.gamma = nn.Parameter(torch.full(shape, 0.5))
        self.last_norm = LayerNorm2d(8, eps=1e-6)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = self.stem_norm(self.stem(inputs))
        y = self.dw(x).permute(0, 2, 3, 1)
        if self.bad == 'functional':
            y = nn.functional.layer_norm(y, (8, ))
        else:
            y = self.norm(y)
        y = self.pw2(nn.functional.gelu(self.pw1(y)))
        if self.bad == 'param':
            y = y @ self.gamma
        else:
            y = y * self.gamma
        x = x + y.permute(0, 3, 1, 2)
        x = self.last_norm(x.permute(0, 2, 3, 1), data_format='channel_last')
        return self.head(x.permute(0, 3, 1, 2))


def randomise(model, seed):
    """Random norms (:func:`randomise_norms`) and layer scale."""
    randomise_norms(model, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        model.gamma.uniform_(0.5, 1.5, generator=g)


def trunk_unit(mutator):
    (unit, ) = [u for u in mutator.units if u.num_channels == 8]
    return unit


def test_layer_norm_trunk_is_prunable_and_masked_equals_exported():
    for trial in range(6):
        torch.manual_seed(trial)
        model = Trunk()
        mutator = prepared_mutator(model)
        # Only the head's outputs (the predictions) are left out.
        assert [s.name for s in mutator.analysis.skipped] == ['head']
        units = {u.name: u for u in mutator.units}
        trunk = trunk_unit(mutator)
        assert set(units) == {trunk.name, 'pw1'}
        assert {'stem_norm', 'norm', 'last_norm'} <= {
            s.module for s in trunk.sites if s.role == 'param'}
        randomise(model, trial)
        model.eval()
        g = torch.Generator().manual_seed(100 + trial)
        drop = torch.randperm(8, generator=g)[:1 + trial % 5].tolist()
        trunk.prune(drop)
        units['pw1'].prune(torch.randperm(16, generator=g)[:5].tolist())
        x = torch.rand(2, 3, 8, 8, generator=g)
        with torch.no_grad():
            masked = model(x)
        pruned, _ = export_pruned_model(model, mutator)
        pruned.eval()
        alive = 8 - len(drop)
        assert pruned.gamma.shape == (alive, )
        # The params estimate counts the layer scale's removed entries too.
        assert count_params(pruned) == mutator.resources()['params']
        for norm in (pruned.stem_norm, pruned.norm, pruned.last_norm):
            assert norm.normalized_shape == (alive, )
            assert norm.weight.shape == (alive, )
        assert pruned.stem_norm.num_channels == alive
        with torch.no_grad():
            exported = pruned(x)
        assert exported.shape == masked.shape
        assert (masked - exported).abs().max() <= 1e-5
        # The norms' recomputation is what makes it exact: without it the
        # removed channels move the statistics.
        plain = copy.deepcopy(model)
        for m in plain.modules():
            for key in [k for k, h in m._forward_hooks.items()
                        if isinstance(h, NormGate)]:
                del m._forward_hooks[key]
        with torch.no_grad():
            assert (plain(x) - exported).abs().max() > 1e-3


def test_mask_gradient_includes_the_statistics():
    """d loss / d mask of the trunk matches a central difference of the
    gated forward (the weighted statistics are smooth in the mask)."""
    torch.manual_seed(0)
    model = Trunk().double()
    # float64 masks for the differences
    mutator = prepared_mutator(model).double()
    randomise(model, 0)
    model.eval()
    unit = trunk_unit(mutator)
    unit.prune([2])
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    unit.mask.requires_grad_(True)
    model(x).square().sum().backward()
    grad = unit.mask.grad.clone()
    unit.mask.requires_grad_(False)
    h = 1e-6
    for c in (0, 2, 5):
        values = []
        for step in (h, -h):
            with torch.no_grad():
                unit.mask[c] += step
                values.append(float(model(x).square().sum()))
                unit.mask[c] -= step
        assert abs((values[0] - values[1]) / (2 * h) - grad[c]) <= 1e-5 * (
            1 + abs(float(grad[c])))


def test_per_sample_gates_match_per_sample_masks():
    torch.manual_seed(1)
    model = Trunk()
    mutator = prepared_mutator(model)
    randomise(model, 1)
    model.eval()
    unit = trunk_unit(mutator)
    x = torch.rand(2, 3, 8, 8)
    rows = torch.ones(2, 8)
    rows[1, [1, 4, 6]] = 0
    unit.sample_gate = rows
    with torch.no_grad():
        both = model(x)
    unit.sample_gate = None
    with torch.no_grad():
        first = model(x[:1])
        unit.prune([1, 4, 6])
        second = model(x[1:])
    assert (both[:1] - first).abs().max() <= 1e-5
    assert (both[1:] - second).abs().max() <= 1e-5


@pytest.mark.parametrize('bad,reason', [
    ('norm', 'its output is not a LayerNorm over dim -1'),
    ('param', 'no single channel dim'),
    ('functional', 'functional norm (NativeLayerNormBackward0'),
])
def test_what_masking_cannot_follow_stays_skipped(bad, reason):
    result = ChannelAnalyzer(DemoInput((1, 3, 8, 8))).analyse(Trunk(bad))
    (skipped, ) = [s for s in result.skipped if s.num_channels == 8]
    assert reason in skipped.reason
    assert all(u.num_channels != 8 for u in result.units)
