from .activations import TwiceDifferentiableHardsigmoid
from .linalg import CGInfo, conjugate_gradient, dot
from .modes import (eval_mode, forward_with_pre_hooks, preserved_modes,
                    removing_hooks)
from .outputs import max_abs_diff, max_abs_value, outputs_agree
from .random_norms import randomise_norm_parameters
from .sync_bn import DifferentiableSyncBatchNorm, make_sync_bn_differentiable

__all__ = [
    'DifferentiableSyncBatchNorm', 'make_sync_bn_differentiable', 'eval_mode',
    'preserved_modes', 'forward_with_pre_hooks', 'removing_hooks',
    'TwiceDifferentiableHardsigmoid', 'CGInfo', 'conjugate_gradient', 'dot',
    'max_abs_diff', 'max_abs_value', 'outputs_agree',
    'randomise_norm_parameters'
]
