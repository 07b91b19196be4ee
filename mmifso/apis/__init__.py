from .checks import (CheckpointConfigMismatch, check_checkpoint_matches_config,
                     checkpoint_kind, model_kind)
from .export import export_checkpoint
from .pruning import (analyse_model, export_model, prune_to_target,
                      score_channels)

__all__ = [
    'CheckpointConfigMismatch', 'check_checkpoint_matches_config',
    'checkpoint_kind', 'model_kind', 'export_checkpoint', 'analyse_model',
    'export_model', 'prune_to_target',
    'score_channels'
]
