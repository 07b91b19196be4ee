"""IFSO against the explicit Hessian of a network small enough to form it."""
import pytest
import torch

from mmifso.models.importance import IFSOImportance, ScoringContext
from mmifso.models.importance.base import grad_or_zeros
from tiny import TinyNet, tiny_batch, tiny_mutator


def explicit_blocks(ctx: ScoringContext, data: dict):
    """Full Hessian of the loss over (conv/linear weights, masks)."""
    with ctx.session():
        loss = ctx.loss(data)
        params = ctx.weights + ctx.masks
        grads = torch.cat([
            g.flatten() for g in grad_or_zeros(loss, params, create_graph=True)
        ])
        rows = []
        for i in range(len(grads)):
            row = grad_or_zeros(grads[i], params, retain_graph=True)
            rows.append(torch.cat([r.flatten() for r in row]))
        hessian = torch.stack(rows)
    p = sum(w.numel() for w in ctx.weights)
    g_m = grads[p:].detach()
    return (hessian[:p, :p], hessian[:p, p:], hessian[p:, p:], g_m)


def split(vec, ctx):
    out, i = [], 0
    for u in ctx.units:
        out.append(vec[i:i + u.num_channels])
        i += u.num_channels
    return out


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = TinyNet().double()
    mutator = tiny_mutator(model)
    for u in mutator.units:
        u.mask.data = u.mask.double()
    ctx = ScoringContext(model, mutator)
    data = tiny_batch()
    return model, mutator, ctx, data


def assert_close(actual, expected, rtol):
    a = torch.cat(actual)
    e = torch.as_tensor(expected).double()
    rel = (a - e).norm() / e.norm()
    assert rel < rtol, f'relative error {rel:.2e} >= {rtol}'


@pytest.mark.parametrize('hvp,rtol', [('exact', 1e-4), ('finite_diff', 1e-2)])
def test_order0_matches_explicit(setup, hvp, rtol):
    model, mutator, ctx, data = setup
    lam = 0.5
    h_ww, h_wm, h_mm, g_m = explicit_blocks(ctx, data)
    ones = torch.ones(h_wm.shape[1], dtype=torch.float64)
    expected = (-0.5 * h_wm.T @ (h_wm @ ones) / lam).abs()
    imp = IFSOImportance(lam=lam, hvp=hvp, fd_eps=1e-4)
    assert_close(imp.score(ctx, [data]), expected, rtol)


@pytest.mark.parametrize('hvp,rtol', [('exact', 1e-4), ('finite_diff', 1e-2)])
def test_full_estimator_with_cg_matches_explicit(setup, hvp, rtol):
    model, mutator, ctx, data = setup
    h_ww, h_wm, h_mm, g_m = explicit_blocks(ctx, data)
    # lambda above the most negative eigenvalue: (H_ww + lam I) is SPD and
    # conjugate gradient converges to the exact inverse.
    lam = float(torch.linalg.eigvalsh(h_ww).min().abs()) + 0.5
    ones = torch.ones(h_wm.shape[1], dtype=torch.float64)
    eye = torch.eye(h_ww.shape[0], dtype=torch.float64)
    schur = h_wm.T @ torch.linalg.solve(h_ww + lam * eye, h_wm @ ones)
    expected = -g_m + 0.5 * (h_mm @ ones) - 0.5 * schur
    imp = IFSOImportance(
        lam=lam,
        inverse='cg',
        cg_iters=400,
        hvp=hvp,
        fd_eps=1e-4,
        first_order=True,
        second_order_mm=True,
        abs_per_batch=False)
    assert_close(imp.score(ctx, [data]), expected, rtol)
    assert imp.last_residual < 1e-3


def test_neumann_series_matches_explicit_truncation(setup):
    model, mutator, ctx, data = setup
    h_ww, h_wm, _, _ = explicit_blocks(ctx, data)
    lam, order = 2.0, 3
    ones = torch.ones(h_wm.shape[1], dtype=torch.float64)
    v = h_wm @ ones
    term, u = v / lam, v / lam
    for _ in range(order):
        term = -h_ww @ term / lam
        u = u + term
    expected = (-0.5 * h_wm.T @ u).abs()
    imp = IFSOImportance(lam=lam, neumann_order=order)
    assert_close(imp.score(ctx, [data]), expected, 1e-4)


def test_scores_average_over_batches(setup):
    model, mutator, ctx, data = setup
    other = tiny_batch(seed=1)
    imp = IFSOImportance(lam=0.5)
    a = imp.score(ctx, [data])
    b = imp.score(ctx, [other])
    both = imp.score(ctx, [data, other])
    assert_close(both, torch.cat([(x + y) / 2 for x, y in zip(a, b)]), 1e-10)


def test_pruned_channels_stay_out(setup):
    model, mutator, ctx, data = setup
    mutator.units[0].prune([1])
    h_ww, h_wm, _, _ = explicit_blocks(ctx, data)
    alive = torch.cat([u.alive for u in mutator.units]).double()
    expected = (-0.5 * h_wm.T @ (h_wm @ alive) / 0.5).abs()
    got = IFSOImportance(lam=0.5).score(ctx, [data])
    assert_close(got, expected, 1e-4)
    assert mutator.units[0].mask[1] == 0


def test_lam_is_required():
    with pytest.raises(ValueError, match='lam'):
        IFSOImportance(lam=-1.0)
    with pytest.raises(ValueError, match="'exact' or 'finite_diff'"):
        IFSOImportance(hvp='fd')


