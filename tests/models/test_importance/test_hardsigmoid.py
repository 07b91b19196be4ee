"""Second-order criteria on models with ``nn.Hardsigmoid`` (RTMDet's
CSPNeXt channel attention): torch 2.1 has no derivative of
``hardsigmoid_backward``, so scoring swaps in an equal, twice
differentiable module."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmifso.models.importance import IFSOImportance, ScoringContext
from mmifso.models.utils import TwiceDifferentiableHardsigmoid
from tiny import TinyNet, tiny_batch, tiny_mutator


def test_same_values_and_gradients():
    x = (torch.randn(10000) * 4).requires_grad_()
    y = x.detach().clone().requires_grad_()
    a = nn.Hardsigmoid()(x)
    b = TwiceDifferentiableHardsigmoid()(y)
    assert torch.equal(a, b)
    a.sum().backward()
    b.sum().backward()
    assert torch.equal(x.grad, y.grad)


def scores_of(act: nn.Module):
    torch.manual_seed(0)
    model = TinyNet(act=act).double()
    mutator = tiny_mutator(model)
    for u in mutator.units:
        u.mask.data = u.mask.double()
    ctx = ScoringContext(model, mutator)
    return model, IFSOImportance(lam=1e-3).score(ctx, [tiny_batch()])


def test_ifso_scores_a_model_with_hardsigmoid():
    model, scores = scores_of(nn.Hardsigmoid(inplace=True))
    # The model's module is torch's again after scoring.
    assert type(model.act) is nn.Hardsigmoid
    # The same scores as the explicit formula (no hard sigmoid kernel).
    _, expected = scores_of(lambda x: F.hardtanh(x + 3., 0., 6.) / 6.)
    for s, e in zip(scores, expected):
        assert torch.isfinite(s).all()
        torch.testing.assert_close(s, e, rtol=1e-10, atol=1e-12)
