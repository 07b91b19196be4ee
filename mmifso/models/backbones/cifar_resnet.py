"""ResNet for 32x32 inputs (He et al. 2016, Sec. 4.2): ResNet-20/32/56/110."""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import (build_activation_layer, build_conv_layer,
                      build_norm_layer)
from mmengine.model import BaseModule

from mmifso.registry import MODELS


def _conv_norm(norm_cfg: Optional[dict], in_channels: int,
               out_channels: int, kernel_size: int,
               stride: int) -> Tuple[nn.Module, nn.Module]:
    """A conv and its norm layer; without a norm (``norm_cfg=None``) the
    conv gets a bias and the norm is ``nn.Identity``."""
    conv = build_conv_layer(None, in_channels, out_channels, kernel_size,
                            stride, kernel_size // 2,
                            bias=norm_cfg is None)
    norm = nn.Identity() if norm_cfg is None else build_norm_layer(
        norm_cfg, out_channels)[1]
    return conv, norm


class CifarBasicBlock(BaseModule):
    """Two 3x3 convs with a 1x1-conv projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 norm_cfg: Optional[dict],
                 act_cfg: dict = dict(type='ReLU')) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_norm(norm_cfg, in_channels,
                                          out_channels, 3, stride)
        self.conv2, self.bn2 = _conv_norm(norm_cfg, out_channels,
                                          out_channels, 3, 1)
        self.relu = build_activation_layer(act_cfg)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(*_conv_norm(
                norm_cfg, in_channels, out_channels, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


@MODELS.register_module()
class CifarResNet(BaseModule):
    """CIFAR-style ResNet with three stages of ``(depth - 2) / 6`` blocks.

    Args:
        depth (int): 6n + 2, e.g. 20, 32, 56 or 110.
        base_channels (int): Width of the first stage (16 in the paper);
            stages are 1x, 2x and 4x as wide.
        in_channels (int): Image channels.
        out_indices (Sequence[int]): Stages whose outputs are returned.
        norm_cfg (dict, optional): Normalisation layer config; ``None``:
            no normalisation, convs with biases (a model whose training
            objective has no scale invariance, for converged-retraining
            benchmarks).
        act_cfg (dict): Activation config (default ReLU; a smooth one such
            as ``dict(type='SiLU')`` makes the loss twice differentiable,
            which converged-retraining benchmarks need).
        init_cfg (dict | list, optional): Initialisation config.
    """

    def __init__(self,
                 depth: int = 56,
                 base_channels: int = 16,
                 in_channels: int = 3,
                 out_indices: Sequence[int] = (2, ),
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 init_cfg=[
                     dict(type='Kaiming', layer=['Conv2d']),
                     dict(type='Constant', val=1, layer=['_BatchNorm'])
                 ]) -> None:
        super().__init__(init_cfg)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f'depth must be 6n + 2 (20, 32, 56, 110, ...), '
                             f'got {depth}')
        blocks = (depth - 2) // 6
        self.out_indices = tuple(out_indices)
        self.conv1, self.bn1 = _conv_norm(norm_cfg, in_channels,
                                          base_channels, 3, 1)
        self.relu = build_activation_layer(act_cfg)
        self.stages = nn.ModuleList()
        channels = base_channels
        for i in range(3):
            out_channels = base_channels * 2**i
            layers = []
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(
                    CifarBasicBlock(channels, out_channels, stride, norm_cfg,
                                    act_cfg))
                channels = out_channels
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.relu(self.bn1(self.conv1(x)))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
