"""Inf-CP: per-batch normalised first-order influence, ensembled over batches.
"""
from typing import List, Union

import torch

from mmifso.registry import TASK_UTILS
from mmifso.utils import check_choice
from .base import BaseImportance, ScoringContext


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks ``0 .. n-1`` of ``x`` (ascending); ties share their mean rank."""
    n = len(x)
    if n == 0:
        return x.clone()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    _, inverse, counts = torch.unique_consecutive(
        sorted_x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() + 1) / 2
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


@TASK_UTILS.register_module()
class InfCPImportance(BaseImportance):
    """Inf-CP: batch-wise channel influence, normalised, then ensembled.

    Lai, Xiang & Shen, "Inf-CP: A Reliable Channel Pruning based on Channel
    Influence", arXiv 2112.02521. The paper's influence of a channel on batch
    ``b`` is a first-order Taylor term of the back-propagated gradient; this
    implementation (a reading of the abstract, no code was released) takes
    any data-driven *base* criterion ``I^(b)`` (default
    :class:`TaylorImportance`, ``|sum_{i in S_c} theta_i g_i^(b)|``), normalises
    every batch's scores so that no batch dominates, and averages::

        s_c = 1/K sum_b normalise(I^(b))_c

    Normalisations (over the alive channels; removed channels get 0):

    * ``'rank'``: global rank of the channel among all alive channels of all
      units in batch ``b`` divided by ``n_alive - 1`` (ties share the mean
      rank), so every batch contributes scores in ``[0, 1]``;
    * ``'layer'``: per unit, ``I / ||I||_2`` (Molchanov's layer-wise L2
      normalisation);
    * ``'none'``: the plain mean of the base criterion.

    Statistics and cost: those of the base criterion per batch (Taylor: one
    forward and one backward); memory ``O(P + C)``.

    Args:
        base (dict | BaseImportance): Data-driven criterion scored per batch.
        normalize (str): ``'rank'``, ``'layer'`` or ``'none'``.
        reduce (str): ``'mean'`` (the only aggregation implemented: a median
            or vote needs every batch's scores on every rank).
    """

    example_kwargs = (dict(), dict(normalize='layer'))

    def __init__(self,
                 base: Union[dict, BaseImportance] = dict(
                     type='mmifso.TaylorImportance'),
                 normalize: str = 'rank',
                 reduce: str = 'mean') -> None:
        check_choice('normalize', normalize, ('rank', 'layer', 'none'))
        check_choice('reduce', reduce, ('mean', ))
        base = TASK_UTILS.build(base) if isinstance(base, dict) else base
        if not isinstance(base, BaseImportance) or not base.requires_data:
            raise TypeError(f'InfCP needs a data-driven base criterion, got '
                            f'{type(base).__name__}')
        super().__init__()
        self.base = base
        self.normalize = normalize
        self.reduce = reduce

    def batch_scores(self, ctx: ScoringContext,
                     data: dict) -> List[torch.Tensor]:
        scores = [
            s.detach().double().cpu()
            for s in self.base.batch_scores(ctx, data)
        ]
        finalize = getattr(self.base, 'finalize', None)
        if finalize is not None:
            scores = finalize(scores)
        alive = [u.alive.cpu() for u in ctx.units]
        return self.normalise(scores, alive)

    def normalise(self, scores: List[torch.Tensor],
                  alive: List[torch.Tensor]) -> List[torch.Tensor]:
        """Normalise one batch's scores (see the class docstring)."""
        out = [torch.where(a, s, torch.zeros_like(s))
               for s, a in zip(scores, alive)]
        if self.normalize == 'layer':
            res = []
            for s in out:
                norm = s.norm()
                res.append(s / norm if norm > 0 else s)
            return res
        if self.normalize == 'rank':
            flat = torch.cat([s[a] for s, a in zip(out, alive)])
            ranks = average_ranks(flat)
            if len(flat) > 1:
                ranks = ranks / (len(flat) - 1)
            res, offset = [], 0
            for s, a in zip(out, alive):
                r = torch.zeros_like(s)
                k = int(a.sum())
                r[a] = ranks[offset:offset + k]
                offset += k
                res.append(r)
            return res
        return out
