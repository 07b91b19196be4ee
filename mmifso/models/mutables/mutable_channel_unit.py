"""A mutable channel unit: the mask of one coupled channel group."""
from typing import List, Optional

import torch
from mmengine.model import BaseModule

from mmifso.registry import MODELS
from ..task_modules.channel_analyzer import ChannelSite, UnitSpec


@MODELS.register_module()
class MutableChannelUnit(BaseModule):
    """Holds the channel mask of one coupled group.

    The mask is a persistent buffer, so it is saved in and restored from
    checkpoints. A value of 1 keeps a channel, 0 removes it. The mutator's
    gates multiply the inputs of every consumer by it, so a removed channel
    contributes nothing to the model's output.

    Args:
        name (str): Name of the unit (its root producer).
        num_channels (int): Number of coupled channels.
        sites (list[ChannelSite]): Where the channels live.
        min_channels (int): Channels that must always remain.
    """

    def __init__(self,
                 name: str,
                 num_channels: int,
                 sites: List[ChannelSite],
                 min_channels: int = 1) -> None:
        super().__init__()
        self.name = name
        self.num_channels = num_channels
        self.sites = sites
        self.min_channels = min_channels
        self.register_buffer('mask', torch.ones(num_channels))
        #: Optional ``(N, num_channels)`` multiplier of the mask, one row per
        #: sample; set by criteria that need per-sample mask gradients.
        self.sample_gate: Optional[torch.Tensor] = None

    @classmethod
    def from_spec(cls, spec: UnitSpec, min_channels: int = 1):
        return cls(spec.name, spec.num_channels, spec.sites, min_channels)

    @property
    def effective_mask(self) -> torch.Tensor:
        """The gate applied in forward: ``mask`` or ``mask * sample_gate``."""
        if self.sample_gate is None:
            return self.mask
        return self.mask * self.sample_gate

    @property
    def alive(self) -> torch.Tensor:
        """Bool tensor (num_channels, ): channels still present."""
        return self.mask > 0

    @property
    def num_alive(self) -> int:
        return int(self.alive.sum())

    @property
    def num_prunable(self) -> int:
        """Channels that can still be removed above ``min_channels``."""
        return max(self.num_alive - self.min_channels, 0)

    @property
    def current_choice(self) -> List[int]:
        """Indices of the kept channels, sorted."""
        return self.alive.nonzero().flatten().tolist()

    @current_choice.setter
    def current_choice(self, kept: List[int]) -> None:
        kept = sorted(set(int(i) for i in kept))
        if kept and (kept[0] < 0 or kept[-1] >= self.num_channels):
            raise ValueError(
                f'unit {self.name}: channel index out of range '
                f'[0, {self.num_channels}) in {kept}')
        if len(kept) < self.min_channels:
            raise ValueError(
                f'unit {self.name}: {len(kept)} channels kept, fewer than '
                f'min_channels={self.min_channels}')
        mask = torch.zeros_like(self.mask)
        mask[kept] = 1
        self.mask.copy_(mask)

    def prune(self, channels: List[int]) -> None:
        """Remove ``channels`` (indices into this unit)."""
        if self.num_alive - len(set(channels)) < self.min_channels:
            raise ValueError(
                f'unit {self.name}: pruning {len(channels)} channels would '
                f'leave fewer than min_channels={self.min_channels}')
        self.mask[list(channels)] = 0

    def extra_repr(self) -> str:
        return f'{self.name}: {self.num_alive}/{self.num_channels}'
