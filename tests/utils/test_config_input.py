"""The demo input size comes from the config's own test pipeline: in
``pipeline_input_size``, the coverage check, ``analyse_model`` and
``tools/analysis/get_flops.py``; and ``analyse_model`` follows the model's
dtype."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from helpers import ROOT, load_tool
from mmifso.apis import analyse_model
from mmifso.apis.coverage import demo_size, load_config
from mmifso.utils import pipeline_input_size

DEMO_DET = osp.join(ROOT, 'configs', 'demo_det',
                    'retinanet_r18-w32_fpn_1xb16-48e_shapes.py')


@pytest.mark.parametrize('config,size', [
    ('mmpretrain::resnet/resnet50_8xb32_in1k.py', (224, 224)),
    ('mmpretrain::efficientnet/efficientnet-b3_8xb32_in1k.py', (300, 300)),
    ('mmpretrain::resnet/resnet18_8xb16_cifar10.py', None),
    ('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', (800, 1333)),
    ('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', (416, 416)),
    ('mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py', (320, 320)),
])
def test_pipeline_input_size_of_upstream_configs(config, size):
    assert pipeline_input_size(load_config(config)) == size


def test_coverage_demo_size():
    cfg = load_config('mmpretrain::efficientnet/efficientnet-b3_8xb32_in1k.py')
    assert demo_size(cfg, None, det=False) == (300, 300)
    assert demo_size(cfg, 64, det=False) == (64, 64)  # asked for
    cifar = load_config('mmpretrain::resnet/resnet18_8xb16_cifar10.py')
    assert demo_size(cifar, None, det=False) == (64, 64)  # none in pipeline


def small_classifier(dtype=torch.float32):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    model = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='mmifso.CifarResNet', depth=8,
                          base_channels=4),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=16)))
    return model.to(dtype)


def test_analyse_model_float64_and_size_from_the_attached_config():
    model = small_classifier(torch.float64)
    # As mmpretrain's get_model attaches it.
    model._config = Config(
        dict(test_dataloader=dict(dataset=dict(pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=24),
            dict(type='PackInputs')
        ]))))
    mutator = analyse_model(model)
    assert mutator.demo_input.input_shape == (1, 3, 24, 24)
    assert mutator.units
    # The masked float64 model still runs in float64.
    x = torch.rand(1, 3, 24, 24, dtype=torch.float64)
    assert model(x, mode='tensor').dtype == torch.float64


def test_analyse_model_without_any_size_says_what_to_pass():
    with pytest.raises(ValueError, match='pass input_shape'):
        analyse_model(small_classifier())


def test_get_flops_counts_plain_configs_at_their_test_size(tmp_path):
    tool = load_tool('analysis', 'get_flops.py')
    out = tmp_path / 'flops.json'
    tool.main([DEMO_DET, '--out', str(out)])
    # The demo detector's test pipeline resizes to 160x160.
    assert json.loads(out.read_text())['input_shape'] == [1, 3, 160, 160]
