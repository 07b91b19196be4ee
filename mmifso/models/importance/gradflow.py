"""Gradient-flow criteria of Lubana & Dick (ICLR 2021) on channel slices."""
from typing import List, Optional

import torch

from mmifso.registry import TASK_UTILS
from mmifso.utils import check_choice
from .base import BaseImportance, ScoringContext, dot, grad_or_zeros
from .param_slices import channel_slices

KINDS = ('magnitude', 'loss_preservation', 'biased_loss', 'grasp',
         'grad_norm')


def hessian_grad_product(
        loss: torch.Tensor,
        params: List[torch.Tensor],
        ctx: Optional[ScoringContext] = None) -> List[torch.Tensor]:
    """``H g`` by double backprop: ``d/dtheta (g . stop_grad(g))``.

    Args:
        loss (Tensor): Mean loss of a batch.
        params (list[Tensor]): ``theta``.
        ctx (ScoringContext, optional): When given, ``g`` and ``H g`` are
            those of the global batch of a distributed run (averaged over
            ranks, :meth:`ScoringContext.reduce`).

    Returns:
        list[Tensor]: ``H g``, detached.
    """
    g = grad_or_zeros(loss, params, create_graph=True)
    if ctx is None:
        fixed = [x.detach() for x in g]
        return [h.detach() for h in grad_or_zeros(dot(g, fixed), params)]
    return ctx.hvp(g, params, ctx.reduce(g), retain_graph=False)


@TASK_UTILS.register_module()
class GradFlowImportance(BaseImportance):
    """The channel measures of "A Gradient Flow Framework for Analyzing
    Network Pruning" (Lubana & Dick, ICLR 2021).

    Under gradient flow ``d theta / dt = -g``, ``d ||theta||^2 / dt = -2
    theta^T g`` links magnitude to loss preservation, and ``d (theta^T g) /
    dt`` brings in ``theta^T H g`` (gradient-norm methods, GraSP). Per channel
    ``c`` with parameter slice ``S_c`` (producer rows and biases, BatchNorm
    affine, depthwise filters; see
    :mod:`~mmifso.models.importance.param_slices`), ``g`` the gradient of
    the scoring batch's mean loss and ``H`` its Hessian over all trainable
    parameters:

    =====================  ======================================  ========
    ``kind``               score (lower = pruned first)            data
    =====================  ======================================  ========
    ``magnitude``          ``||theta_{S_c}||_2``                   none
    ``loss_preservation``  ``sum_{S_c} |theta_i g_i|``             g
    ``biased_loss``        ``sum_{S_c} |theta_i^2 g_i|``           g
    ``grasp``              ``sum_{S_c} theta_i (H g)_i`` (signed)  H g
    ``grad_norm``          ``|sum_{S_c} theta_i (H g)_i|``         H g
    =====================  ======================================  ========

    **GraSP sign.** GraSP scores a weight by ``S(-theta) = -theta (H g)``
    and removes the *largest* ``S``; Lubana & Dick's code keeps ``theta (H
    g)`` and prunes in ascending order. Both remove the most negative
    ``theta (H g)`` first, which is what ``kind='grasp'`` does here with the
    signed score and mmifso's lower-is-pruned-first convention (negative
    scores are then pruned before any positive one). With cost normalisation
    ``score / cost^p`` a negative score becomes *less* negative for costly
    channels, so use ``cost_power=0`` with ``grasp`` to keep GraSP's order.

    ``H g`` is taken per scoring batch by double backprop (``g`` with
    ``create_graph=True``, then the gradient of ``g . stop_grad(g)``) and
    averaged over batches, i.e. ``E_b[H_b g_b]``; the reference code forms
    ``H ḡ`` with ``ḡ`` averaged over 2,560 class-balanced samples, which one
    large scoring batch approximates. ``loss_preservation``,
    ``biased_loss`` take ``|.|`` elementwise per batch; ``grad_norm`` takes
    the absolute value of the batch-averaged sum. The logit temperatures of
    the reference code (``T``, ``grasp_T=200``) are not applied: the loss is
    the model's own.

    Cost per scoring batch: magnitude none; first-order kinds one forward and
    one backward; ``grasp``/``grad_norm`` one forward, one backward with
    ``create_graph`` and one double backward (about 3x a backward). Memory
    ``O(P)`` (plus the graph of the double backward).

    Args:
        kind (str): One of ``'magnitude'``, ``'loss_preservation'``,
            ``'biased_loss'``, ``'grasp'``, ``'grad_norm'``.
    """

    example_kwargs = (dict(), dict(kind='grasp'), dict(kind='magnitude'))

    def __init__(self, kind: str = 'loss_preservation') -> None:
        check_choice('kind', kind, KINDS)
        super().__init__()
        self.kind = kind
        self.requires_data = kind != 'magnitude'

    def static_scores(self, ctx: ScoringContext) -> List[torch.Tensor]:
        slices = channel_slices(ctx)
        squares = [p.detach().pow(2) for p in slices.params]
        return [s.sqrt() for s in slices.reduce(squares)]

    def batch_scores(self, ctx: ScoringContext,
                     data: dict) -> List[torch.Tensor]:
        slices = channel_slices(ctx)
        theta = [p.detach() for p in slices.params]
        loss = ctx.loss(data)
        if self.kind in ('grasp', 'grad_norm'):
            hg = hessian_grad_product(loss, slices.params, ctx)
            return slices.reduce([t * h for t, h in zip(theta, hg)])
        g = ctx.grad(loss, slices.params)  # global batch's g before |.|
        if self.kind == 'loss_preservation':
            return slices.reduce([(t * x).abs() for t, x in zip(theta, g)])
        return slices.reduce([(t * t * x).abs() for t, x in zip(theta, g)])

    def finalize(self, scores: List[torch.Tensor]) -> List[torch.Tensor]:
        """Applied to the batch-averaged scores: ``|.|`` for grad_norm."""
        if self.kind == 'grad_norm':
            return [s.abs() for s in scores]
        return scores

    def compute(self, ctx: ScoringContext) -> List[torch.Tensor]:
        return self.finalize(super().compute(ctx))
