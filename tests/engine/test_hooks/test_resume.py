"""Resuming in the middle of pruning continues the same trajectory."""
import torch
from mmengine.runner import Runner

from engine.test_hooks.test_pruning_hook import runner_cfg


def masks(runner):
    return [u.mask.clone() for u in runner.model.mutator.units]


def test_resume_reproduces_uninterrupted_masks(tmp_path):
    def cfg(work, max_iters):
        c = runner_cfg(work, target=0.5, max_iters=max_iters)
        c.custom_hooks[0].stop_at_target = False
        c.default_hooks.checkpoint = dict(
            type='CheckpointHook', interval=5, by_epoch=False)
        return c

    full = Runner.from_cfg(cfg(tmp_path / 'full', 16))
    full.train()
    expected = masks(full)
    assert sum(int((m == 0).sum()) for m in expected) > 0

    # Interrupted after 5 iterations: one scoring batch is accumulated and
    # two pruning steps are done.
    first = Runner.from_cfg(cfg(tmp_path / 'split', 5))
    first.train()
    assert 0 < sum(int((m == 0).sum()) for m in masks(first)) < sum(
        int((m == 0).sum()) for m in expected)
    resumed_cfg = cfg(tmp_path / 'split', 16)
    resumed_cfg.resume = True
    resumed_cfg.load_from = str(tmp_path / 'split' / 'iter_5.pth')
    resumed = Runner.from_cfg(resumed_cfg)
    resumed.train()
    for a, b in zip(expected, masks(resumed)):
        assert torch.equal(a, b)
