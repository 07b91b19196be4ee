"""Group Fisher: squared per-sample mask gradients (Liu et al., ICML 2021)."""
from typing import List

import torch

from mmifso.registry import TASK_UTILS
from .base import BaseImportance, ScoringContext


@TASK_UTILS.register_module()
class GroupFisherImportance(BaseImportance):
    """Group Fisher channel importance.

    Liu et al., "Group Fisher Pruning for Practical Network Compression",
    ICML 2021. With one gate ``m_c`` shared by every layer coupled on channel
    ``c`` (the unit's mask, multiplying the consumers' inputs) and ``l_n``
    the loss of sample ``n``::

        s_c = sum_n (d l_n / d m_c) ** 2

    ``d l_n / d m_c`` is the activation x gradient product summed over the
    positions of every consumer input (coupled layers are summed *before*
    squaring). The paper's ``1 / (2N)`` is a constant and left out; scores
    are averaged over scoring batches. The paper's normalisation by the
    removed memory or FLOPs is *not* part of the criterion: configure it in
    the hook (``cost='acts'`` or ``'flops'``, ``cost_power=1``).

    Statistics: per-sample gate gradients from
    :meth:`ScoringContext.per_sample_mask_grads` (a per-sample gate of ones
    on every unit, gradients of the summed loss, no module backward hooks).

    Cost per scoring batch: one forward and one backward; extra memory
    ``O(N * C)`` for the gates and their gradients.

    In a distributed run the per-sample sums of the ranks are added
    (``rank_reduction = 'sum'``): a batch's score covers the samples of all
    ranks, as one process scoring the whole batch.
    """

    rank_reduction = 'sum'

    def batch_scores(self, ctx: ScoringContext,
                     data: dict) -> List[torch.Tensor]:
        return [g.double().pow(2).sum(0) for g in ctx.per_sample_mask_grads(
            data)]
