"""Gradient-flow measures and SOSP-H against explicit Hessians, Jacobians and
Gauss-Newton matrices of TinyNet (float64)."""
import pytest
import torch

from criteria_reference import (assert_close, explicit_gradient_hessian,
                                flatten, named_params, per_channel, sample,
                                slice_masks, tiny_batch, tiny_setup,
                                unflatten)
from mmifso.models.importance import GradFlowImportance, SOSPHImportance


@pytest.fixture(scope='module')
def explicit():
    """TinyNet with BN (train mode), two batches and their H, g."""
    model, mutator, ctx = tiny_setup(bn=True)
    batches = [tiny_batch(seed=0), tiny_batch(seed=1)]
    stats = [explicit_gradient_hessian(model, b) for b in batches]
    return model, mutator, ctx, batches, stats


def theta(model):
    return flatten([p.detach() for p in named_params(model).values()])


@pytest.mark.parametrize('kind', [
    'magnitude', 'loss_preservation', 'biased_loss', 'grasp', 'grad_norm'
])
def test_gradflow_matches_explicit(explicit, kind):
    model, mutator, ctx, batches, stats = explicit
    masks = slice_masks(model, mutator)
    th = theta(model)
    per_batch = []
    for g, h in stats:
        if kind == 'magnitude':
            val = [s.sqrt() for s in per_channel(unflatten(th * th, model),
                                                 masks)]
        elif kind == 'loss_preservation':
            val = per_channel(unflatten((th * g).abs(), model), masks)
        elif kind == 'biased_loss':
            val = per_channel(unflatten((th * th * g).abs(), model), masks)
        else:
            val = per_channel(unflatten(th * (h @ g), model), masks)
        per_batch.append(val)
    expected = [(a + b) / 2 for a, b in zip(*per_batch)]
    if kind == 'grad_norm':
        expected = [e.abs() for e in expected]
    got = GradFlowImportance(kind=kind).score(ctx, batches)
    assert_close(got, expected, 1e-5)
    if kind == 'grasp':
        # Signed: the most negative theta (H g) is pruned first.
        assert any((s < 0).any() for s in got)
    assert GradFlowImportance(kind=kind).requires_data == (kind != 'magnitude')


def structure_vector(model, masks):
    union = {n: torch.zeros_like(p, dtype=torch.bool)
             for n, p in named_params(model).items()}
    for unit in masks:
        for ch in unit:
            for n, m in ch.items():
                union[n] |= m
    return flatten([p.detach() * union[n]
                    for n, p in named_params(model).items()])


@pytest.mark.parametrize('first_order,sign', [(True, 1), (True, -1),
                                              (True, None), (False, 1)])
def test_sosp_exact_matches_explicit(explicit, first_order, sign):
    """``sign=None``: the default, the removal expansion ``-theta_s^T g +
    1/2 theta_s^T H theta_S`` (removing s moves theta by -theta_s)."""
    model, mutator, ctx, batches, stats = explicit
    masks = slice_masks(model, mutator)
    th, v = theta(model), structure_vector(model, masks)
    signed = []
    for g, h in stats:
        second = per_channel(unflatten(th * (h @ v), model), masks)
        first = per_channel(unflatten(th * g, model), masks)
        signed.append([
            ((-1 if sign is None else sign) * f if first_order else 0) +
            0.5 * s for f, s in zip(first, second)
        ])
    expected = [((a + b) / 2).abs() for a, b in zip(*signed)]
    kwargs = {} if sign is None else dict(first_order_sign=sign)
    got = SOSPHImportance(first_order=first_order,
                          **kwargs).score(ctx, batches)
    assert_close(got, expected, 1e-5)


def explicit_gauss_newton(model, data):
    """sum_n J_n^T Lambda_n J_n with per-sample logit Jacobians."""
    params = list(named_params(model).values())
    n = len(data['data_samples'])
    total = None
    for i in range(n):
        logits = model(data['inputs'][i:i + 1])[0]
        jac = torch.stack([
            flatten([
                torch.zeros_like(p) if r is None else r
                for r, p in zip(
                    torch.autograd.grad(logits[k], params, retain_graph=True,
                                        allow_unused=True), params)
            ]) for k in range(len(logits))
        ])
        p = logits.detach().softmax(0)
        lam = (torch.diag(p) - torch.outer(p, p)) / n
        term = jac.T @ lam @ jac
        total = term if total is None else total + term
    return total


def test_sosp_gauss_newton_matches_explicit():
    # No BN: per-sample Jacobians are independent of the other samples.
    model, mutator, ctx = tiny_setup(bn=False)
    data = tiny_batch(seed=3)
    masks = slice_masks(model, mutator)
    th, v = theta(model), structure_vector(model, masks)
    g, _ = explicit_gradient_hessian(model, data)
    gn = explicit_gauss_newton(model, data)
    first = per_channel(unflatten(th * g, model), masks)
    second = per_channel(unflatten(th * (gn @ v), model), masks)
    # Default sign: the removal expansion -theta_s^T g + 1/2 theta_s^T G v.
    expected = [(-f + 0.5 * s).abs() for f, s in zip(first, second)]
    got = SOSPHImportance(hessian='gauss_newton').score(ctx, [data])
    assert_close(got, expected, 1e-5)
    # Naming the logits layer explicitly gives the same.
    named = SOSPHImportance(hessian='gauss_newton',
                            output_modules=['fc']).score(ctx, [data])
    assert_close(named, expected, 1e-5)


def test_gauss_newton_refuses_outputs_that_miss_parameters():
    model, mutator, ctx = tiny_setup(bn=False)
    imp = SOSPHImportance(hessian='gauss_newton', output_modules=['conv3'])
    with pytest.raises(ValueError, match='not only through the outputs'):
        imp.score(ctx, [tiny_batch()])
    with pytest.raises(KeyError, match='nope'):
        SOSPHImportance(hessian='gauss_newton',
                        output_modules=['nope']).score(ctx, [tiny_batch()])


def test_hessian_products_use_the_batch_not_samples(explicit):
    """Scores depend on every sample of the batch (sanity of the fixture)."""
    model, mutator, ctx, batches, stats = explicit
    one = GradFlowImportance(kind='grasp').score(ctx, [sample(batches[0], 0,
                                                              2)])
    full = GradFlowImportance(kind='grasp').score(ctx, [batches[0]])
    assert not torch.allclose(torch.cat(one), torch.cat(full))