def test_per_sample_mask_grads_match_single_sample_losses(setup):
    model, mutator, ctx, data = setup
    with ctx.session():
        got = ctx.per_sample_mask_grads(data)
        for n in range(3):
            one = dict(inputs=data['inputs'][n:n + 1],
                       data_samples=data['data_samples'][n:n + 1])
            loss = ctx.loss(one)
            ref = grad_or_zeros(loss, ctx.masks)
            for g, r in zip(got, ref):
                assert torch.allclose(g[n], r, atol=1e-10)


def test_abs_per_consumer_matches_explicit(setup):
    """Released form on coupled units: |.| of each consumer's share, summed.

    The per-consumer Hessian is formed explicitly over the consumer gates;
    the consumers' signed shares must add up to the shared-mask score (so
    the gates sit on the right channels), and a unit with several consumers
    must differ from |shared| (else the test could not tell them apart)."""
    from mmifso.models.importance.ifso import consumer_gates
    model, mutator, ctx, data = setup
    lam = 0.5
    with ctx.session(), consumer_gates(ctx) as gates:
        flat = [g for per_unit in gates for g in per_unit]
        loss = ctx.loss(data)
        params = ctx.weights + flat
        grads = torch.cat([
            g.flatten() for g in grad_or_zeros(loss, params, create_graph=True)
        ])
        hessian = torch.stack([
            torch.cat([r.flatten() for r in grad_or_zeros(
                grads[i], params, retain_graph=True)])
            for i in range(len(grads))
        ])
    p = sum(w.numel() for w in ctx.weights)
    h_ww, h_wg, h_gg, g_g = (hessian[:p, :p], hessian[:p, p:],
                             hessian[p:, p:], grads[p:].detach())
    ones = torch.ones(h_wg.shape[1], dtype=torch.float64)
    eye = torch.eye(p, dtype=torch.float64)
    differs = False
    for inverse in ('cg', 'order0'):
        if inverse == 'cg':
            u = torch.linalg.solve(h_ww + lam * eye, h_wg @ ones)
            kwargs = dict(inverse='cg', cg_iters=400)
        else:
            u = h_wg @ ones / lam
            kwargs = dict()
        signed = -g_g + 0.5 * (h_gg @ ones) - 0.5 * h_wg.T @ u
        per_unit, shared, i = [], [], 0
        for per in gates:
            c = per[0].numel()
            parts = [signed[i + k * c:i + (k + 1) * c]
                     for k in range(len(per))]
            i += c * len(per)
            per_unit.append(sum(x.abs() for x in parts))
            shared.append(sum(parts))
        kwargs.update(lam=lam, first_order=True, second_order_mm=True)
        signed_shared = IFSOImportance(abs_per_batch=False, **kwargs).score(
            ctx, [data])
        assert_close(signed_shared, torch.cat(shared), 1e-4)
        got = IFSOImportance(abs_per_consumer=True, **kwargs).score(
            ctx, [data])
        assert_close(got, torch.cat(per_unit), 1e-4)
        multi = [k for k, per in enumerate(gates) if len(per) > 1]
        assert multi, 'TinyNet must have a unit with several consumers'
        differs |= any(not torch.allclose(got[k], shared[k].abs())
                       for k in multi)
    # Consumers of a channel with opposite signs: sum|.| != |sum|.
    assert differs
    with pytest.raises(ValueError, match="needs hvp='exact'"):
        IFSOImportance(lam=lam, abs_per_consumer=True, hvp='finite_diff')


def test_diverging_neumann_series_is_an_error(setup):
    from mmifso.models.importance.ifso import NeumannDivergenceError
    model, mutator, ctx, data = setup
    h_ww, _, _, _ = explicit_blocks(ctx, data)
    top = float(torch.linalg.eigvalsh(h_ww).abs().max())
    # lam far below the largest eigenvalue: (H/lam)^k v grows.
    imp = IFSOImportance(lam=top / 20, neumann_order=3)
    with pytest.raises(NeumannDivergenceError, match="inverse='cg'"):
        imp.score(ctx, [data])
    # Order 0 is always defined; CG reaches a small residual.
    IFSOImportance(lam=top / 20).score(ctx, [data])
    cg = IFSOImportance(lam=top / 20 + float(
        torch.linalg.eigvalsh(h_ww).min().abs()), inverse='cg',
        cg_iters=500, cg_tol=1e-8)
    cg.score(ctx, [data])
    assert cg.last_residual < 1e-6


def test_single_direction_is_the_diagonal_of_the_schur_complement(setup):
    """``direction='single'``: removing channel c alone, ``-g_c + 1/2
    M_cc``; differs from the all-ones row sum."""
    model, mutator, ctx, data = setup
    h_ww, h_wm, h_mm, g_m = explicit_blocks(ctx, data)
    lam = float(torch.linalg.eigvalsh(h_ww).min().abs()) + 0.5
    eye = torch.eye(h_ww.shape[0], dtype=torch.float64)
    m = h_mm - h_wm.T @ torch.linalg.solve(h_ww + lam * eye, h_wm)
    expected = -g_m + 0.5 * torch.diagonal(m)
    kwargs = dict(lam=lam, inverse='cg', cg_iters=400, first_order=True,
                  second_order_mm=True, abs_per_batch=False)
    got = IFSOImportance(direction='single', **kwargs).score(ctx, [data])
    assert_close(got, expected, 1e-4)
    ones = IFSOImportance(**kwargs).score(ctx, [data])
    assert not torch.allclose(torch.cat(got), torch.cat(ones), rtol=1e-2)
    with pytest.raises(ValueError, match="direction='single' needs"):
        IFSOImportance(lam=1.0, direction='single', hvp='finite_diff')
