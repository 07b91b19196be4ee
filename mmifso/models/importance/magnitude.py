"""Data-free criteria: filter norms and random scores."""
from typing import List

import torch

from mmifso.registry import TASK_UTILS
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
