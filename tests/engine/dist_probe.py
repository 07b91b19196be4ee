"""A hook for the distributed test: every rank records its masks."""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class MaskProbeHook(Hook):
    priority = 'LOWEST'  # after the pruning hook

    def __init__(self):
        self.history = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        model = runner.model.module if hasattr(runner.model,
                                               'module') else runner.model
        self.history.append(
            torch.cat([u.mask.clone() for u in model.mutator.units]))

    def after_train(self, runner):
        torch.save(
            torch.stack(self.history),
            osp.join(runner.work_dir, f'masks_rank{get_rank()}.pt'))
