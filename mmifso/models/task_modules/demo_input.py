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

    #: Shapes suggested when the model rejects the demo input.
    example_shapes = ('e.g. (1, 3, 224, 224) for ImageNet classifiers or '
                      '(1, 3, 32, 32) for CIFAR ones')

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
        # The model's floating dtype (a float64 model gets a float64 batch).
        dtype = next((p.dtype for p in model.parameters()
                      if p.is_floating_point()), torch.float32)
        # requires_grad: layers whose weights are frozen still join the
        # autograd graph, so they are traced (and reported) like the others.
        x = torch.rand(
            self.input_shape, device=device, dtype=dtype, requires_grad=True)
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
                f'{self.example_shapes}.') from e

    def to_dict(self) -> dict:
        return dict(type='mmifso.DemoInput', input_shape=self.input_shape)


def fixed_proposals(num: int, height: int, width: int) -> torch.Tensor:
    """``num`` deterministic boxes ``(x1, y1, x2, y2)`` spread over an image.

    Square boxes of five sizes from 1/16 to 1/2 of the shorter side, at most
    96 pixels, on a low-discrepancy grid of centres (no RNG). Every box is
    smaller than 112 pixels, so mmdet's RoI extractors read all of them from
    the finest level: RoIs of several levels are written into one tensor by
    indexing, a pattern for which DepGraph's index mapping grows without
    bound. Channel coupling does not depend on the level (the FPN outputs
    are coupled through the shared RPN head anyway), and the RoI head's FLOPs
    do not either.
    """
    side = min(height, width)
    sizes = (torch.tensor([1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2]) *
             side).clamp(2, 96)
    i = torch.arange(num, dtype=torch.float32)
    size = sizes[(i % len(sizes)).long()]
    cx = ((i * 0.6180339887 + 0.5) % 1.0) * width
    cy = ((i * 0.7548776662 + 0.5) % 1.0) * height
    x1 = (cx - size / 2).clamp(0, width - 2)
    y1 = (cy - size / 2).clamp(0, height - 2)
    x2 = torch.minimum(x1 + size, torch.tensor(float(width)))
    y2 = torch.minimum(y1 + size, torch.tensor(float(height)))
    return torch.stack([x1, y1, x2, y2], dim=1)


@TASK_UTILS.register_module()
class DetDemoInput(DemoInput):
    """Random image batch with real ``DetDataSample`` s, for mmdet detectors.

    Single-stage detectors run ``model(inputs, data_samples,
    mode='tensor')``: the raw head outputs are the model outputs. Two-stage
    detectors (an ``rpn_head`` and an ``roi_head``) run the backbone, the
    neck, the RPN head's convolutions and the RoI head on ``num_proposals``
    fixed boxes per image. Fixed proposals keep the forward deterministic and
    identical for a masked and an exported model (proposals from the RPN's
    own predictions would go through NMS, where tiny float differences
    change which boxes survive), and the RPN outputs join the model outputs,
    so they are never pruned; the RoI heads' output layers (classification,
    box regression, mask logits) are model outputs too.

    Args:
        input_shape (Sequence[int]): ``(N, C, H, W)`` of the demo batch.
        num_proposals (int): RoIs per image for two-stage detectors; FLOPs of
            the RoI head count this many RoIs per image (mmdet's test-time
            RPN keeps up to 1000).
    """

    # The coarsest FPN level (1/128 of the image with P7) must still be as
    # large as the head's kernels, which mmcv's deformable convs check.
    example_shapes = ("e.g. (1, 3, 800, 1333), mmdet's test size of COCO "
                      'detectors')

    def __init__(self,
                 input_shape: Sequence[int] = (1, 3, 320, 320),
                 num_proposals: int = 1000) -> None:
        super().__init__(input_shape)
        if num_proposals < 1:
            raise DemoInputError(
                f'num_proposals must be >= 1, got {num_proposals}')
        self.num_proposals = int(num_proposals)

    def data_samples(self, device='cpu') -> list:
        """One ``DetDataSample`` per image with the metas mmdet reads."""
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        n, _, h, w = self.input_shape
        samples = []
        for i in range(n):
            sample = DetDataSample(
                metainfo=dict(
                    img_id=i,
                    img_path=f'demo_{i}.jpg',
                    ori_shape=(h, w),
                    img_shape=(h, w),
                    pad_shape=(h, w),
                    batch_input_shape=(h, w),
                    scale_factor=(1.0, 1.0),
                    flip=False,
                    flip_direction=None))
            proposals = InstanceData()
            proposals.bboxes = fixed_proposals(self.num_proposals, h,
                                               w).to(device)
            proposals.scores = torch.ones(self.num_proposals, device=device)
            sample.proposals = proposals
            samples.append(sample)
        return samples

    def inputs(self, model: nn.Module) -> dict:
        kwargs = super().inputs(model)
        x = kwargs['inputs']
        kwargs['data_samples'] = self.data_samples(x.device)
        for sample in kwargs['data_samples']:
            sample.proposals.bboxes = sample.proposals.bboxes.to(x.dtype)
            sample.proposals.scores = sample.proposals.scores.to(x.dtype)
        return kwargs

    @staticmethod
    def _is_two_stage(model: nn.Module) -> bool:
        return hasattr(model, 'roi_head') and hasattr(model, 'extract_feat')

    def __call__(self, model: nn.Module):
        if not self._is_two_stage(model):
            return super().__call__(model)
        kwargs = self.inputs(model)
        x, samples = kwargs['inputs'], kwargs['data_samples']
        try:
            feats = model.extract_feat(x)
            outs = ()
            if getattr(model, 'with_rpn', False):
                outs += (model.rpn_head(feats), )
            outs += (model.roi_head.forward(
                feats, [s.proposals for s in samples], samples), )
            return outs
        except Exception as e:  # re-raised with what to change
            raise DemoInputError(
                f'{type(model).__name__} rejected the demo input of shape '
                f'{self.input_shape} with {self.num_proposals} proposals: '
                f'{type(e).__name__}: {e}. Set mutator.demo_input.'
                'input_shape to a size the detector accepts (a multiple of '
                f'32, {self.example_shapes}).') from e

    def to_dict(self) -> dict:
        return dict(
            type='mmifso.DetDemoInput',
            input_shape=self.input_shape,
            num_proposals=self.num_proposals)
