from .export import export_checkpoint
from .pruning import (analyse_model, export_model, prune_to_target,
                      score_channels)

__all__ = [
    'export_checkpoint', 'analyse_model', 'export_model', 'prune_to_target',
    'score_channels'
]
