"""An exported detector is an ordinary mmdet model to mmdet's own tools.

A small RetinaNet (the detection demo's config at 64 px) is pruned for two
iterations in a real Runner on shapes-COCO data, exported, and then used
only through mmdet's and mmengine's public APIs: ``init_detector`` /
``inference_detector`` (class names and palette from ``pruned.pth``) and
``Runner.from_cfg(deploy).test()`` (the masked model's mAP). An unpruned
checkpoint with the deploy config fails loudly through each of them.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner, load_checkpoint

from mmifso.apis.export import export_checkpoint
from mmifso.datasets.shapes import SHAPES_CLASSES, make_shapes_coco

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PRUNE_CFG = osp.join(ROOT, 'configs', 'demo_det',
                     'ifso_retinanet_r18-w32_prune_shapes.py')
SIZE = 64
FIT_ERROR = 'does not fit this pruned model'


def shapes_config(data_root: str, work_dir: str) -> Config:
    """The demo's prune config on a tiny shapes-COCO set: 64 px, batch 2,
    one epoch of two iterations with a pruning step on each."""
    cfg = Config.fromfile(PRUNE_CFG)
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=(SIZE, SIZE), keep_ratio=True),
        dict(type='PackDetInputs')
    ]
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[name]
        loader.batch_size = 2
        loader.dataset.data_root = data_root
        loader.dataset.pipeline = pipeline
        split = 'train' if name == 'train_dataloader' else 'val'
        loader.dataset.ann_file = f'annotations/instances_{split}.json'
        loader.dataset.data_prefix = dict(img=f'{split}/')
    for name in ('val_evaluator', 'test_evaluator'):
        cfg[name].ann_file = osp.join(data_root,
                                      'annotations/instances_val.json')
    cfg.model.mutator.demo_input.input_shape = (1, 3, SIZE, SIZE)
    cfg.custom_hooks[0].update(interval=1, channels_per_step=1)
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=100)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    cfg.load_from = None
    cfg.work_dir = work_dir
    cfg.experiment_name = f'export_detector_{osp.basename(work_dir)}'
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    make_shapes_coco(root, size=SIZE, seed=0, splits=dict(train=4, val=2))
    work = str(tmp_path_factory.mktemp('prune'))
    cfg = shapes_config(root, work)
    runner = Runner.from_cfg(cfg)
    runner.train()
    masked_metrics = runner.test()
    ckpt = osp.join(work, 'epoch_1.pth')
    out = export_checkpoint(cfg, ckpt, osp.join(work, 'export'))
    state = torch.load(ckpt, map_location='cpu')['state_dict']
    plain = osp.join(work, 'plain.pth')
    torch.save({'state_dict': {
        k[len('architecture.'):]: v
        for k, v in state.items() if k.startswith('architecture.')
    }}, plain)
    return dict(out, root=root, plain=plain, masked_metrics=masked_metrics)


def test_init_detector_and_inference_detector(exported):
    from mmdet.apis import inference_detector, init_detector
    model = init_detector(
        exported['config'], exported['checkpoint'], device='cpu')
    assert model.dataset_meta['classes'] == SHAPES_CLASSES
    assert len(model.dataset_meta['palette']) >= len(SHAPES_CLASSES)
    assert sum(p.numel() for p in model.parameters()) == exported['params']
    saved = torch.load(exported['checkpoint'], map_location='cpu')
    for k, v in saved['state_dict'].items():
        assert torch.equal(model.state_dict()[k], v), k
    image = osp.join(exported['root'], 'val', '000000.png')
    result = inference_detector(model, image)
    labels = result.pred_instances.labels
    assert labels.numel() == 0 or int(labels.max()) < len(SHAPES_CLASSES)


def test_mmdet_runner_on_deploy_config(exported, tmp_path):
    """mmengine's Runner (as mmdet's tools/test.py builds it) evaluates the
    exported model to the masked model's mAP."""
    deploy = Config.fromfile(exported['config'])
    deploy.work_dir = str(tmp_path / 'test')
    deploy.experiment_name = 'export_detector_deploy_test'
    metrics = Runner.from_cfg(deploy).test()
    for key, value in exported['masked_metrics'].items():
        assert metrics[key] == pytest.approx(value, abs=1e-3), key


def test_unpruned_checkpoint_fails_loudly(exported, tmp_path):
    """Never a silent 0.000: every entry point refuses the unpruned
    checkpoint with the deploy config."""
    from mmdet.apis import init_detector
    with pytest.raises(RuntimeError, match=FIT_ERROR):
        init_detector(exported['config'], exported['plain'], device='cpu')
    deploy = Config.fromfile(exported['config'])
    deploy.work_dir = str(tmp_path / 'test')
    deploy.experiment_name = 'export_detector_plain_test'
    deploy.load_from = exported['plain']
    with pytest.raises(RuntimeError, match=FIT_ERROR):
        Runner.from_cfg(deploy).test()
    model = init_detector(exported['config'], None, device='cpu')
    with pytest.raises(RuntimeError, match=FIT_ERROR):
        load_checkpoint(model, exported['plain'], strict=False)


def test_deploy_config_reads_as_an_mmdet_config(exported):
    deploy = Config.fromfile(exported['config'])
    assert deploy.model.architecture_type == 'RetinaNet'
    assert deploy.model.backbone.depth == 18
    for stale in ('architecture', 'classes', 'image_size', 'metainfo'):
        assert stale not in deploy, stale
    # The pruning run kept a constant lr: fine-tuning decays it.
    assert [s.type for s in deploy.param_scheduler] == ['CosineAnnealingLR']
