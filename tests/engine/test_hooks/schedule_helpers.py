"""Runner helpers shared by the schedule and criteria hook tests."""
from mmengine.hooks import Hook
from mmengine.runner import Runner

from engine.test_hooks.test_pruning_hook import runner_cfg


class FlopsProbe(Hook):
    """Records the FLOPs ratio seen by each training step."""

    priority = 'LOWEST'

    def __init__(self):
        self.ratios = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.ratios.append(runner.model.mutator.resources()['flops_ratio'])


def schedule_cfg(tmp_path, hook, max_iters, criterion=None):
    cfg = runner_cfg(tmp_path, max_iters=max_iters)
    hook = dict(hook)
    hook.setdefault('importance', criterion or dict(
        type='mmifso.TaylorImportance'))
    hook.setdefault('score_batches', 1)
    cfg.custom_hooks = [hook]
    cfg.default_hooks.logger.interval = 1
    return cfg


def run(cfg):
    runner = Runner.from_cfg(cfg)
    probe = FlopsProbe()
    runner.register_hook(probe)
    runner.train()
    return runner, probe.ratios
