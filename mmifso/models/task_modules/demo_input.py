"""Demo inputs: the forward used to trace a model's channel graph."""
from typing import Sequence

import torch
import torch.nn as nn
from mmengine.model import BaseModel

from mmifso.registry import TASK_UTILS


class DemoInputError(ValueError):
    """The model rejected the demo input."""


@TASK_UTILS.register_module()
class DemoInput:
    """Random image batch forwarded in ``mode='tensor'``.

    Works for mmpretrain classifiers and mmdet single-stage detectors, whose
    ``tensor`` mode returns the raw head outputs (the channels that must never
    be pruned).

    Args:
        input_shape (Sequence[int]): ``(N, C, H, W)`` of the demo batch.
    """

    def __init__(self, input_shape: Sequence[int] = (1, 3, 224, 224)) -> None:
        if len(input_shape) != 4 or any(int(s) <= 0 for s in input_shape):
            raise DemoInputError(
                f'input_shape must be (N, C, H, W) with positive sizes, got '
                f'{tuple(input_shape)}')
        self.input_shape = tuple(int(s) for s in input_shape)

    def inputs(self, model: nn.Module) -> dict:
        """Keyword arguments of the demo forward."""
        param = next(model.parameters(), None)
        device = param.device if param is not None else 'cpu'
        # requires_grad: layers whose weights are frozen still join the
        # autograd graph, so they are traced (and reported) like the others.
        x = torch.rand(self.input_shape, device=device, requires_grad=True)
        if isinstance(model, BaseModel):
            return dict(inputs=x, mode='tensor')
        return dict(input=x)

    def __call__(self, model: nn.Module):
        """Run the demo forward of ``model`` and return its outputs."""
        kwargs = self.inputs(model)
        try:
            return model(**kwargs)
        except Exception as e:  # re-raised with what to change
            raise DemoInputError(
                f'{type(model).__name__} rejected the demo input of shape '
                f'{self.input_shape}: {type(e).__name__}: {e}. Set '
                "mutator.demo_input.input_shape to a shape the model accepts, "
                'e.g. (1, 3, 224, 224) for ImageNet classifiers or (1, 3, 32, '
                '32) for CIFAR ones.') from e

    def to_dict(self) -> dict:
        return dict(type='mmifso.DemoInput', input_shape=self.input_shape)
