"""Every criterion is one config line of a pruning hook in a real Runner."""
import pytest
from mmengine.runner import Runner

from helpers import criterion_examples, runner_cfg

#: Every example configuration of every registered criterion
#: (``BaseImportance.example_kwargs``).
CRITERIA = criterion_examples()


@pytest.mark.parametrize('criterion', [c for _, c in CRITERIA],
                         ids=[name for name, _ in CRITERIA])
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
