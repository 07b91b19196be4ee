"""WoodFisher against a dense empirical Fisher built from per-sample (or
per-chunk) gradients with loops, inverted by the Woodbury recursion."""
import pytest
import torch

from criteria_reference import (assert_close, loss_of, named_params, sample,
                                slice_masks, tiny_batch, tiny_setup)
from mmifso.models.importance import WoodFisherImportance


def chunk_gradients(model, data, m):
    """Gradients of each chunk's mean loss, eval mode, as {name: tensor}."""
    n = len(data['data_samples'])
    bounds = [round(i * n / m) for i in range(m + 1)]
    params = named_params(model)
    grads = []
    model.eval()
    try:
        for a, b in zip(bounds[:-1], bounds[1:]):
            g = torch.autograd.grad(loss_of(model, sample(data, a, b - a)),
                                    list(params.values()))
            grads.append(dict(zip(params, g)))
    finally:
        model.train()
    return grads


def block_coords(unit_masks):
    """Per unit: list of (name, flat element index) and per channel the
    positions of its coordinates in that list."""
    coords, owner = [], []
    for c, ch in enumerate(unit_masks):
        for name, m in ch.items():
            for i in m.flatten().nonzero().flatten().tolist():
                coords.append((name, i))
                owner.append(c)
    return coords, torch.tensor(owner)


def gather(values, coords):
    return torch.stack([values[n].flatten()[i] for n, i in coords])


def woodbury_recursion(grads, damp):
    """WoodFisher's recursion, dense: F^-1 of damp I + 1/m sum g g^T."""
    m = len(grads)
    inv = torch.eye(len(grads[0]), dtype=torch.float64) / damp
    for g in grads:
        u = inv @ g
        inv = inv - torch.outer(u, u) / (m + g @ u)
    return inv


@pytest.mark.parametrize('num_grads', [8, 3])
@pytest.mark.parametrize('block', ['unit', 'channel'])
def test_saliency_matches_dense_fisher(num_grads, block):
    model, mutator, ctx = tiny_setup(bn=True)
    data = tiny_batch()
    damp = 0.05
    masks = slice_masks(model, mutator)
    params = named_params(model)
    grads = chunk_gradients(model, data, num_grads)
    expected = []
    for u, unit_masks in enumerate(masks):
        coords, owner = block_coords(unit_masks)
        w = gather({n: p.detach() for n, p in params.items()}, coords)
        gs = [gather(g, coords) for g in grads]
        sal = []
        for c in range(len(unit_masks)):
            q = (owner == c).nonzero().flatten()
            if block == 'unit':
                inv = woodbury_recursion(gs, damp)
                fisher = damp * torch.eye(len(w), dtype=torch.float64) + sum(
                    torch.outer(g, g) for g in gs) / len(gs)
                assert torch.allclose(inv, torch.linalg.inv(fisher),
                                      rtol=1e-8, atol=1e-8)
                sub = inv[q][:, q]
            else:
                sub = woodbury_recursion([g[q] for g in gs], damp)
            sal.append(0.5 * w[q] @ torch.linalg.solve(sub, w[q]))
        expected.append(torch.stack(sal))
    imp = WoodFisherImportance(num_grads=num_grads, damp=damp, block=block)
    got = imp.score(ctx, [data])
    assert_close(got, expected, 1e-6)
    if block == 'unit':
        # The unit block lets the other channels compensate: never more than
        # the channel-block saliency (a Schur complement is smaller).
        chan = WoodFisherImportance(num_grads=num_grads, damp=damp,
                                    block='channel').score(ctx, [data])
        assert all((a <= b + 1e-12).all() for a, b in zip(got, chan))


def test_obs_update_matches_dense_formula():
    model, mutator, ctx = tiny_setup(bn=True)
    data = tiny_batch()
    damp = 0.05
    masks = slice_masks(model, mutator)
    params = named_params(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = chunk_gradients(model, data, 8)
    # Remove channels 0 and 2 of the first unit.
    u, removed = 0, [0, 2]
    coords, owner = block_coords(masks[u])
    w = gather(before, coords)
    gs = [gather(g, coords) for g in grads]
    inv = woodbury_recursion(gs, damp)
    q = torch.cat([(owner == c).nonzero().flatten() for c in removed])
    delta = -inv[:, q] @ torch.linalg.solve(inv[q][:, q], w[q])
    expected = {n: v.clone() for n, v in before.items()}
    for (n, i), d in zip(coords, w + delta):
        expected[n].view(-1)[i] = d

    imp = WoodFisherImportance(num_grads=8, damp=damp, obs_update=True)
    imp.score(ctx, [data])
    for c in removed:
        mutator.units[u].prune([c])
    imp.after_prune(ctx, [(u, c) for c in removed])
    for n, p in params.items():
        assert torch.allclose(p.detach(), expected[n], atol=1e-9), n
    # The removed slices are exactly zero, other units untouched.
    for c in removed:
        for n, m in masks[u][c].items():
            assert (params[n].detach()[m] == 0).all()
    other = {n for ch in masks[1] for n in ch} - {n for ch in masks[0]
                                                  for n in ch}
    for n in other:
        assert torch.equal(params[n].detach(), before[n])
    with pytest.raises(RuntimeError, match='Fisher factors'):
        imp.after_prune(ctx, [(u, 1)])


def test_channel_block_update_only_zeroes_the_slice():
    model, mutator, ctx = tiny_setup(bn=True)
    data = tiny_batch()
    params = named_params(model)
    before = {n: p.detach().clone() for n, p in params.items()}
    imp = WoodFisherImportance(num_grads=4, block='channel', obs_update=True)
    imp.score(ctx, [data])
    imp.after_prune(ctx, [(1, 3)])
    masks = slice_masks(model, mutator)[1][3]
    for n, p in params.items():
        m = masks.get(n, torch.zeros_like(p, dtype=torch.bool))
        assert (p.detach()[m] == 0).all()
        assert torch.equal(p.detach()[~m], before[n][~m])


def test_without_obs_update_weights_never_change():
    model, mutator, ctx = tiny_setup()
    before = [p.detach().clone() for p in model.parameters()]
    imp = WoodFisherImportance(num_grads=4)
    imp.score(ctx, [tiny_batch()])
    imp.after_prune(ctx, [(0, 0)])
    assert all(torch.equal(a, b.detach())
               for a, b in zip(before, model.parameters()))


def test_offload_and_train_mode_paths():
    model, mutator, ctx = tiny_setup()
    data = tiny_batch()
    a = WoodFisherImportance(num_grads=4).score(ctx, [data])
    b = WoodFisherImportance(num_grads=4, offload=True).score(ctx, [data])
    assert_close(b, a, 1e-12)
    # Without BN (TinyNet default) eval and train mode give the same.
    c = WoodFisherImportance(num_grads=4, eval_mode=False).score(ctx, [data])
    assert_close(c, a, 1e-12)
    assert model.training
