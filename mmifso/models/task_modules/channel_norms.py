"""LayerNorm over the channel dim and per-channel parameters, made prunable.

A LayerNorm over the channels (``nn.LayerNorm(C)`` on channels-last tensors,
mmpretrain's ``LayerNorm2d`` in either ``data_format``) computes its mean and
variance from every channel, so multiplying its consumers' inputs by a mask
does not reproduce channel removal: the removed channels still move the
statistics of the others. While a unit has channels masked, the mutator
therefore recomputes such a norm with statistics weighted by the gate ``g``
(:func:`masked_layer_norm`)::

    mean = sum_c g_c x_c / sum_c g_c
    var = sum_c g_c (x_c - mean) ** 2 / sum_c g_c

For a 0/1 gate these are the statistics of the alive channels only, which is
what the exported model (whose norm has lost the removed channels) computes;
the output of the removed channels is gated by every consumer as usual. The
weighted form is differentiable in ``g``, so ``d loss / d mask`` includes the
effect of a channel on the statistics of the others.

Which dim is the channel dim is read from each call (:func:`norm_channel_dim`)
and checked once during the analysis (:func:`check_layer_norm`): a norm whose
recomputation does not equal its own output stays unprunable.

Unwrapped ``nn.Parameter`` s with a single non-singleton dim that only enter
element-wise ops (ConvNeXt's layer scale ``gamma``: ``x * gamma.view(1, -1,
1, 1)``) pass channels through unmixed, like a BatchNorm: the masked forward
needs no gate for them and the export slices them
(:func:`per_channel_parameter_reason`).
"""
import inspect
from typing import Optional

import torch
import torch.nn as nn
from torch_pruning import ops as tp_ops

#: Element-wise binary ops a per-channel parameter may enter.
_ELEMENTWISE_FNS = ('MulBackward', 'AddBackward', 'SubBackward', 'DivBackward')
#: Shape ops between a parameter and its element-wise op.
_VIEW_FNS = ('ViewBackward', 'ReshapeAliasBackward', 'UnsqueezeBackward',
             'ExpandBackward', 'UnsafeViewBackward')


def norm_channel_dim(module: nn.Module, args: tuple,
                     kwargs: dict) -> Optional[int]:
    """The dim of ``args[0]`` a LayerNorm normalises, or ``None``.

    ``nn.LayerNorm(C)`` normalises the last dim. A subclass whose forward
    takes a ``data_format`` (mmpretrain's ``LayerNorm2d``: ``'channel_first'``
    by default, ``'channel_last'``) normalises dim 1 or the last dim. Only
    norms over one dim qualify.

    Args:
        module (nn.Module): The norm.
        args (tuple): Positional arguments of the call.
        kwargs (dict): Keyword arguments of the call.

    Returns:
        int, optional: The channel dim (``1`` or ``-1``).
    """
    if not isinstance(module, nn.LayerNorm) or \
            len(module.normalized_shape) != 1 or not args or \
            not isinstance(args[0], torch.Tensor):
        return None
    if type(module) is nn.LayerNorm:
        return -1
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return None
    if 'data_format' not in params:
        return -1  # checked by check_layer_norm
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    fmt = str(bound.arguments.get('data_format'))
    if 'first' in fmt:
        return 1
    if 'last' in fmt:
        return -1
    return None


