from .channel_mutator import (ChannelMutator, InputGate, NoPrunableUnitsError,
                              strip_gates)
from .selection import normalised_scores, select_channels

__all__ = [
    'ChannelMutator', 'InputGate', 'NoPrunableUnitsError', 'strip_gates',
    'normalised_scores', 'select_channels'
]
