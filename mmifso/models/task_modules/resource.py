"""FLOPs, parameter and activation counting on masked models.

FLOPs are the multiply-accumulates of conv and linear layers (the convention
of IFSO and Group Fisher): ``MACs = spatial * k_h * k_w * C_out * C_in /
groups`` summed over every call of the layer in one forward of the demo input
(batch size 1 counts per image): a head shared by the levels of a feature
pyramid counts once per level, an RoI head once per RoI. Counting with the
alive channel numbers of a masked model gives the same figure as counting the
physically pruned model.
"""
from dataclasses import dataclass
from typing import Dict, Optional

import torch.nn as nn

from ..utils import eval_mode, removing_hooks
from .layer_types import GATEABLE_TYPES


@dataclass
class LayerRecord:
    """Static shape facts of one conv/linear layer.

    Args:
        in_channels (int): Input channels (features for linear).
        out_channels (int): Output channels.
        groups (int): Convolution groups (1 for linear).
        kernel (int): ``k_h * k_w`` (1 for linear).
        spatial (int): Output positions per image, summed over calls.
        has_bias (bool): Whether the layer has a bias.
    """
    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    spatial: int
    has_bias: bool

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels

    def macs(self, alive_in: int, alive_out: int) -> int:
        if self.depthwise:
            # Input and output channels are the same; groups shrink with them.
            return self.spatial * self.kernel * alive_in
        return (self.spatial * self.kernel * alive_out * alive_in //
                self.groups)

    def params(self, alive_in: int, alive_out: int) -> int:
        if self.depthwise:
            return self.kernel * alive_in + (alive_in if self.has_bias else 0)
        return (self.kernel * alive_out * alive_in // self.groups +
                (alive_out if self.has_bias else 0))


def record_layers(model: nn.Module,
                  forward_fn,
                  batch_size: Optional[int] = None) -> Dict[str, LayerRecord]:
    """Run ``forward_fn(model)`` once (in eval mode) and record every
    conv/linear layer.

    Every call of a layer adds to its record, so modules reused on several
    inputs (heads shared across pyramid levels) count every call.

    Args:
        model (nn.Module): The model.
        forward_fn (Callable): Runs the demo forward.
        batch_size (int, optional): Images in the demo batch; defaults to
            ``forward_fn.input_shape[0]`` (demo-input builders), else it is
            read from each layer output's first dim (which is wrong for
            layers whose first dim is not the batch, e.g. RoI heads).

    Returns:
        dict[str, LayerRecord]: Keyed by module name; layers not called in the
        demo forward have ``spatial=0``.
    """
    names = {m: n for n, m in model.named_modules()}
    records: Dict[str, LayerRecord] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            k = 1
            for s in m.kernel_size:
                k *= s
            records[name] = LayerRecord(m.in_channels, m.out_channels,
                                        m.groups, k, 0, m.bias is not None)
        elif isinstance(m, nn.Linear):
            records[name] = LayerRecord(m.in_features, m.out_features, 1, 1,
                                        0, m.bias is not None)

    if batch_size is None:
        shape = getattr(forward_fn, 'input_shape', None)
        batch_size = int(shape[0]) if shape else None

    def hook(module, inputs, output):
        rec = records[names[module]]
        n = batch_size if batch_size else max(output.shape[0], 1)
        rec.spatial += output.numel() // rec.out_channels // n

    handles = [
        m.register_forward_hook(hook) for m in model.modules()
        if isinstance(m, GATEABLE_TYPES)
    ]
    # Eval mode: the demo forward must not update BatchNorm statistics (and
    # train-mode BN rejects 1x1 maps of a single image); modes are restored.
    with removing_hooks(handles), eval_mode(model):
        forward_fn(model)
    return records


def count_resources(records: Dict[str, LayerRecord],
                    alive_in: Optional[Dict[str, int]] = None,
                    alive_out: Optional[Dict[str, int]] = None) -> Dict:
    """Conv/linear MACs and weights for given alive channel counts.

    Args:
        records (dict[str, LayerRecord]): From :func:`record_layers`.
        alive_in (dict[str, int], optional): Alive input channels per layer;
            missing layers count in full.
        alive_out (dict[str, int], optional): Alive output channels.

    Returns:
        dict: ``flops`` (MACs per image) and ``layer_params`` (conv/linear
        weights and biases).
    """
    alive_in = alive_in or {}
    alive_out = alive_out or {}
    flops = params = 0
    for name, rec in records.items():
        ai = alive_in.get(name, rec.in_channels)
        ao = ai if rec.depthwise else alive_out.get(name, rec.out_channels)
        flops += rec.macs(ai, ao)
        params += rec.params(ai, ao)
    return dict(flops=flops, layer_params=params)


def count_params(model: nn.Module) -> int:
    """Number of parameters of a (physically pruned) model."""
    return sum(p.numel() for p in model.parameters())
