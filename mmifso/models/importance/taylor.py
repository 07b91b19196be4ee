"""First-order Taylor criteria on the channels' parameter slices."""
from typing import List

import torch

from mmifso.registry import TASK_UTILS
from mmifso.utils import check_choice
from .base import BaseImportance, ScoringContext
from .param_slices import channel_slices


@TASK_UTILS.register_module()
class TaylorImportance(BaseImportance):
    """First-order Taylor importance of a channel's parameters.

    With ``theta`` the parameters, ``g`` the gradient of the scoring batch's
    mean loss and ``S_c`` the parameter slice of channel ``c`` (the output
    rows and biases of the unit's conv/linear producers, the per-channel
    parameters of its BatchNorm layers and its depthwise filters; see
    :mod:`~mmifso.models.importance.param_slices`):

    * ``variant='taylor_fo'`` (Molchanov et al., CVPR 2019, "Importance
      Estimation for Neural Network Pruning"; the ``|.|`` form of the 2017
      paper): ``s_c = | sum_{i in S_c} theta_i g_i |``, the first-order loss
      change when the channel's slice is zeroed;
    * ``variant='snip'`` (SNIP connection sensitivity summed per channel,
      Lubana & Dick's ``loss_based``): ``s_c = sum_{i in S_c} |theta_i g_i|``.

    The absolute values are taken per scoring batch, then averaged over the
    batches (as Molchanov et al. accumulate per mini-batch). In a unit whose
    producers feed BatchNorm in train mode, ``sum theta g`` over the conv rows
    is zero (batch statistics make the layer scale invariant); the BN affine
    terms then carry the score, which equals Taylor-FO on the BN output
    feature map.

    Statistics: the batch gradient of every trainable parameter.
    Cost per scoring batch: one forward and one backward; memory ``O(P)``.

    Args:
        variant (str): ``'taylor_fo'`` or ``'snip'``.
    """

    example_kwargs = (dict(), dict(variant='snip'))

    def __init__(self, variant: str = 'taylor_fo') -> None:
        check_choice('variant', variant, ('taylor_fo', 'snip'))
        super().__init__()
        self.variant = variant

    def batch_scores(self, ctx: ScoringContext,
                     data: dict) -> List[torch.Tensor]:
        slices = channel_slices(ctx)
        loss = ctx.loss(data)
        # The global batch's gradient (averaged over ranks) before |.|.
        grads = ctx.grad(loss, slices.params)
        prods = [p.detach() * g for p, g in zip(slices.params, grads)]
        if self.variant == 'taylor_fo':
            return [s.abs() for s in slices.reduce(prods)]
        return slices.reduce([x.abs() for x in prods])
