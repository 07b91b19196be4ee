"""A mutable channel unit: the mask of one coupled channel group."""
from typing import List, Optional

import torch
from mmengine.model import BaseModule

from mmifso.registry import MODELS
from ..task_modules.channel_units import ChannelSite, UnitSpec


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
        blocks (list[list[int]], optional): Channels that can only be removed
            together (GroupNorm groups, positions of grouped convolutions), a
            partition of ``range(num_channels)``. ``None`` (default): every
            channel is its own block.
    """

    def __init__(self,
                 name: str,
                 num_channels: int,
                 sites: List[ChannelSite],
                 min_channels: int = 1,
                 blocks: Optional[List[List[int]]] = None) -> None:
        super().__init__()
        self.name = name
        self.num_channels = num_channels
        self.sites = sites
        self.min_channels = min_channels
        if blocks is not None:
            flat = sorted(int(i) for b in blocks for i in b)
            if flat != list(range(num_channels)) or any(not b
                                                       for b in blocks):
                raise ValueError(f'unit {name}: blocks must partition the '
                                 f'{num_channels} channels')
            blocks = [sorted(int(i) for i in b) for b in blocks]
            if all(len(b) == 1 for b in blocks):
                blocks = None
        #: Partition of the channels into blocks removed together, or None.
        self.blocks = blocks
        ids = torch.arange(num_channels)
        for k, b in enumerate(blocks or []):
            ids[b] = k
        #: ``block_ids[c]``: the block of channel ``c`` (``c`` without
        #: blocks); not a buffer, it follows from the model's structure.
        self.block_ids = ids if blocks is not None else None
        self.register_buffer('mask', torch.ones(num_channels))
        #: Optional ``(N, num_channels)`` multiplier of the mask, one row per
        #: sample; set by criteria that need per-sample mask gradients.
        self.sample_gate: Optional[torch.Tensor] = None

    @classmethod
    def from_spec(cls, spec: UnitSpec, min_channels: int = 1):
        return cls(spec.name, spec.num_channels, spec.sites, min_channels,
                   getattr(spec, 'blocks', None))

    @property
    def block_size(self) -> int:
        """Channels per block when all blocks have one size (1 without
        blocks), else 0."""
        if self.blocks is None:
            return 1
        sizes = {len(b) for b in self.blocks}
        return sizes.pop() if len(sizes) == 1 else 0

    def block_of(self, channel: int) -> List[int]:
        """The channels removed together with ``channel`` (itself included)."""
        if self.blocks is None:
            return [int(channel)]
        return self.blocks[int(self.block_ids[int(channel)])]

    def _check_blocks(self, channels, what: str) -> None:
        if self.blocks is None:
            return
        chosen = set(int(i) for i in channels)
        partial = [b for b in self.blocks
                   if chosen & set(b) and not set(b) <= chosen]
        if partial:
            raise ValueError(
                f'unit {self.name}: {what} must consist of whole blocks '
                f'(channels tied by GroupNorm groups or grouped '
                f'convolutions); partial blocks {partial[:3]}')

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
        self._check_blocks(kept, 'the kept channels')
        mask = torch.zeros_like(self.mask)
        mask[kept] = 1
        self.mask.copy_(mask)

    def prune(self, channels: List[int]) -> None:
        """Remove ``channels`` (indices into this unit; whole blocks)."""
        self._check_blocks(channels, 'the removed channels')
        if self.num_alive - len(set(channels)) < self.min_channels:
            raise ValueError(
                f'unit {self.name}: pruning {len(channels)} channels would '
                f'leave fewer than min_channels={self.min_channels}')
        self.mask[list(channels)] = 0

    def extra_repr(self) -> str:
        blocks = '' if self.blocks is None else (
            f', blocks of {self.block_size}' if self.block_size else
            f', {len(self.blocks)} blocks')
        return f'{self.name}: {self.num_alive}/{self.num_channels}{blocks}'
