"""SOSP-H: second-order structured saliency from one Hessian-vector product.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmifso.registry import TASK_UTILS
from mmifso.utils import check_choice
from ..utils import removing_hooks
from .base import BaseImportance, ScoringContext, dot, grad_or_zeros
from .param_slices import channel_slices

Vec = List[torch.Tensor]
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _captured_outputs(ctx: ScoringContext, data: dict,
                      output_modules: Optional[Sequence[str]]
                      ) -> Tuple[torch.Tensor, List[torch.Tensor], str]:
    """Loss of ``data`` and every output of the output modules.

    Without ``output_modules`` the outputs of the conv/linear layer called
    last (every call of it) are taken: the logits of a classifier.
    """
    names = {m: n for n, m in ctx.model.named_modules()}
    wanted = set(output_modules) if output_modules else None
    outputs = {}
    order = []

    def hook(module, args, out):
        name = names[module]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f'{name} returns {type(out).__name__}; the '
                            'Gauss-Newton product needs tensor outputs')
        outputs.setdefault(name, []).append(out)
        order.append(name)

    targets = [m for m, n in names.items()
               if (n in wanted if wanted is not None else isinstance(
                   m, _LAYERS))]
    if wanted is not None and len(targets) != len(wanted):
        missing = wanted - {names[m] for m in targets}
        raise KeyError(f'output_modules not in the model: {sorted(missing)}')
    handles = [m.register_forward_hook(hook) for m in targets]
    with removing_hooks(handles):
        loss = ctx.loss(data)
    if not order:
        raise RuntimeError('no output module was called in the forward')
    if wanted is None:
        chosen = [order[-1]]
    else:
        chosen = [n for n in output_modules if n in outputs]
    zs = [z for n in chosen for z in outputs[n]]
    return loss, zs, ', '.join(chosen)


def gauss_newton_product(ctx: ScoringContext,
                         data: dict,
                         params: Vec,
                         vec: Vec,
                         output_modules: Optional[Sequence[str]] = None,
                         check: bool = True,
                         rtol: float = 1e-3) -> Tuple[Vec, Vec]:
    """Gradient and Gauss-Newton vector product ``J^T H_z J v``.

    ``z`` are the network outputs (the logits), ``J = dz/dtheta`` and ``H_z
    = d^2 L / dz^2`` the Hessian of the loss w.r.t. the outputs, whatever the
    loss (softmax cross-entropy: ``(diag(p) - p p^T) / N`` per sample). ``J
    v`` comes from the double-VJP trick (the gradient w.r.t. a dummy ``u`` of
    ``(J^T u) . v``), ``H_z (J v)`` from a double backward through the loss
    only, and ``J^T (.)`` from one more VJP; no functorch is needed.

    Args:
        ctx (ScoringContext): Model.
        data (dict): Pre-processed batch.
        params (list[Tensor]): ``theta``.
        vec (list[Tensor]): ``v``, shaped like ``params``.
        output_modules (Sequence[str], optional): Modules whose outputs are
            ``z`` (every call); default the conv/linear layer called last.
        check (bool): Verify that the loss depends on ``theta`` only through
            ``z`` (``J^T dL/dz == dL/dtheta``); otherwise the product would
            silently miss terms.
        rtol (float): Tolerance of the check.

    Returns:
        tuple: ``(g, G v)``, both detached lists shaped like ``params``;
        in a distributed run those of the global batch
        (:meth:`ScoringContext.reduce`).

    Raises:
        ValueError: when the check fails.
    """
    loss, zs, chosen = _captured_outputs(ctx, data, output_modules)
    gz = grad_or_zeros(loss, zs, create_graph=True)
    g = [x.detach() for x in grad_or_zeros(
        zs, params, grad_outputs=[x.detach() for x in gz],
        retain_graph=True)]
    if check:
        direct = grad_or_zeros(loss, params, retain_graph=True)
        err = sum(float((a - b).pow(2).sum()) for a, b in zip(direct, g))
        ref = sum(float(a.pow(2).sum()) for a in direct)
        if err > rtol**2 * max(ref, 1e-30):
            raise ValueError(
                f'the loss depends on the parameters not only through the '
                f'outputs of {chosen} (relative gradient mismatch '
                f'{(err / max(ref, 1e-30)) ** 0.5:.2e}); set output_modules '
                'to every module that produces the predictions (e.g. the '
                'classification and regression convs of a detection head)')
    us = [torch.zeros_like(z, requires_grad=True) for z in zs]
    jt_u = grad_or_zeros(zs, params, grad_outputs=us, create_graph=True,
                         retain_graph=True)
    jtu_v = dot(jt_u, vec)
    jv = grad_or_zeros(jtu_v, us) if jtu_v.requires_grad else [
        torch.zeros_like(z) for z in zs
    ]
    curv = dot(gz, [x.detach() for x in jv])
    # A loss linear in z (e.g. L1 regression) has no curvature there.
    hz_jv = grad_or_zeros(curv, zs, retain_graph=True) \
        if curv.requires_grad else [torch.zeros_like(z) for z in zs]
    gv = grad_or_zeros(zs, params, grad_outputs=[x.detach() for x in hz_jv])
    # g and G v are linear in the samples: those of the global batch.
    return ctx.reduce(g), ctx.reduce(gv)


@TASK_UTILS.register_module()
class SOSPHImportance(BaseImportance):
    """SOSP-H: second-order structured saliency with all correlations.

    Nonnenmacher, Pfeil, Steinwart & Reeb, "SOSP: Efficiently Capturing
    Global Correlations by Second-Order Structured Pruning", ICLR 2022.

    **Structures** are the units' channels; the parameters ``theta_s`` of
    channel ``s`` are its parameter slice (producer rows and biases,
    BatchNorm affine, depthwise filters; see
    :mod:`~mmifso.models.importance.param_slices`). The second-order loss
    change of removing a set ``M`` couples every pair ``theta_s^T H
    theta_s'`` of ``M``; SOSP-H extends the inner sum to *all* structures, so
    that one product ``H theta_S`` with ``theta_S = sum_s theta_s`` (every
    structure's parameters, zero elsewhere) scores all of them::

        s = | sign * theta_s^T g + 1/2 theta_s^T (H theta_S) |

    Removing ``s`` moves ``theta`` by ``-theta_s``, so the second-order
    Taylor expansion of the removal is ``-theta_s^T g + 1/2 theta_s^T H
    theta``: ``first_order_sign=-1``, the default. In mask space (a gate
    ``m_s`` scaling ``theta_s``) this is ``|(-grad_m L + 1/2 H_mm 1)_s|``,
    the masks moving along ``-1``. ``first_order_sign=+1`` is the expansion
    for *adding* ``theta_s`` (``|(grad_m L + 1/2 H_mm 1)_s|``, mmifso's
    default before the review of issue 9), kept as an option. Whether the
    paper keeps the first-order term and where it takes the absolute value
    is not verified against its Section 2.

    ``g`` and ``H`` are those of the batch mean loss over all trainable
    parameters; the signed value is averaged over the scoring
    batches and the absolute value taken at the end (the paper computes
    the saliency from data-set-level ``g`` and ``H``).

    ``hessian='exact'`` uses double backprop (``H v`` = gradient of ``g .
    v``); ``'gauss_newton'`` replaces ``H`` by ``G = J^T H_z J`` (PSD for
    cross-entropy, the approximation of the paper) computed with VJPs through
    the network outputs ``z`` (:func:`gauss_newton_product`): the outputs of
    ``output_modules``, by default the conv/linear layer called last (the
    classifier's logits). Before using them the criterion checks that the loss
    depends on the parameters only through ``z`` and raises otherwise (e.g. a
    detector whose heads have several output layers: name them all, e.g.
    ``output_modules=['bbox_head.retina_cls', 'bbox_head.retina_reg']`` for
    mmdet's RetinaNet). ``H_z`` is the loss's own curvature in ``z``: zero
    for L1 box regression, so such outputs add no second-order term.

    Cost per scoring batch: exact, one forward, one backward with
    ``create_graph`` and one double backward (2-3x a backward); Gauss-Newton,
    one forward and about four backward passes (one more on the first batch
    for the check). Memory ``O(P)`` plus the retained graph.

    Args:
        hessian (str): ``'exact'`` or ``'gauss_newton'``.
        first_order (bool): Keep the gradient term.
        first_order_sign (int): ``-1`` (removal, default) or ``+1``
            (the expansion for adding ``theta_s``), see above.
        output_modules (Sequence[str], optional): Outputs ``z`` for the
            Gauss-Newton product.
    """

    example_kwargs = (dict(), dict(hessian='gauss_newton'))

    def __init__(self,
                 hessian: str = 'exact',
                 first_order: bool = True,
                 first_order_sign: int = -1,
                 output_modules: Optional[Sequence[str]] = None) -> None:
        check_choice('hessian', hessian, ('exact', 'gauss_newton'))
        if first_order_sign not in (1, -1):
            raise ValueError('first_order_sign must be +1 or -1')
        super().__init__()
        self.hessian = hessian
        self.first_order = first_order
        self.first_order_sign = first_order_sign
        self.output_modules = list(output_modules) if output_modules else None
        self._checked = False

    def batch_scores(self, ctx: ScoringContext,
                     data: dict) -> List[torch.Tensor]:
        slices = channel_slices(ctx)
        params = slices.params
        theta = [p.detach() for p in params]
        v = slices.structure_vector()
        if self.hessian == 'exact':
            loss = ctx.loss(data)
            g = grad_or_zeros(loss, params, create_graph=True)
            hv = ctx.hvp(g, params, v, retain_graph=False)
            g = ctx.reduce(g)
        else:
            g, hv = gauss_newton_product(
                ctx, data, params, v, self.output_modules,
                check=not self._checked)
            self._checked = True
        second = slices.reduce([t * h for t, h in zip(theta, hv)])
        if not self.first_order:
            return [0.5 * s for s in second]
        first = slices.reduce([t * x for t, x in zip(theta, g)])
        return [self.first_order_sign * f + 0.5 * s
                for f, s in zip(first, second)]

    def finalize(self, scores: List[torch.Tensor]) -> List[torch.Tensor]:
        """Absolute value of the (batch-averaged) signed saliency."""
        return [s.abs() for s in scores]

    def compute(self, ctx: ScoringContext) -> List[torch.Tensor]:
        return self.finalize(super().compute(ctx))
