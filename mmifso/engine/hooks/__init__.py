from .pruning_hook import PruningHook
from .schedules import (GradualPruningHook, IterativePruningHook,
                        OneShotPruningHook, ScheduledPruningHook)

__all__ = [
    'PruningHook', 'ScheduledPruningHook', 'OneShotPruningHook',
    'IterativePruningHook', 'GradualPruningHook'
]
