"""Distributed pruning with mmengine's launchers, on GPUs or CPUs.

mmengine's ``init_dist`` and default DDP wrapper assume one GPU per process.
On machines without GPUs (CPU clusters, CI) torchrun still works: the
process group starts with the gloo backend and the model is wrapped without
``device_ids``. torch's SyncBatchNorm refuses CPU tensors and cannot be
differentiated twice; :class:`~mmifso.models.utils.DifferentiableSyncBatchNorm`
can do both and replaces it on CPU (``sync_bn='torch'``) and during scoring.
"""
import logging

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel

from mmifso.models.utils import (DifferentiableSyncBatchNorm,
                                 make_sync_bn_differentiable)
from mmifso.registry import MODEL_WRAPPERS

__all__ = [
    'CPUDistributedDataParallel', 'setup_distributed',
    'DifferentiableSyncBatchNorm', 'make_sync_bn_differentiable'
]


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also wraps CPU models.

    Args:
        module (nn.Module): The model.
        device_ids (list[int], optional): Ignored for CPU models (torch's DDP
            rejects them there); kept for GPU models.
        broadcast_buffers (bool): As mmengine's default, False: masks are kept
            identical by the pruning hook, BN statistics stay per rank unless
            SyncBN is configured (``sync_bn='torch'``; on CPU its layers become
            :class:`DifferentiableSyncBatchNorm`, torch's refuses CPU input).
        **kwargs: Passed to ``DistributedDataParallel``.
    """

    def __init__(self, module, device_ids=None, broadcast_buffers=False,
                 **kwargs) -> None:
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        if on_cpu:
            make_sync_bn_differentiable(module)
        super().__init__(
            module=module,
            device_ids=None if on_cpu else device_ids,
            broadcast_buffers=broadcast_buffers,
            **kwargs)


def setup_distributed(cfg: Config) -> None:
    """Prepare ``cfg`` for a torchrun/Slurm launch on a machine without GPUs.

    With GPUs nothing changes (mmengine initialises NCCL as usual). Without,
    the gloo process group is started here from the launcher's environment
    (mmengine then sees it initialised) and the CPU-capable wrapper is used.
    """
    if cfg.get('launcher', 'none') == 'none' or torch.cuda.is_available():
        return
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='mmifso.CPUDistributedDataParallel')
    print_log(
        f'[mmifso] no GPU: distributed run on CPU with gloo, rank '
        f'{torch_dist.get_rank()} of {torch_dist.get_world_size()}',
        logger='current',
        level=logging.INFO)
