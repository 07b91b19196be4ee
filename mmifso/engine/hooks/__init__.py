from .checkpoint_hook import AtomicCheckpointHook
from .pruning_hook import PruningHook
from .resume_hook import (ExactResumeHook, get_rng_state, preserved_rng_state,
                          set_rng_state)
from .schedules import (GradualPruningHook, IterativePruningHook,
                        OneShotPruningHook, ScheduledPruningHook)

__all__ = [
    'AtomicCheckpointHook', 'PruningHook', 'ScheduledPruningHook',
    'OneShotPruningHook', 'IterativePruningHook', 'GradualPruningHook',
    'ExactResumeHook', 'get_rng_state', 'set_rng_state', 'preserved_rng_state'
]
