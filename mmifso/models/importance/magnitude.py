"""Data-free criteria: filter norms, BatchNorm scales and random scores."""
from typing import List

import torch
import torch.nn as nn

from mmifso.registry import TASK_UTILS
from mmifso.utils import check_choice
from .base import BaseImportance, ScoringContext


@TASK_UTILS.register_module()
class MagnitudeImportance(BaseImportance):
    """Norm of the filters that produce each channel.

    For channel c of a unit: ``(sum over producers of ||W_f||_p^p)^(1/p)``
    over the output filters (conv/linear rows) that write c. Units without a
    conv/linear producer (e.g. a depthwise block) use the consumers' input
    slices instead.

    Args:
        p (int): 1 for L1, 2 for L2.
    """

    requires_data = False

    example_kwargs = (dict(p=1), dict(p=2))

    def __init__(self, p: int = 1) -> None:
        if p not in (1, 2):
            raise ValueError(f'p must be 1 or 2, got {p}')
        super().__init__()
        self.p = p

    def static_scores(self, ctx: ScoringContext) -> List[torch.Tensor]:
        scores = []
        for unit in ctx.units:
            out_sites = [s for s in unit.sites if s.role == 'out']
            sites = out_sites or [s for s in unit.sites if s.role == 'in']
            acc = torch.zeros(unit.num_channels, dtype=torch.float64)
            for site in sites:
                w = ctx.model.get_submodule(site.module).weight.detach()
                dim = 0 if site.role == 'out' or w.shape[1] == 1 else 1
                per = w.abs().pow(self.p).transpose(0, dim).flatten(1).sum(1)
                acc.index_add_(0, torch.tensor(site.root_idxs),
                               per[site.idxs].double().cpu())
            scores.append(acc.pow(1.0 / self.p))
        return scores


@TASK_UTILS.register_module()
class RandomImportance(BaseImportance):
    """Uniform random scores: the floor every criterion must beat.

    Args:
        seed (int): Seed of the generator; each call draws new scores.
    """

    requires_data = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def static_scores(self, ctx: ScoringContext) -> List[torch.Tensor]:
        return [
            torch.rand(u.num_channels, generator=self.generator,
                       dtype=torch.float64) for u in ctx.units
        ]


@TASK_UTILS.register_module()
class BNScaleImportance(BaseImportance):
    """BatchNorm scale magnitude (Network Slimming, Liu et al., ICCV 2017).

    ``s_c = sum over the unit's BatchNorm layers of |gamma_c|`` (the
    ``'param'`` sites that are affine BatchNorm layers; Lubana & Dick's
    ``bn``). Data free: no statistics beyond the weights, ``O(C)`` time and
    memory. Without sparsity training (Network Slimming's L1 penalty on
    ``gamma``) the scales are not driven to zero and the criterion is a weak
    baseline.

    Args:
        missing (str): What to do with units that have no affine BatchNorm:
            ``'error'`` raises (scores of such units would not be comparable),
            ``'keep'`` gives them ``+inf`` (never pruned).
    """

    requires_data = False

    def __init__(self, missing: str = 'error') -> None:
        check_choice('missing', missing, ('error', 'keep'))
        super().__init__()
        self.missing = missing

    def static_scores(self, ctx: ScoringContext) -> List[torch.Tensor]:
        scores, without = [], []
        for unit in ctx.units:
            acc = torch.zeros(unit.num_channels, dtype=torch.float64)
            found = False
            for site in unit.sites:
                if site.role != 'param':
                    continue
                bn = ctx.model.get_submodule(site.module)
                if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or \
                        bn.weight is None:
                    continue
                found = True
                gamma = bn.weight.detach().abs().double().cpu()
                acc.index_add_(0, torch.tensor(site.root_idxs),
                               gamma[site.idxs])
            if not found:
                if self.missing == 'error':
                    without.append(unit.name)
                acc.fill_(float('inf'))
            scores.append(acc)
        if without:
            raise ValueError(
                f'BNScaleImportance: units without an affine BatchNorm: '
                f"{without}; use missing='keep' to never prune them or "
                'another criterion')
        return scores
