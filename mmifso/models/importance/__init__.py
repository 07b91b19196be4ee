from .base import BaseImportance, ScoringContext
from .ifso import IFSOImportance
from .magnitude import MagnitudeImportance, RandomImportance

__all__ = [
    'BaseImportance', 'ScoringContext', 'IFSOImportance',
    'MagnitudeImportance', 'RandomImportance'
]
