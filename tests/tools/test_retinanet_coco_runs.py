"""The shipped RetinaNet R50-FPN COCO configs start on COCO-format data.

A user with COCO only sets ``data_root``; here the data is the offline shapes
set in COCO format (``make_shapes_coco``), so three things more are changed
and nothing else: the class names (the shapes' five instead of COCO's 80,
the 80-way head is kept), a small image scale, no data workers and a two-iteration schedule.
The prune config runs in a real mmengine ``Runner`` from ``tools/train.py``
(no weights: ``load_from`` would download), takes IFSO pruning steps, is
evaluated with mmdet's real ``CocoMetric``; its checkpoint is exported with
``tools/export_pruned.py`` and the fine-tune config trains from the export.
"""
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmifso.datasets.shapes import (COCO_SPLITS, SHAPES_CLASSES,
                                    make_shapes_coco)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RETINANET = osp.join(ROOT, 'configs', 'ifso', 'detection', 'retinanet')
SIZE = 96


def user_config(tmp_path, base: str, data_root: str, **extra) -> str:
    """A user's config on top of a shipped one, moved onto the shapes data:
    ``data_root``, the class names, a small scale, no workers, two
    iterations (the ImageNet-pretrained backbone init, a download, is switched
    off by the tests); ``extra`` is added as ``key = repr(value)`` lines."""
    root = data_root.rstrip('/') + '/'
    lines = [
        f'_base_ = [{base!r}]',
        f'data_root = {root!r}',
        f'classes = {tuple(SHAPES_CLASSES)!r}',
        'pipeline = [',
        '    dict(type="LoadImageFromFile"),',
        '    dict(type="LoadAnnotations", with_bbox=True),',
        f'    dict(type="Resize", scale=({SIZE}, {SIZE}), keep_ratio=True),',
        '    dict(type="PackDetInputs")]',
    ]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        lines.append(
            f'{loader} = dict(batch_size=2, num_workers=0, '
            'persistent_workers=False, dataset=dict(data_root=data_root, '
            'metainfo=dict(classes=classes), pipeline=pipeline))')
    for evaluator in ('val_evaluator', 'test_evaluator'):
        lines.append(f'{evaluator} = dict(ann_file=data_root + '
                     '"annotations/instances_val2017.json")')
    lines += [
        'train_cfg = dict(max_epochs=1)',
        'default_hooks = dict(logger=dict(interval=1))',
        'load_from = None',
    ]
    lines += [f'{key} = {value!r}' for key, value in extra.items()]
    path = tmp_path / f'user_{osp.basename(base)}'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def run(cmd: list, cwd: str) -> str:
    proc = subprocess.run([sys.executable] + cmd,
                          cwd=cwd,
                          capture_output=True,
                          text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp('coco') / 'shapes_coco'
    # COCO's own layout (train2017/, annotations/instances_val2017.json):
    # the config's ann_file and data_prefix stay as they are.
    make_shapes_coco(str(out), size=SIZE, seed=0,
                     splits=dict(zip(COCO_SPLITS, (4, 2))))
    return str(out)


def test_retinanet_coco_prune_then_finetune(shapes, tmp_path):
    prune_cfg = osp.join(RETINANET, 'ifso_prune_retinanet_r50_fpn_1x_coco.py')
    work = str(tmp_path / 'prune')
    # interval 1: a pruning step on each of the two iterations; the demo
    # input at the small scale keeps the FLOPs-recording forward cheap.
    cfg = user_config(
        tmp_path, prune_cfg, shapes,
        input_shape=(1, 3, SIZE, SIZE))
    with open(cfg, 'a') as f:
        f.write('model = dict(architecture=dict(backbone=dict('
                'init_cfg=None)), mutator=dict(demo_input=dict('
                'input_shape=input_shape)))\n'
                'custom_hooks = [dict(type="mmifso.PruningHook", '
                'importance=dict(type="mmifso.IFSOImportance"), '
                'target_flops=0.5, interval=1, channels_per_step=1, '
                'score_batches=1)]\n')
    log = run(['tools/train.py', cfg, '--work-dir', work], ROOT)
    # CocoMetric ran on the val split (an untrained model may detect nothing,
    # which mmdet reports as an empty result).
    assert 'Evaluating bbox' in log
    ckpt = torch.load(osp.join(work, 'epoch_1.pth'), map_location='cpu')
    masks = {k: v for k, v in ckpt['state_dict'].items()
             if k.endswith('.mask')}
    assert masks
    pruned = sum(int((m == 0).sum()) for m in masks.values())
    assert pruned == 2  # channels_per_step=1, two pruning steps

    export = str(tmp_path / 'export')
    run([
        'tools/export_pruned.py', cfg,
        osp.join(work, 'epoch_1.pth'), '--out-dir', export
    ], ROOT)
    for name in ('pruned.pth', 'structure.json', 'deploy_config.py'):
        assert osp.isfile(osp.join(export, name))

    finetune_cfg = user_config(
        tmp_path,
        osp.join(RETINANET, 'ifso_finetune_retinanet_r50_fpn_1x_coco.py'),
        shapes)
    with open(finetune_cfg, 'a') as f:
        # The deploy config's flat form: the detector's fields at the top.
        f.write('model = dict(backbone=dict(init_cfg=None), '
                f'structure={export + "/structure.json"!r})\n'
                f'load_from = {export + "/pruned.pth"!r}\n')
    log = run(['tools/train.py', finetune_cfg, '--work-dir',
               str(tmp_path / 'finetune')], ROOT)
    assert 'Evaluating bbox' in log
