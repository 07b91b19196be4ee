"""Global channel selection under a FLOPs budget."""
from typing import List, Optional, Tuple

import torch

from .channel_mutator import ChannelMutator


def normalised_scores(mutator: ChannelMutator,
                      scores: List[torch.Tensor],
                      cost: str = 'acts',
                      cost_power: float = 0.5) -> List[torch.Tensor]:
    """``score / cost ** p`` per channel; removed channels get ``+inf``.

    Args:
        mutator (ChannelMutator): Gives the units and their costs.
        scores (list[Tensor]): Per unit, shape ``(num_channels, )``; lower
            means less important.
        cost (str): ``'acts'``, ``'flops'`` or ``'none'``.
        cost_power (float): ``p``; 0.5 in IFSO, 1 in Group Fisher, 0 for none.

    Returns:
        list[Tensor]: Normalised scores, float64 on the CPU.
    """
    if len(scores) != len(mutator.units):
        raise ValueError(f'{len(scores)} score tensors for '
                         f'{len(mutator.units)} units')
    costs = mutator.channel_costs(cost) if cost_power else None
    out = []
    for i, (unit, s) in enumerate(zip(mutator.units, scores)):
        s = s.detach().double().cpu().clone()
        if s.shape != (unit.num_channels, ):
            raise ValueError(f'unit {unit.name}: scores of shape '
                             f'{tuple(s.shape)}, expected '
                             f'({unit.num_channels},)')
        if costs is not None:
            s = s / costs[i].double()**cost_power
        s[~unit.alive.cpu()] = float('inf')
        out.append(s)
    return out


def select_channels(mutator: ChannelMutator,
                    scores: List[torch.Tensor],
                    num_channels: int,
                    cost: str = 'acts',
                    cost_power: float = 0.5,
                    target_flops: Optional[float] = None
                    ) -> List[Tuple[int, int]]:
    """Prune the globally least important channels.

    Channels are taken in ascending order of normalised score; a unit is
    never brought below its ``min_channels``; with ``target_flops`` the
    selection stops as soon as the FLOPs ratio reaches the target.

    Units with blocks (``unit.blocks``: channels tied by GroupNorm groups or
    grouped convolutions) lose whole blocks: every channel of a block is
    ranked by the block's mean normalised score and taking one takes the
    block, which may remove more than ``num_channels`` channels in the last
    step (a block is never split).

    Args:
        mutator (ChannelMutator): Its masks are updated in place.
        scores (list[Tensor]): Raw per-unit scores (lower = prune first).
        num_channels (int): At most this many channels are removed.
        cost (str): Cost used for normalisation.
        cost_power (float): Exponent ``p`` of the cost.
        target_flops (float, optional): FLOPs ratio in (0, 1) to stop at.

    Returns:
        list[tuple[int, int]]: ``(unit_index, channel)`` pairs removed.
    """
    if any(not torch.isfinite(s.detach()).all() for s in scores):
        raise FloatingPointError('scores contain NaN or Inf; nothing pruned')
    norm = normalised_scores(mutator, scores, cost, cost_power)
    for i, unit in enumerate(mutator.units):
        if getattr(unit, 'blocks', None) is not None:
            s = norm[i]
            ids = unit.block_ids
            total = torch.zeros(len(unit.blocks), dtype=s.dtype).index_add_(
                0, ids, s)
            count = torch.zeros(len(unit.blocks), dtype=s.dtype).index_add_(
                0, ids, torch.ones_like(s))
            norm[i] = (total / count)[ids]  # +inf stays +inf for dead blocks
    flat = torch.cat(norm)
    owners = torch.cat([
        torch.full((len(s), ), i, dtype=torch.long)
        for i, s in enumerate(norm)
    ])
    offsets = [0]
    for s in norm[:-1]:
        offsets.append(offsets[-1] + len(s))
    removed: List[Tuple[int, int]] = []
    for pos in torch.argsort(flat, stable=True).tolist():
        if len(removed) >= num_channels or flat[pos] == float('inf'):
            break
        if target_flops is not None and \
                mutator.resources()['flops_ratio'] <= target_flops:
            break
        i = int(owners[pos])
        unit = mutator.units[i]
        channel = pos - offsets[i]
        if getattr(unit, 'blocks', None) is None:
            if unit.num_prunable <= 0:
                continue
            unit.prune([channel])
            removed.append((i, channel))
            continue
        if not bool(unit.alive[channel]):
            continue  # removed with its block earlier in this call
        block = unit.block_of(channel)
        if unit.num_alive - len(block) < unit.min_channels:
            continue
        unit.prune(block)
        removed.extend((i, c) for c in block)
    return removed
