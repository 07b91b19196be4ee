"""The Python API runs the same pruning step as the hooks."""
import pytest
import torch
from mmengine.optim import OptimWrapper

from mmifso.apis import prune_to_target
from mmifso.models.importance import IFSOImportance, WoodFisherImportance
from models.test_importance.criteria_reference import tiny_setup
from tiny import tiny_batch


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('obs_update', [True, False])
def test_prune_to_target_runs_after_prune(obs_update):
    """WoodFisher's OBS update happens through prune_to_target: the removed
    slices are zeroed and the kept weights move; without it nothing
    moves."""
    model, mutator, ctx = tiny_setup(bn=True)
    before = _weights(model)
    imp = WoodFisherImportance(num_grads=8, damp=0.05, obs_update=obs_update)
    res = prune_to_target(model, mutator, imp, [tiny_batch()],
                          target_flops=0.8, step_fraction=0.2, seed=0)
    assert res['flops_ratio'] <= 0.8 and res['steps'] >= 1
    after = _weights(model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    if not obs_update:
        assert changed == []
        return
    assert any(n.endswith('weight') for n in changed), changed
    # The OBS step zeroes the pruned channels' own weights.
    for unit in mutator.units:
        dead = (~unit.alive).nonzero().flatten()
        for name in ('conv1', 'conv2', 'conv3'):
            conv = getattr(model, name)
            if conv.out_channels == unit.num_channels and len(dead) and \
                    not torch.equal(before[f'{name}.weight'][dead],
                                    after[f'{name}.weight'][dead]):
                assert (after[f'{name}.weight'][dead] == 0).all(), name


def _sgd(model, first_decay, weight_decay):
    """Bias first (another decay, as paramwise_cfg may order it), then the
    conv/linear weights."""
    biases = [p for n, p in model.named_parameters() if not n.endswith(
        'weight') or p.dim() == 1]
    weights = [p for n, p in model.named_parameters() if n.endswith('weight')
               and p.dim() > 1]
    return torch.optim.SGD([
        dict(params=biases, weight_decay=first_decay),
        dict(params=weights, weight_decay=weight_decay)
    ], lr=0.1)


def test_ifso_lam_is_the_decay_of_the_scored_weights():
    model, mutator, ctx = tiny_setup()
    imp = IFSOImportance()
    imp.bind_optimizer(OptimWrapper(_sgd(model, 0.0, 5e-4)), ctx)
    assert imp.lam == 5e-4
    # An explicit lam is kept.
    imp = IFSOImportance(lam=1e-3)
    imp.bind_optimizer(_sgd(model, 0.0, 5e-4), ctx)
    assert imp.lam == 1e-3


def test_ifso_lam_ambiguous_or_zero():
    model, mutator, ctx = tiny_setup()
    weights = [p for n, p in model.named_parameters() if p.dim() > 1]
    opt = torch.optim.SGD([
        dict(params=weights[:1], weight_decay=1e-4),
        dict(params=weights[1:], weight_decay=5e-4)
    ], lr=0.1)
    with pytest.raises(ValueError, match=r'different weight decays '
                       r'\[0.0001, 0.0005\].*set lam explicitly'):
        IFSOImportance().bind_optimizer(opt, ctx)
    with pytest.raises(ValueError, match='weight decay, which is 0: set lam '
                       'explicitly'):
        IFSOImportance().bind_optimizer(_sgd(model, 1e-4, 0.0), ctx)
