from .activations import TwiceDifferentiableHardsigmoid
from .modes import eval_mode, forward_with_pre_hooks, preserved_modes
from .sync_bn import DifferentiableSyncBatchNorm, make_sync_bn_differentiable

__all__ = [
    'DifferentiableSyncBatchNorm', 'make_sync_bn_differentiable', 'eval_mode',
    'preserved_modes', 'forward_with_pre_hooks',
    'TwiceDifferentiableHardsigmoid'
]
