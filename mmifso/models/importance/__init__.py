from .base import (BaseImportance, ScoringContext, registered_criteria,
                   weight_decay_of)
from .gradflow import GradFlowImportance
from .group_fisher import GroupFisherImportance
from .ifso import IFSOImportance
from .infcp import InfCPImportance
from .magnitude import (BNScaleImportance, MagnitudeImportance,
                        RandomImportance)
from .param_slices import ChannelSlices, channel_slices
from .sosp import SOSPHImportance, gauss_newton_product
from .taylor import TaylorImportance
from .tp_importance import TorchPruningImportance
from .woodfisher import WoodFisherImportance

__all__ = [
    'BaseImportance', 'ScoringContext', 'IFSOImportance',
    'MagnitudeImportance', 'RandomImportance', 'BNScaleImportance',
    'GroupFisherImportance', 'TaylorImportance', 'GradFlowImportance',
    'SOSPHImportance', 'WoodFisherImportance', 'InfCPImportance',
    'ChannelSlices', 'channel_slices', 'gauss_newton_product',
    'TorchPruningImportance', 'registered_criteria', 'weight_decay_of'
]
