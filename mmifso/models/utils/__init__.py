from .sync_bn import DifferentiableSyncBatchNorm, make_sync_bn_differentiable

__all__ = ['DifferentiableSyncBatchNorm', 'make_sync_bn_differentiable']
