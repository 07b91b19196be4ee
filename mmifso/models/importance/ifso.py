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
from typing import Callable, List, Optional

import torch

from mmifso.registry import TASK_UTILS
from .base import BaseImportance, ScoringContext, dot, grad_or_zeros

Vec = List[torch.Tensor]


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
    """

    def __init__(self,
                 lam: Optional[float] = None,
                 inverse: str = 'neumann',
                 neumann_order: int = 0,
                 cg_iters: int = 10,
                 hvp: str = 'exact',
                 fd_eps: float = 1e-2,
                 first_order: bool = False,
                 second_order_mm: bool = False,
                 abs_per_batch: bool = True) -> None:
        if inverse not in ('neumann', 'cg'):
            raise ValueError(f"inverse must be 'neumann' or 'cg', got "
                             f'{inverse!r}')
        if hvp not in ('exact', 'finite_diff'):
            raise ValueError(f"hvp must be 'exact' or 'finite_diff', got "
                             f'{hvp!r}')
        if neumann_order < 0 or cg_iters < 1 or fd_eps <= 0:
            raise ValueError('neumann_order >= 0, cg_iters >= 1 and '
                             'fd_eps > 0 are required')
        if lam is not None and lam <= 0:
            raise ValueError(f'lam must be > 0, got {lam}')
        super().__init__()
        self.lam = lam
        self.inverse = inverse
        self.neumann_order = neumann_order
        self.cg_iters = cg_iters
        self.hvp = hvp
        self.fd_eps = fd_eps
        self.first_order = first_order
        self.second_order_mm = second_order_mm
        self.abs_per_batch = abs_per_batch
        #: Relative residual ``||(H + lam I) u - v|| / ||v||`` of the last
        #: inverse (``None`` for Neumann order 0, which is exact for H = 0).
        self.last_residual: Optional[float] = None

    # ------------------------------------------------------------------ #
    def batch_scores(self, ctx: ScoringContext, data: dict) -> Vec:
        if self.lam is None:
            raise ValueError(
                'IFSOImportance.lam is not set: give lam=... (e.g. the weight '
                'decay used in training, 1e-4) or run it from a pruning hook, '
                "which takes the optimizer's weight decay.")
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
            return u
        # Conjugate gradient on the damped system.
        u = [torch.zeros_like(x) for x in v]
        r = [x.clone() for x in v]
        p = [x.clone() for x in v]
        rr = dot(r, r)
        for _ in range(self.cg_iters):
            ap = [h + lam * x for h, x in zip(hvp_ww(p), p)]
            pap = dot(p, ap)
            if pap <= 0:  # negative curvature: stop with the current iterate
                break
            alpha = rr / pap
            u = [a + alpha * b for a, b in zip(u, p)]
            r = [a - alpha * b for a, b in zip(r, ap)]
            rr_new = dot(r, r)
            if rr_new.sqrt() < 1e-10:
                break
            p = [a + (rr_new / rr) * b for a, b in zip(r, p)]
            rr = rr_new
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
        weights, masks, dirs = ctx.weights, ctx.masks, ctx.directions()
        loss = ctx.loss(data)
        grads = grad_or_zeros(loss, weights + masks, create_graph=True)
        gw, gm = grads[:len(weights)], grads[len(weights):]
        gm_dir = dot(gm, dirs)
        need_hmm = self.second_order_mm and gm_dir.requires_grad
        # Every product below is linear in the samples and averaged over the
        # ranks (ctx.grad/ctx.hvp) before the nonlinear steps (the inverse,
        # |.|): in a distributed run these are the global batch's H v.
        # H_wm 1 = d/dw (g_m . 1)
        v = ctx.grad(gm_dir, weights, retain_graph=True)

        def hvp_ww(x: Vec) -> Vec:
            return ctx.hvp(gw, weights, x)

        u = self._solve(hvp_ww, v)
        s = ctx.hvp(gw, masks, u, retain_graph=need_hmm)
        hmm = ctx.grad(gm_dir, masks) if need_hmm else (
            [torch.zeros_like(m) for m in masks]
            if self.second_order_mm else None)
        return self._combine(
            s, ctx.reduce(gm) if self.first_order else None, hmm)

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
