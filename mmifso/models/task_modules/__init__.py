from .channel_analyzer import ChannelAnalyzer, FrozenUnitError
from .channel_ops import ChannelCutError
from .channel_units import AnalysisResult, ChannelSite, SkippedUnit, UnitSpec
from .demo_input import DemoInput, DemoInputError, DetDemoInput
from .groups import GroupDivergedError
from .latency import (LatencyTable, LatencyTableMismatch, TensorModeWrapper,
                      build_latency_table, latency_key)
from .resource import count_params, count_resources, record_layers
from .structure_pruner import apply_structure, fix_channel_attributes
from .tp_patches import GroupNormBlockPruner

__all__ = [
    'AnalysisResult', 'ChannelAnalyzer', 'ChannelCutError', 'ChannelSite',
    'FrozenUnitError', 'GroupNormBlockPruner', 'GroupDivergedError',
    'SkippedUnit', 'UnitSpec',
    'DemoInput', 'DemoInputError', 'DetDemoInput', 'count_params',
    'count_resources', 'record_layers', 'apply_structure',
    'fix_channel_attributes', 'LatencyTable', 'LatencyTableMismatch',
    'TensorModeWrapper', 'build_latency_table', 'latency_key'
]
