"""IFSO: influence-function second-order channel importance.

Cheng, Zhang & Shi, "Influence Function Based Second-Order Channel Pruning",
TPAMI 2024. With ``w*(m)`` the weights retrained under masks ``m`` and weight
decay ``lam``, the implicit-function theorem gives ``dw*/dm = -(H_ww + lam
I)^-1 H_wm`` and the retrained ("true") loss change for a mask change ``dm``

    dL* = g_m . dm + 1/2 dm^T [H_mm - H_mw (H_ww + lam I)^-1 H_wm] dm.

Removing channels moves the masks along ``dm = -1``; the share of channel c is
the c-th entry of the row sum (the matrix applied to the all-ones vector),
which scores every channel with a few Hessian-vector products:

    score_c = [-g_m + 1/2 H_mm 1 - 1/2 H_mw (H_ww + lam I)^-1 H_wm 1]_c.

The authors' released code keeps only the last (Schur-complement) term,
truncates the inverse to ``1 / lam`` (Neumann order 0), takes both HVPs by
central finite differences and the absolute value per batch; those are the
defaults here except ``hvp='exact'`` (double backprop, no step-size error).
"""
import contextlib
import logging
from typing import Callable, Iterator, List, Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log

from mmifso.registry import TASK_UTILS
from mmifso.utils import check_choice
from ..utils import conjugate_gradient
from .base import (BaseImportance, ScoringContext, dot, grad_or_zeros,
                   weight_decay_of)

Vec = List[torch.Tensor]


class NeumannDivergenceError(ValueError):
    """The truncated Neumann series of ``(H_ww + lam I)^-1`` does not
    converge (the largest eigenvalue of ``H_ww`` exceeds ``lam``)."""


@contextlib.contextmanager
def consumer_gates(ctx: ScoringContext) -> Iterator[List[List[torch.Tensor]]]:
    """One extra gate of ones per (unit, consumer), differentiable.

    Every ``'in'`` site of a unit (a conv/linear layer reading the unit's
    channels) gets its own ``(C_u, )`` gate multiplying its input channels on
    top of the shared mask. All gates are ones, so the model is unchanged;
    the gradient w.r.t. the shared mask is the sum over its consumers'
    gates, and each gate's gradient is that consumer's share (the per-member
    masks of the released IFSO code).

    Args:
        ctx (ScoringContext): The model and its units.

    Yields:
        list[list[Tensor]]: Per unit, one gate per consumer (requires grad).
    """
    gates, handles = [], []

    def make_hook(gate: torch.Tensor, idxs: torch.Tensor,
                  root: torch.Tensor, dim: int):

        def hook(module, args):
            x = args[0]
            full = torch.ones(x.shape[dim], dtype=x.dtype, device=x.device)
            full = full.scatter(0, idxs.to(x.device),
                                gate[root.to(x.device)].to(x.dtype))
            shape = [1] * x.dim()
            shape[dim % x.dim()] = x.shape[dim]
            return (x * full.view(shape), ) + tuple(args[1:])

        return hook

    try:
        for unit in ctx.units:
            per_unit = []
            for site in unit.sites:
                if site.role != 'in':
                    continue
                module = ctx.model.get_submodule(site.module)
                gate = torch.ones_like(unit.mask, requires_grad=True)
                dim = -1 if isinstance(module, nn.Linear) else 1
                handles.append(module.register_forward_pre_hook(make_hook(
                    gate, torch.tensor(site.idxs, dtype=torch.long),
                    torch.tensor(site.root_idxs, dtype=torch.long), dim)))
                per_unit.append(gate)
            gates.append(per_unit)
        yield gates
    finally:
        for h in handles:
            h.remove()


