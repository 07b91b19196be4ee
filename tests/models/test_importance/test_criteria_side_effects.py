"""Every registered criterion leaves weights, grads, buffers (BatchNorm
statistics), optimizer state, masks and train/eval flags as they were."""
import pytest
import torch

from helpers import build_algorithm, criterion_examples, digits_batch
from mmifso.models.importance import ScoringContext, registered_criteria
from mmifso.registry import TASK_UTILS

#: Every example configuration of every registered criterion
#: (``BaseImportance.example_kwargs``): a new criterion is covered once
#: registered.
CRITERIA = criterion_examples()


@pytest.fixture(scope='module')
def trained():
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    algo.train()
    opt = torch.optim.SGD(algo.parameters(), lr=0.1, momentum=0.9)
    batch = digits_batch(8, size=16)
    data = algo.data_preprocessor(batch, True)
    loss, _ = algo.parse_losses(algo(**data, mode='loss'))
    loss.backward()
    opt.step()
    return algo, opt, batch


def snapshot(algo, opt):
    return dict(
        params={k: v.detach().clone() for k, v in algo.named_parameters()},
        grads={k: v.grad.clone() for k, v in algo.named_parameters()
               if v.grad is not None},
        buffers={k: v.clone() for k, v in algo.named_buffers()},
        opt={k: s['momentum_buffer'].clone()
             for k, s in enumerate(opt.state.values())},
        modes={k: m.training for k, m in algo.named_modules()})


@pytest.mark.parametrize('cfg', [c for _, c in CRITERIA],
                         ids=[name for name, _ in CRITERIA])
def test_no_side_effects(trained, cfg):
    algo, opt, batch = trained
    before = snapshot(algo, opt)
    ctx = ScoringContext(algo.architecture, algo.mutator)
    scores = TASK_UTILS.build(cfg).score(ctx, [batch])
    after = snapshot(algo, opt)
    for part in before:
        assert before[part].keys() == after[part].keys()
        for k in before[part]:
            a, b = before[part][k], after[part][k]
            same = a == b if part == 'modes' else torch.equal(a, b)
            assert same, (part, k)
    assert all(torch.isfinite(s).all() for s in scores)
    assert all(s.shape == (u.num_channels, )
               for s, u in zip(scores, algo.mutator.units))
    assert all(not u.mask.requires_grad for u in algo.mutator.units)


def test_every_registered_criterion_is_covered():
    assert {c['type'] for _, c in CRITERIA} == {
        f'mmifso.{n}' for n in registered_criteria()
        if TASK_UTILS.get(n).__module__.startswith('mmifso.')}
    assert len(CRITERIA) > len({c['type'] for _, c in CRITERIA})
