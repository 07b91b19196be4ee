"""Scoring passes never step the optimizer and never touch BN statistics."""
import pytest
import torch

from helpers import build_algorithm, digits_batch
from mmifso.models.importance import (IFSOImportance, MagnitudeImportance,
                                      RandomImportance, ScoringContext)


@pytest.mark.parametrize('hvp', ['exact', 'finite_diff'])
def test_scoring_has_no_side_effects(hvp):
    algo = build_algorithm()
    algo.train()
    opt = torch.optim.SGD(algo.parameters(), lr=0.1, momentum=0.9)
    batch = digits_batch(16)
    # One real step so the optimizer has momentum state and grads exist.
    data = algo.data_preprocessor(batch, True)
    loss, _ = algo.parse_losses(algo(**data, mode='loss'))
    loss.backward()
    opt.step()

    def snapshot():
        return dict(
            params={k: v.detach().clone()
                    for k, v in algo.named_parameters()},
            grads={k: v.grad.clone()
                   for k, v in algo.named_parameters() if v.grad is not None},
            buffers={k: v.clone()
                     for k, v in algo.named_buffers()},
            opt={
                k: s['momentum_buffer'].clone()
                for k, s in enumerate(opt.state.values())
            })

    before = snapshot()
    ctx = ScoringContext(algo.architecture, algo.mutator)
    scores = IFSOImportance(lam=1e-4, hvp=hvp).score(ctx, [batch, batch])
    after = snapshot()
    for part in before:
        assert before[part].keys() == after[part].keys()
        for k in before[part]:
            assert torch.equal(before[part][k], after[part][k]), (part, k)
    assert all(torch.isfinite(s).all() for s in scores)
    assert all(not u.mask.requires_grad for u in algo.mutator.units)
    assert algo.training


def test_data_free_criteria():
    algo = build_algorithm()
    ctx = ScoringContext(algo.architecture, algo.mutator)
    l1 = MagnitudeImportance(p=1).score(ctx)
    unit = algo.mutator.units[0]
    conv = algo.architecture.get_submodule(
        [s.module for s in unit.sites if s.role == 'out'][0])
    assert l1[0].shape == (unit.num_channels, )
    assert (l1[0] >= conv.weight.abs().flatten(1).sum(1).double() - 1e-6).all()
    r1 = RandomImportance(seed=1).score(ctx)
    r2 = RandomImportance(seed=1).score(ctx)
    assert all(torch.equal(a, b) for a, b in zip(r1, r2))


def test_unknown_criterion_type_is_an_error():
    from mmifso.registry import TASK_UTILS
    with pytest.raises(KeyError, match='not in the'):
        TASK_UTILS.build(dict(type='mmifso.NoSuchImportance'))
