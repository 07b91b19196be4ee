from .channel_analyzer import (AnalysisResult, ChannelAnalyzer, ChannelSite,
                               FrozenUnitError, SkippedUnit, UnitSpec)
from .demo_input import DemoInput, DemoInputError
from .resource import count_params, count_resources, record_layers

__all__ = [
    'AnalysisResult', 'ChannelAnalyzer', 'ChannelSite', 'FrozenUnitError',
    'SkippedUnit', 'UnitSpec', 'DemoInput', 'DemoInputError', 'count_params',
    'count_resources', 'record_layers'
]
