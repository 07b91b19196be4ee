from .pruning_algorithm import PrunedModel, PruningAlgorithm

__all__ = ['PrunedModel', 'PruningAlgorithm']
