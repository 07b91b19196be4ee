"""Linear algebra on lists of tensors (one tensor per parameter)."""
from dataclasses import dataclass
from typing import Callable, Iterable, List

import torch

Vec = List[torch.Tensor]


def dot(xs: Iterable[torch.Tensor], ys: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of elementwise products over lists of tensors."""
    return sum((x * y).sum() for x, y in zip(xs, ys))


@dataclass
class CGInfo:
    """How a conjugate-gradient solve ended.

    Attributes:
        iterations (int): Matrix-vector products taken.
        residual_norm (float): ``||b - A x||_2`` of the recurrence (the
            true residual can differ by rounding).
        negative_curvature (bool): Stopped at a direction ``p`` with
            ``p^T A p <= 0`` (``A`` is not positive definite there).
    """
    iterations: int
    residual_norm: float
    negative_curvature: bool


def conjugate_gradient(matvec: Callable[[Vec], Vec], b: Vec, damping: float,
                       rel_tol: float, max_iter: int) -> 'tuple[Vec, CGInfo]':
    """Solve ``(A + damping I) x = b`` by conjugate gradient from ``x = 0``.

    Stops when ``||r|| < rel_tol * ||b||``, after ``max_iter`` products, or
    at a direction of non-positive curvature (keeping the iterate reached,
    which is then still a descent direction of the quadratic model).

    Args:
        matvec (Callable[[Vec], Vec]): ``v -> A v`` (e.g. a Hessian-vector
            product), shapes of ``b``.
        b (Vec): Right-hand side.
        damping (float): Added to the diagonal.
        rel_tol (float): Relative residual tolerance.
        max_iter (int): Most matrix-vector products.

    Returns:
        tuple[Vec, CGInfo]: ``x`` and how the solve ended.
    """
    x = [torch.zeros_like(v) for v in b]
    r = [v.clone() for v in b]
    p = [v.clone() for v in b]
    rr = dot(r, r)
    stop = max(rel_tol * float(rr.sqrt()), 1e-30)
    it, negative = 0, False
    while it < max_iter and float(rr.sqrt()) >= stop:
        ap = [h + damping * v for h, v in zip(matvec(p), p)]
        it += 1
        pap = dot(p, ap)
        if pap <= 0:
            negative = True
            break
        alpha = rr / pap
        x = [a + alpha * d for a, d in zip(x, p)]
        r = [a - alpha * d for a, d in zip(r, ap)]
        rr_new = dot(r, r)
        p = [a + (rr_new / rr) * d for a, d in zip(r, p)]
        rr = rr_new
    return x, CGInfo(it, float(rr.sqrt()), negative)
