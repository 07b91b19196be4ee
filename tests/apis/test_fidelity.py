"""mmifso.apis.fidelity: converged retraining against closed forms, and the
rank statistics."""
import pytest
import torch
from mmengine.model import BaseModel

from mmifso.apis.fidelity import (NotConvergedError, RegularisedObjective,
                                  converge, paired_difference, rank_metrics,
                                  retrain_masked)


class MaskedRidge(BaseModel):
    """``y ~ x . (mask * w)`` with the mean squared error: a quadratic."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(
            torch.linspace(-1, 1, dim, dtype=torch.float64))
        self.register_buffer('mask', torch.ones(dim, dtype=torch.float64))

    def forward(self, inputs, data_samples=None, mode='loss'):
        pred = inputs @ (self.mask * self.weight)
        return dict(loss=(pred - data_samples).pow(2).mean())


def ridge(x, y, lam, keep):
    """argmin_w mean((x_K w_K - y)^2) + lam/2 ||w||^2, w outside K = 0."""
    n = x.shape[0]
    xk = x[:, keep]
    a = 2 / n * xk.T @ xk + lam * torch.eye(len(keep), dtype=x.dtype)
    w = torch.zeros(x.shape[1], dtype=x.dtype)
    w[keep] = torch.linalg.solve(a, 2 / n * xk.T @ y)
    j = (x @ w - y).pow(2).mean() + lam / 2 * w.pow(2).sum()
    return w, float(j), float((x @ w - y).pow(2).mean())


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1., -2., 0.5, 0., 3., -1.], dtype=torch.float64) \
        + 0.1 * torch.randn(64, generator=g, dtype=torch.float64)
    model = MaskedRidge(6)
    lam = 0.05
    obj = RegularisedObjective(model, [dict(inputs=x, data_samples=y)],
                               [model.weight], lam)
    return model, obj, x, y, lam


@pytest.mark.parametrize('method', ['newton', 'lbfgs'])
def test_converged_retrain_is_the_ridge_solution(problem, method):
    model, obj, x, y, lam = problem
    res = converge(obj, tol=1e-10, method=method)
    w, j, loss = ridge(x, y, lam, list(range(6)))
    assert res.converged and res.grad_norm <= 1e-10
    assert torch.allclose(model.weight.detach(), w, atol=1e-9)
    assert res.objective == pytest.approx(j, rel=1e-12)
    assert res.data_loss == pytest.approx(loss, rel=1e-10)
    # Remove feature 4 (the largest coefficient): in one jump and along a
    # 3-step continuation, both land on the ridge solution without it.
    w_cut, j_cut, _ = ridge(x, y, lam, [0, 1, 2, 3, 5])
    for steps in (1, 3):
        with torch.no_grad():
            model.weight.copy_(w)
            model.mask.fill_(1)

        def set_mask(value):
            model.mask[4] = value

        out = retrain_masked(obj, set_mask, steps, tol=1e-8, method=method)
        assert len(out) == steps and all(r.converged for r in out)
        # The removed weight's gradient is lam * w_4 <= tol: |w_4| <= tol/lam.
        assert torch.allclose(model.weight.detach(), w_cut, atol=1e-8 / lam)
        assert out[-1].objective == pytest.approx(j_cut, rel=1e-10)
        assert out[-1].objective - j > 0.5  # a real change was measured


@pytest.mark.parametrize('method', ['newton', 'lbfgs'])
def test_budget_too_small_is_reported_not_converged(problem, method):
    model, obj, x, y, lam = problem
    res = converge(obj, tol=1e-14, max_iter=1, chunk=1, method=method)
    assert not res.converged and res.grad_norm > 1e-14
    assert res.iterations <= 2
    with pytest.raises(ValueError, match="method must be 'lbfgs'"):
        converge(obj, method='adam')
    with pytest.raises(ValueError, match='lam must be >= 0'):
        RegularisedObjective(model, [], [model.weight], -1.0)
    with pytest.raises(ValueError, match='nothing to retrain'):
        RegularisedObjective(model, [], [], 1.0)
    assert issubclass(NotConvergedError, RuntimeError)


def test_newton_uses_exact_curvature_on_a_nonconvex_start():
    """A logistic model started where the Hessian has a negative
    eigenvalue (``w = 0`` of ``J = mean softplus(-y x.w) - c/2 ||w||^2 +
    d/4 ||w||^4`` is a saddle): the trust region leaves it and reaches
    ``||grad J|| <= 1e-10``, and the gradient and Hessian-vector product
    equal the explicit ones."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g, dtype=torch.float64)
    y = torch.sign(x[:, 0] + 0.3 * torch.randn(32, generator=g,
                                               dtype=torch.float64))

    class Quartic(BaseModel):

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(
                torch.tensor([0., 1e-3, 0.], dtype=torch.float64))

        def forward(self, inputs, data_samples=None, mode='loss'):
            w = self.weight
            fit = torch.nn.functional.softplus(-data_samples *
                                               (inputs @ w)).mean()
            return dict(loss=fit - 0.5 * w.pow(2).sum() +
                        0.25 * w.pow(2).sum().pow(2))

    model = Quartic()
    obj = RegularisedObjective(model, [dict(inputs=x, data_samples=y)],
                               [model.weight], 0.1)
    grad, hvp = obj.gradient_and_hvp()
    w0 = model.weight.detach().clone()

    def j_of(w):
        fit = torch.nn.functional.softplus(-y * (x @ w)).mean()
        return fit - 0.5 * w.pow(2).sum() + 0.25 * w.pow(2).sum().pow(2) \
            + 0.05 * w.pow(2).sum()

    hess = torch.autograd.functional.hessian(j_of, w0)
    assert torch.linalg.eigvalsh(hess)[0] < 0  # a saddle region
    assert torch.allclose(grad, torch.autograd.functional.jacobian(j_of, w0),
                          atol=1e-12)
    for v in torch.eye(3, dtype=torch.float64):
        assert torch.allclose(hvp(v), hess @ v, atol=1e-12)
    res = converge(obj, tol=1e-10, method='newton')
    assert res.converged
    hess_end = torch.autograd.functional.hessian(
        j_of, model.weight.detach().clone())
    assert torch.linalg.eigvalsh(hess_end)[0] > 0  # a minimum, not a saddle
    assert res.objective < float(j_of(w0))


def test_rank_metrics_and_paired_difference():
    m = rank_metrics([0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                     [1., 3., 2., 4., 6., 5.], k=2)
    assert m['spearman'] == pytest.approx(1 - 6 * 4 / (6 * 35))
    lo, hi = m['spearman_ci95']
    assert -1 <= lo <= m['spearman'] <= hi <= 1
    d = paired_difference([1., 2., 3.], [0., 0., 2.])
    # differences 1, 2, 1: mean 4/3, sd 0.577, t(0.975, 2) = 4.303
    half = 4.302652729911275 * (1 / 3) ** 0.5 / 3 ** 0.5
    assert d['mean'] == pytest.approx(4 / 3)
    assert d['ci'] == pytest.approx([4 / 3 - half, 4 / 3 + half])
    assert paired_difference([1.], [0.])['ci'] is None
