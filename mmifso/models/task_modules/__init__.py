from .channel_analyzer import (AnalysisResult, ChannelAnalyzer, ChannelSite,
                               FrozenUnitError, GroupNormBlockPruner,
                               SkippedUnit, UnitSpec)
from .demo_input import DemoInput, DemoInputError, DetDemoInput
from .groups import GroupDivergedError
from .resource import count_params, count_resources, record_layers

__all__ = [
    'AnalysisResult', 'ChannelAnalyzer', 'ChannelSite', 'FrozenUnitError',
    'GroupNormBlockPruner', 'GroupDivergedError', 'SkippedUnit', 'UnitSpec',
    'DemoInput', 'DemoInputError', 'DetDemoInput', 'count_params',
    'count_resources', 'record_layers'
]
