"""Comparisons of (nested) model outputs: tensors in lists, tuples and
dicts, as mmpretrain and mmdet models return them in ``tensor`` mode."""
import torch


def max_abs_value(a) -> float:
    """Largest absolute value in a (nested) tensor output."""
    if isinstance(a, torch.Tensor):
        return float(a.abs().max()) if a.numel() else 0.0
    if isinstance(a, (list, tuple)):
        return max([max_abs_value(x) for x in a] or [0.0])
    if isinstance(a, dict):
        return max([max_abs_value(x) for x in a.values()] or [0.0])
    return 0.0


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two (nested) tensor outputs
    (``inf`` where their shapes or lengths differ)."""
    if isinstance(a, torch.Tensor):
        if a.shape != b.shape:
            return float('inf')
        return float((a - b).abs().max()) if a.numel() else 0.0
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return float('inf')
        return max([max_abs_diff(x, y) for x, y in zip(a, b)] or [0.0])
    if isinstance(a, dict):
        return max([max_abs_diff(a[k], b[k]) for k in a] or [0.0])
    return 0.0


def outputs_agree(diff: float, scale: float, atol: float = 1e-4) -> bool:
    """Whether two outputs agree: their largest absolute difference
    ``diff`` is within ``atol``, relative to the largest absolute output
    ``scale`` when that exceeds 1 (float32 round-off grows with it)."""
    return diff <= atol * max(1.0, scale)