def masked_layer_norm(module: nn.LayerNorm, x: torch.Tensor, dim: int,
                      gate: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``x`` over ``dim`` with statistics weighted by ``gate``.

    Args:
        module (nn.LayerNorm): Gives ``weight``, ``bias`` and ``eps``.
        x (Tensor): The norm's input.
        dim (int): The channel dim of ``x``.
        gate (Tensor): ``(C, )``, or ``(N, C)`` for per-sample gates (batch
            dim 0).

    Returns:
        Tensor: Like ``x``; for a 0/1 gate the alive channels equal the
        output of the norm without the others.
    """
    dim = dim % x.dim()
    shape = [1] * x.dim()
    shape[dim] = x.shape[dim]
    # F.layer_norm computes in float32 at least (also under autocast).
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dtype)
    g_shape = list(shape)
    if gate.dim() == 2:
        g_shape[0] = gate.shape[0]
    g = gate.to(dtype).reshape(g_shape)
    n = g.sum(dim, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    mean = (xf * g).sum(dim, keepdim=True) / n
    centred = xf - mean
    var = (g * centred * centred).sum(dim, keepdim=True) / n
    y = centred * torch.rsqrt(var + module.eps)
    if module.weight is not None:
        y = y * module.weight.to(dtype).reshape(shape)
    if module.bias is not None:
        y = y + module.bias.to(dtype).reshape(shape)
    return y.to(x.dtype)


def check_layer_norm(module: nn.Module, args: tuple, kwargs: dict,
                     output) -> Optional[str]:
    """Why the masked recomputation cannot stand in for this call of a
    LayerNorm, or ``None`` (it can).

    The call's output must equal :func:`masked_layer_norm` with an all-ones
    gate over the dim :func:`norm_channel_dim` reads, so a subclass with
    another forward is refused rather than trusted.
    """
    dim = norm_channel_dim(module, args, kwargs)
    if dim is None:
        return ('the dim it normalises cannot be told from its call (only '
                'nn.LayerNorm over one dim, and subclasses with a '
                'data_format argument, are understood)')
    x = args[0]
    if x.dim() < 2 or x.shape[dim] != module.normalized_shape[0]:
        return (f'it normalises a dim of size {module.normalized_shape[0]} '
                f'that is not the channel dim {dim} of its input '
                f'{tuple(x.shape)}')
    if not isinstance(output, torch.Tensor) or output.shape != x.shape:
        return 'its output is not a tensor of its input shape'
    with torch.no_grad():
        ones = torch.ones(x.shape[dim], dtype=x.dtype, device=x.device)
        ref = masked_layer_norm(module, x, dim, ones)
        scale = max(float(output.abs().max()), 1.0)
        if not torch.allclose(ref, output, rtol=0, atol=1e-4 * scale):
            return (f'its output is not a LayerNorm over dim {dim} of its '
                    'input (its forward does more than normalise)')
    return None


def per_channel_parameter_reason(node) -> Optional[str]:
    """Why an unwrapped ``nn.Parameter`` of a DepGraph group cannot be
    pruned with its channels, or ``None``.

    It can when it has one non-singleton dim (the one Torch-Pruning slices)
    and reaches the model only through element-wise multiplications,
    additions, subtractions or divisions, possibly after views: then every
    channel is scaled or shifted on its own, the masked forward needs no
    gate for it, and the export slices it.

    Args:
        node: The DepGraph node of the parameter (``node.module`` is the
            parameter).
    """
    param = node.module
    dims = [d for d, s in enumerate(param.shape) if s > 1]
    if len(dims) != 1:
        return (f'it is coupled to an unwrapped nn.Parameter of shape '
                f'{tuple(param.shape)}, which has no single channel dim to '
                'slice')
    if not param.requires_grad:
        return ('it is coupled to a frozen unwrapped nn.Parameter '
                f'{tuple(param.shape)}')
    todo, seen = list(node.outputs), set()
    if not todo:
        return 'it is coupled to an unwrapped nn.Parameter no op reads'
    while todo:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        name = n.grad_fn.name() if getattr(n, 'grad_fn', None) else ''
        if n.type == tp_ops.OPTYPE.RESHAPE or name.startswith(_VIEW_FNS):
            if len(seen) > 16:
                return ('it is coupled to an unwrapped nn.Parameter '
                        f'{tuple(param.shape)} behind more than 16 views')
            todo.extend(n.outputs)
            continue
        if n.type == tp_ops.OPTYPE.ELEMENTWISE and \
                name.startswith(_ELEMENTWISE_FNS):
            continue
        return (f'it is coupled to an unwrapped nn.Parameter '
                f'{tuple(param.shape)} that enters {name or n}, not only '
                'element-wise products and sums')
    return None
