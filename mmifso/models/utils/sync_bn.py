"""SyncBatchNorm that can be differentiated twice and runs on CPU.

torch's ``nn.SyncBatchNorm`` refuses CPU tensors and its backward cannot be
differentiated again. :class:`DifferentiableSyncBatchNorm` does both; the
distributed wrapper (:mod:`mmifso.engine.distributed`) converts SyncBN layers
to it on CPU, and :class:`~mmifso.models.importance.ScoringContext` during
scoring.
"""
import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.distributed.nn.functional import all_reduce as ad_reduce


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

    Args:
        module (nn.Module): The model (modified in place).

    Returns:
        int: Number of layers converted.
    """
    converted = 0
    for m in module.modules():
        if type(m) is nn.SyncBatchNorm:
            m.__class__ = DifferentiableSyncBatchNorm
            converted += 1
    return converted
