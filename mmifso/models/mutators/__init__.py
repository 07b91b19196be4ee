from .channel_mutator import (ChannelMutator, InputGate, NoPrunableUnitsError,
                              compose_gate, strip_gates)
from .export import export_pruned_model
from .selection import ChannelSelector, normalised_scores, select_channels

__all__ = [
    'ChannelMutator', 'InputGate', 'NoPrunableUnitsError', 'compose_gate',
    'strip_gates', 'export_pruned_model', 'ChannelSelector',
    'normalised_scores', 'select_channels'
]