@TASK_UTILS.register_module()
class IFSOImportance(BaseImportance):
    """IFSO channel importance.

    Args:
        lam (float, optional): Damping ``lambda`` of ``(H_ww + lambda I)``.
            ``None`` takes the optimizer's weight decay when run by a pruning
            hook; it must be set when scoring through the Python API.
        inverse (str): ``'neumann'`` (truncated series ``lam^-1 sum_k
            (-H_ww / lam)^k``; diverges unless ``lam`` exceeds the largest
            Hessian eigenvalue) or ``'cg'`` (conjugate gradient on ``(H_ww +
            lam I) x = H_wm 1``).
        neumann_order (int): Highest power ``k`` of the Neumann series; 0 is
            ``1 / lam``, what the released code does.
        cg_iters (int): Iterations of conjugate gradient.
        hvp (str): ``'exact'`` (double backprop) or ``'finite_diff'`` (central
            differences as in the released code).
        fd_eps (float): Finite-difference radius; the step along direction
            ``v`` is ``fd_eps / ||v||``.
        first_order (bool): Add the first-order term ``-g_m``.
        second_order_mm (bool): Add ``1/2 H_mm 1``.
        abs_per_batch (bool): Absolute value of each batch's score before
            averaging (released code); otherwise the signed mean.
        abs_per_consumer (bool): Score every consumer of a unit (each layer
            reading its channels) separately, take the absolute value per
            consumer and per batch and sum over the consumers, as the
            released code does with its per-member masks. Off: one shared
            mask per unit (the sum over consumers before any absolute
            value). Needs ``hvp='exact'``.
        direction (str): ``'ones'`` (default, the paper's "all channels at
            once"): channel c's share of the all-ones mask move, the row sum
            ``[M 1]_c`` with ``M = H_mm - H_mw (H_ww + lam I)^-1 H_wm``,
            which includes every channel's interaction with c. ``'single'``:
            the second-order change of removing c *alone*, ``-g_c + 1/2
            M_cc``, one inverse per alive channel (``C`` times the cost; a
            diagnostic for small models). Needs ``hvp='exact'``.
        cg_tol (float): Conjugate gradient stops once the relative residual
            ``||(H_ww + lam I) u - v|| / ||v||`` is below it (or after
            ``cg_iters``); :attr:`last_residual` reports the one reached.

    Raises:
        NeumannDivergenceError: while scoring, when ``neumann_order > 0``
            and the truncated series' residual is not below 1 (the series
            grows: ``lam`` is below the largest eigenvalue of ``H_ww``).
    """

    example_kwargs = (dict(lam=0.05),
                      dict(lam=0.5, inverse='cg', cg_iters=4,
                           first_order=True, second_order_mm=True,
                           abs_per_batch=False),
                      dict(lam=0.05, hvp='finite_diff'))

    def __init__(self,
                 lam: Optional[float] = None,
                 inverse: str = 'neumann',
                 neumann_order: int = 0,
                 cg_iters: int = 10,
                 hvp: str = 'exact',
                 fd_eps: float = 1e-2,
                 first_order: bool = False,
                 second_order_mm: bool = False,
                 abs_per_batch: bool = True,
                 abs_per_consumer: bool = False,
                 direction: str = 'ones',
                 cg_tol: float = 1e-10) -> None:
        check_choice('inverse', inverse, ('neumann', 'cg'))
        check_choice('hvp', hvp, ('exact', 'finite_diff'))
        if neumann_order < 0 or cg_iters < 1 or fd_eps <= 0 or cg_tol < 0:
            raise ValueError('neumann_order >= 0, cg_iters >= 1, '
                             'fd_eps > 0 and cg_tol >= 0 are required')
        if abs_per_consumer and hvp != 'exact':
            raise ValueError("abs_per_consumer=True needs hvp='exact'")
        if direction not in ('ones', 'single'):
            raise ValueError(f"direction must be 'ones' or 'single', got "
                             f'{direction!r}')
        if direction == 'single' and (hvp != 'exact' or abs_per_consumer):
            raise ValueError("direction='single' needs hvp='exact' and "
                             'abs_per_consumer=False')
        if lam is not None and lam <= 0:
            raise ValueError(f'lam must be > 0, got {lam}')
        super().__init__()
        self.lam = lam
        self.inverse = inverse
        self.neumann_order = neumann_order
        self.cg_iters = cg_iters
        self.hvp = hvp
        # Finite differences are reduced like exact HVPs, but their float32
        # rounding (amplified by 1 / step) is not reproduced across ranks.
        self.distributed_exact = hvp == 'exact'
        self.fd_eps = fd_eps
        self.first_order = first_order
        self.second_order_mm = second_order_mm
        self.abs_per_batch = abs_per_batch
        self.abs_per_consumer = abs_per_consumer
        self.direction = direction
        self.cg_tol = cg_tol
        #: Relative residual ``||(H + lam I) u - v|| / ||v||`` of the last
        #: inverse (``None`` for Neumann order 0, which is exact for H = 0).
        self.last_residual: Optional[float] = None

    # ------------------------------------------------------------------ #
    def bind_optimizer(self, optimizer, ctx: ScoringContext) -> None:
        """``lam=None``: take the weight decay that the optimizer applies to
        the scored conv/linear weights (``ctx.weights``)."""
        if self.lam is not None:
            return
        fix = ('set lam explicitly (importance.lam in a hook config, lam=... '
               'in a criterion spec)')
        try:
            decay = weight_decay_of(optimizer, ctx.weights)
        except ValueError as e:
            raise ValueError(f'IFSOImportance(lam=None): {e}; {fix}') from e
        if not decay:
            raise ValueError(
                'IFSOImportance(lam=None) takes lambda from the optimizer\'s '
                f'weight decay, which is 0: {fix}')
        self.lam = decay
        print_log(
            f'[mmifso] IFSO lambda = weight decay of the scored weights = '
            f'{decay}',
            logger='current',
            level=logging.INFO)

    def batch_scores(self, ctx: ScoringContext, data: dict) -> Vec:
        if self.lam is None:
            raise ValueError(
                'IFSOImportance.lam is not set: give lam=... (e.g. the weight '
                'decay used in training, 1e-4), or call bind_optimizer() with '
                "the training optimizer (pruning hooks do) to take its weight "
                'decay.')
        if self.hvp == 'exact':
            score = self._exact(ctx, data)
        else:
            score = self._finite_diff(ctx, data)
        return [s.abs() if self.abs_per_batch else s for s in score]

    # ------------------------------------------------------------------ #
    def _solve(self, hvp_ww: Callable[[Vec], Vec], v: Vec) -> Vec:
        """``(H_ww + lam I)^-1 v`` by the configured method."""
        lam = self.lam
        if self.inverse == 'neumann':
            term = [x / lam for x in v]
            u = [t.clone() for t in term]
            for _ in range(self.neumann_order):
                term = [-h / lam for h in hvp_ww(term)]
                u = [a + b for a, b in zip(u, term)]
            if self.neumann_order > 0:
                self.last_residual = self._residual(hvp_ww, u, v)
                if not self.last_residual < 1:
                    raise NeumannDivergenceError(
                        f'IFSO: the Neumann series of order '
                        f'{self.neumann_order} for (H_ww + lam I)^-1 does '
                        f'not converge (relative residual '
                        f'{self.last_residual:.3g} >= 1: lam={lam:g} is below '
                        "the largest Hessian eigenvalue); use inverse='cg' "
                        'or neumann_order=0')
            return u
        # Conjugate gradient on the damped system.
        u, _ = conjugate_gradient(hvp_ww, v, lam, self.cg_tol, self.cg_iters)
        self.last_residual = self._residual(hvp_ww, u, v)
        return u

    def _residual(self, hvp_ww, u: Vec, v: Vec) -> float:
        res = [h + self.lam * x - y for h, x, y in zip(hvp_ww(u), u, v)]
        return float(dot(res, res).sqrt() / dot(v, v).sqrt().clamp_min(1e-30))

    def _combine(self, s: Vec, gm: Optional[Vec], hmm: Optional[Vec]) -> Vec:
        score = [-0.5 * x for x in s]
        if gm is not None:
            score = [a - g for a, g in zip(score, gm)]
        if hmm is not None:
            score = [a + 0.5 * h for a, h in zip(score, hmm)]
        return [x.detach() for x in score]

    # ------------------------------------------------------------------ #
    def _exact(self, ctx: ScoringContext, data: dict) -> Vec:
        if self.direction == 'single':
            return self._exact_single(ctx, data)
        if not self.abs_per_consumer:
            return self._exact_terms(ctx, data, ctx.masks, ctx.directions())
        with consumer_gates(ctx) as gates:
            flat = [g for per_unit in gates for g in per_unit]
            flat_dirs = [u.alive.to(g.dtype) for u, per_unit in
                         zip(ctx.units, gates) for g in per_unit]
            terms = self._exact_terms(ctx, data, flat, flat_dirs)
        out, k = [], 0
        for unit, per_unit in zip(ctx.units, gates):
            total = torch.zeros_like(unit.mask)
            for _ in per_unit:
                total = total + terms[k].abs()
                k += 1
            out.append(total)
        return out

    def _exact_terms(self, ctx: ScoringContext, data: dict, gates: Vec,
                     gate_dirs: Vec) -> Vec:
        """Signed scores w.r.t. ``gates``: the shared masks, or one gate per
        consumer (then ``g``, ``H_mm 1`` and ``H_mw u`` are taken in gate
        space, every gate moving along ``gate_dirs``, as with the released
        code's per-member masks; ``H_wm 1`` is the same in both spaces)."""
        weights, masks, dirs = ctx.weights, ctx.masks, ctx.directions()
        shared = gates is masks
        loss = ctx.loss(data)
        wrt = weights + masks + ([] if shared else gates)
        grads = grad_or_zeros(loss, wrt, create_graph=True)
        gw = grads[:len(weights)]
        gm = grads[len(weights):len(weights) + len(masks)]
        gg = gm if shared else grads[len(weights) + len(masks):]
        gm_dir = dot(gm, dirs)
        gg_dir = gm_dir if shared else dot(gg, gate_dirs)
        need_hmm = self.second_order_mm and gg_dir.requires_grad
        # Every product below is linear in the samples and averaged over the
        # ranks (ctx.grad/ctx.hvp) before the nonlinear steps (the inverse,
        # |.|): in a distributed run these are the global batch's H v.
        # H_wm 1 = d/dw (g_m . 1)
        v = ctx.grad(gm_dir, weights, retain_graph=True)

        def hvp_ww(x: Vec) -> Vec:
            return ctx.hvp(gw, weights, x)

        u = self._solve(hvp_ww, v)
        s = ctx.hvp(gw, gates, u, retain_graph=need_hmm)
        hmm = ctx.grad(gg_dir, gates) if need_hmm else (
            [torch.zeros_like(m) for m in gates]
            if self.second_order_mm else None)
        return self._combine(
            s, ctx.reduce(gg) if self.first_order else None, hmm)

    def _exact_single(self, ctx: ScoringContext, data: dict) -> Vec:
        """``-g_c + 1/2 M_cc`` per alive channel (``direction='single'``)."""
        weights, masks = ctx.weights, ctx.masks
        loss = ctx.loss(data)
        grads = grad_or_zeros(loss, weights + masks, create_graph=True)
        gw, gm = grads[:len(weights)], grads[len(weights):]
        g_red = ctx.reduce(gm)
        out = [torch.zeros_like(m) for m in masks]

        def hvp_ww(x: Vec) -> Vec:
            return ctx.hvp(gw, weights, x)

        for i, unit in enumerate(ctx.units):
            for c in unit.alive.nonzero().flatten().tolist():
                gm_c = gm[i][c]
                if not gm_c.requires_grad:
                    continue
                v = ctx.grad(gm_c, weights, retain_graph=True)
                u = self._solve(hvp_ww, v)
                schur = float(ctx.hvp(gw, [masks[i]], u)[0][c])
                score = -0.5 * schur
                if self.first_order:
                    score -= float(g_red[i][c])
                if self.second_order_mm:
                    score += 0.5 * float(ctx.grad(
                        gm_c, [masks[i]], retain_graph=True)[0][c])
                out[i][c] = score
        return out

    # ------------------------------------------------------------------ #
    def _finite_diff(self, ctx: ScoringContext, data: dict) -> Vec:
        weights, masks, dirs = ctx.weights, ctx.masks, ctx.directions()
        eps = self.fd_eps

        def grads_at(w_shift: Optional[Vec] = None,
                     m_shift: Optional[Vec] = None,
                     wrt: str = 'w') -> Vec:
            saved_w = [w.detach().clone() for w in weights]
            saved_m = [m.detach().clone() for m in masks]
            with torch.no_grad():
                if w_shift is not None:
                    for w, d in zip(weights, w_shift):
                        w.add_(d)
                if m_shift is not None:
                    for m, d in zip(masks, m_shift):
                        m.add_(d)
            try:
                loss = ctx.loss(data)
                return [
                    g.detach() for g in grad_or_zeros(
                        loss, weights if wrt == 'w' else masks)
                ]
            finally:
                with torch.no_grad():
                    for w, s in zip(weights, saved_w):
                        w.copy_(s)
                    for m, s in zip(masks, saved_m):
                        m.copy_(s)

        def central(vec: Vec, along: str, wrt: str) -> Vec:
            norm = float(dot(vec, vec).sqrt())
            if norm == 0:
                return [
                    torch.zeros_like(x) for x in (weights if wrt == 'w'
                                                  else masks)
                ]
            r = eps / norm
            plus = [r * x for x in vec]
            minus = [-r * x for x in vec]
            if along == 'w':
                gp, gn = grads_at(w_shift=plus, wrt=wrt), grads_at(
                    w_shift=minus, wrt=wrt)
            else:
                gp, gn = grads_at(m_shift=plus, wrt=wrt), grads_at(
                    m_shift=minus, wrt=wrt)
            # H v of the global batch (vec, hence r, is the same on all ranks).
            return ctx.reduce([(a - b) / (2 * r) for a, b in zip(gp, gn)])

        v = central(dirs, along='m', wrt='w')  # H_wm 1
        u = self._solve(lambda x: central(x, along='w', wrt='w'), v)
        s = central(u, along='w', wrt='m')  # H_mw u
        gm = ctx.reduce(grads_at(wrt='m')) if self.first_order else None
        hmm = central(dirs, along='m', wrt='m') \
            if self.second_order_mm else None
        return self._combine(s, gm, hmm)
