"""Tiny models shared by the tests: small enough for explicit Hessians."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel


class TinyNet(BaseModel):
    """conv(2->4) -> tanh -> conv(4->4) + skip -> tanh -> GAP -> fc(4->3).

    Smooth activations (tanh) so finite differences match autograd; the skip
    add couples the two convs' output channels into one unit.
    """

    def __init__(self, act=torch.tanh, bn: bool = False) -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(5, 4, 1, bias=True)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.fc = nn.Linear(4, 3)
        self.act = act

    def features(self, x):
        a = self.act(self.conv1(x))
        b = self.act(self.conv2(a))
        c = self.bn(self.conv3(b)) + a
        return self.act(c).mean((2, 3))

    def forward(self, inputs, data_samples: Optional[torch.Tensor] = None,
                mode: str = 'tensor'):
        logits = self.fc(self.features(inputs))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, data_samples))
        return logits


def tiny_batch(n: int = 8, seed: int = 0, dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        inputs=torch.randn(n, 2, 5, 5, generator=g, dtype=dtype),
        data_samples=torch.randint(0, 3, (n, ), generator=g))


def tiny_mutator(model: nn.Module, min_channels: int = 1, **kwargs):
    from mmifso.models import ChannelMutator

    class _Demo:
        def __call__(self, m):
            p = next(m.parameters())
            return m(torch.rand(1, 2, 5, 5, dtype=p.dtype))

        def to_dict(self):
            return {}

    mutator = ChannelMutator(
        demo_input=_Demo(), min_channels=min_channels, **kwargs)
    mutator.prepare_from_supernet(model)
    return mutator
