"""Activations whose torch kernels have no second derivative."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class TwiceDifferentiableHardsigmoid(nn.Hardsigmoid):
    """``nn.Hardsigmoid`` computed as ``hardtanh(x + 3, 0, 6) / 6``.

    The same values and gradients as torch's kernel (the same operations in
    the same order), but torch 2.1 implements no derivative of
    ``hardsigmoid_backward``, so a criterion taking Hessian-vector products
    by double backprop (IFSO, SOSP, ...) fails on a model with a hard
    sigmoid, e.g. the channel attention of RTMDet's CSPNeXt. Modules are
    converted in place (``module.__class__``) for the duration of a scoring
    run only; see :meth:`mmifso.models.importance.ScoringContext.session`.
    The result is never written into the input (``inplace`` is ignored):
    in-place updates of tensors that the double backward still needs would
    break it.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(input + 3., 0., 6.) / 6.
