"""The pruning step: one owner for every schedule, API and tool."""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from mmengine.dist import broadcast

from ..importance import BaseImportance, ScoringContext
from ..mutators import ChannelSelector


@dataclass
class PruneStepResult:
    """What a pruning step did.

    Attributes:
        removed (list[tuple[int, int]]): ``(unit_index, channel)`` pairs.
        nonfinite_units (list[str]): Units whose scores held NaN or Inf; if
            any, the step was skipped and nothing was pruned.
        scores (list[Tensor]): The raw scores the step selected on.
    """
    removed: List[Tuple[int, int]] = field(default_factory=list)
    nonfinite_units: List[str] = field(default_factory=list)
    scores: List[torch.Tensor] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        """The scores were not finite, so nothing was pruned."""
        return bool(self.nonfinite_units)


def prune_step(ctx: ScoringContext,
               importance: BaseImportance,
               selector: ChannelSelector,
               scores: List[torch.Tensor],
               num_channels: Optional[int] = None,
               target_flops: Optional[float] = None,
               target_latency: Optional[float] = None) -> PruneStepResult:
    """Remove the globally least important channels, once.

    1. Scores with NaN/Inf skip the step (nothing is pruned on them).
    2. ``selector`` removes up to ``num_channels`` channels (None: as many
       as the target needs).
    3. The masks of rank 0 are broadcast, so every rank holds the same
       model whatever the float ties (the scores are all-reduced already).
    4. ``importance.after_prune`` runs (e.g. WoodFisher's OBS update); if
       the criterion :attr:`~BaseImportance.updates_weights`, the parameters
       of rank 0 are broadcast.

    Args:
        ctx (ScoringContext): The gated model and its mutator.
        importance (BaseImportance): The criterion that produced ``scores``.
        selector (ChannelSelector): Ranking and budget knobs.
        scores (list[Tensor]): Per unit, shape ``(num_channels, )``.
        num_channels (int, optional): At most this many channels.
        target_flops (float, optional): FLOPs ratio to stop at.
        target_latency (float, optional): Predicted latency ratio to stop
            at (the selector's latency table); not with ``target_flops``.

    Returns:
        PruneStepResult: Removed channels, or the units with bad scores.
    """
    bad = [
        u.name for u, s in zip(ctx.mutator.units, scores)
        if not bool(torch.isfinite(s).all())
    ]
    if bad:
        return PruneStepResult(nonfinite_units=bad, scores=scores)
    removed = selector.select(ctx.mutator, scores, num_channels, target_flops,
                              target_latency)
    for unit in ctx.mutator.units:
        broadcast(unit.mask, src=0)
    if removed:
        importance.after_prune(ctx, removed)
        if importance.updates_weights:
            for p in ctx.model.parameters():
                broadcast(p.data, src=0)  # keep rank 0's update
    return PruneStepResult(removed=removed, scores=scores)
