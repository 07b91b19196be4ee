from .modes import eval_mode, preserved_modes
from .sync_bn import DifferentiableSyncBatchNorm, make_sync_bn_differentiable

__all__ = [
    'DifferentiableSyncBatchNorm', 'make_sync_bn_differentiable', 'eval_mode',
    'preserved_modes'
]
