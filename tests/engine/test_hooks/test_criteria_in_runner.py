"""Every criterion is one config line of a pruning hook in a real Runner."""
import pytest
from mmengine.runner import Runner

from engine.test_hooks.test_pruning_hook import runner_cfg

# One entry per criterion class, plus the variants that take another code
# path (data-free, double backprop, Gauss-Newton); the other variants are
# covered by the brute-force and side-effect tests of the criteria.
CRITERIA = [
    dict(type='mmifso.GroupFisherImportance'),
    dict(type='mmifso.TaylorImportance', variant='snip'),
    dict(type='mmifso.GradFlowImportance', kind='magnitude'),
    dict(type='mmifso.GradFlowImportance', kind='grasp'),
    dict(type='mmifso.BNScaleImportance'),
    dict(type='mmifso.SOSPHImportance', hessian='exact'),
    dict(type='mmifso.SOSPHImportance', hessian='gauss_newton'),
    dict(type='mmifso.WoodFisherImportance', num_grads=4, obs_update=True),
    dict(type='mmifso.InfCPImportance', normalize='rank'),
]


def ids(c):
    return '-'.join(str(v).replace('mmifso.', '') for v in c.values())


@pytest.mark.parametrize('criterion', CRITERIA, ids=ids)
def test_every_criterion_in_the_interleaved_hook(tmp_path, criterion):
    """``PruningHook(importance=criterion)``: score while training, prune
    every ``interval`` iterations."""
    cfg = runner_cfg(tmp_path, target=0.5, max_iters=1, criterion=criterion)
    cfg.custom_hooks[0].interval = 1
    runner = Runner.from_cfg(cfg)
    runner.train()
    units = runner.model.mutator.units
    assert sum(u.num_channels - u.num_alive for u in units) == 3
    assert runner.model.mutator.resources()['flops_ratio'] < 1
    assert runner.iter == 1
