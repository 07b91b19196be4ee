from .prune_step import PruneStepResult, prune_step
from .pruning_algorithm import PrunedModel, PruningAlgorithm

__all__ = ['PrunedModel', 'PruningAlgorithm', 'PruneStepResult', 'prune_step']
