from .channel_mutator import (WEIGHT_GATE_TYPES, ChannelMutator, InputGate,
                              NoPrunableUnitsError, NormGate, WeightGate,
                              WeightRestore, compose_gate, strip_gates)
from .export import export_pruned_model
from .latency import (build_model_latency_table, check_latency_table,
                      latency_ratio, measure_structures_ms,
                      predict_latency_ms)
from .selection import ChannelSelector, normalised_scores, select_channels

__all__ = [
    'ChannelMutator', 'InputGate', 'NormGate', 'WeightGate', 'WeightRestore',
    'WEIGHT_GATE_TYPES', 'NoPrunableUnitsError', 'compose_gate',
    'strip_gates', 'export_pruned_model', 'ChannelSelector',
    'normalised_scores', 'select_channels', 'build_model_latency_table',
    'check_latency_table', 'latency_ratio', 'measure_structures_ms',
    'predict_latency_ms'
]
