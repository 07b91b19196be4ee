"""Distributed pruning with mmengine's launchers, on GPUs or CPUs.

mmengine's ``init_dist`` and default DDP wrapper assume one GPU per process.
On machines without GPUs (CPU clusters, CI) torchrun still works: the
process group starts with the gloo backend and the model is wrapped without
``device_ids``. torch's SyncBatchNorm refuses CPU tensors and cannot be
differentiated twice; :class:`DifferentiableSyncBatchNorm` can do both and
replaces it on CPU (``sync_bn='torch'``) and during scoring.
"""
import logging

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel

from mmifso.registry import MODEL_WRAPPERS


class DifferentiableSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm with autograd-aware collectives, on any device.

    In training mode with several ranks, the batch mean and (biased)
    variance are taken over the samples of all ranks with two all-reduces of
    ``torch.distributed.nn.functional`` (the sums, then the centred squares),
    whose backward is again an all-reduce. Every order of derivative is
    therefore the derivative of the global batch's loss, so criteria that
    take Hessian-vector products by double backprop (IFSO, SOSP, GraSP) see
    the same statistics as one process with the whole batch. Otherwise
    (eval mode, one process) it is plain batch normalisation.

    Torch ``nn.SyncBatchNorm`` modules are converted in place
    (``module.__class__``), so parameters, buffers, ``process_group`` and
    hooks are kept; see :func:`make_sync_bn_differentiable`. It is not a
    subclass of ``nn.SyncBatchNorm``, which torch's DDP refuses on CPU.
    """

    process_group = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f'expected at least 2D input (got {input.dim()}D input)')

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch_dist.is_available()
                and torch_dist.is_initialized()):
            return super().forward(input)
        group = self.process_group or torch_dist.group.WORLD
        if torch_dist.get_world_size(group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        if input.size(1) == 0:
            raise ValueError('SyncBatchNorm number of input channels should '
                             'be non-zero')
        return self._global_batch_norm(input, group)

    def _global_batch_norm(self, x: torch.Tensor, group) -> torch.Tensor:
        from torch.distributed.nn.functional import all_reduce as ad_reduce
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        local = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        # Sums and sample count in one collective.
        first = ad_reduce(torch.cat([x.sum(dims), local]), group=group)
        count = first[-1].detach()
        mean = first[:c] / count
        centred = x - mean.view(shape)
        # Two passes (centred squares) as F.batch_norm, not E[x^2] - E[x]^2.
        var = ad_reduce(centred.pow(2).sum(dims), group=group) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked)
                            if self.momentum is None else self.momentum)
                unbiased = var.detach() * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(
                    mean.detach() * momentum)
                self.running_var.mul_(1 - momentum).add_(
                    unbiased * momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def make_sync_bn_differentiable(module: nn.Module) -> int:
    """Turn every torch ``nn.SyncBatchNorm`` of ``module`` into a
    :class:`DifferentiableSyncBatchNorm`, in place.

    Returns:
        int: Number of layers converted.
    """
    converted = 0
    for m in module.modules():
        if type(m) is nn.SyncBatchNorm:
            m.__class__ = DifferentiableSyncBatchNorm
            converted += 1
    return converted


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
