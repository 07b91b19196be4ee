"""tools/misc/make_shapes_coco.py: deterministic COCO-format shapes data."""
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

from mmifso.datasets.shapes import (SHAPES_CLASSES, make_image,
                                    make_shapes_coco, shapes_coco_exists)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(ROOT, 'tools', 'misc', 'make_shapes_coco.py')


def digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(osp.join(dirpath, name), 'rb') as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp('shapes') / 'shapes_coco'
    cmd = [sys.executable, SCRIPT, '--out', str(out), '--train', '12',
           '--val', '6', '--size', '96', '--seed', '0']
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return out


def test_coco_files(generated):
    for split, n in (('train', 12), ('val', 6)):
        with open(generated / 'annotations' / f'instances_{split}.json') as f:
            coco = json.load(f)
        assert len(coco['images']) == n
        assert [c['name'] for c in coco['categories']] == list(SHAPES_CLASSES)
        assert [c['id'] for c in coco['categories']] == [1, 2, 3, 4, 5]
        ids = {im['id'] for im in coco['images']}
        assert coco['annotations']
        assert len({a['id'] for a in coco['annotations']}) == len(
            coco['annotations'])
        for a in coco['annotations']:
            x, y, w, h = a['bbox']
            assert a['image_id'] in ids and 1 <= a['category_id'] <= 5
            assert 0 <= x and 0 <= y and w > 0 and h > 0
            assert x + w <= 96 and y + h <= 96
            assert 0 < a['area'] <= w * h and a['iscrowd'] == 0
        for im in coco['images']:
            assert (generated / split / im['file_name']).is_file()
            assert im['width'] == im['height'] == 96
    assert shapes_coco_exists(str(generated), num=dict(train=12, val=6),
                              size=96)
    assert not shapes_coco_exists(str(generated), num=dict(train=13, val=6))


def test_deterministic_and_prefix_stable(generated, tmp_path):
    again = tmp_path / 'again'
    make_shapes_coco(str(again), 12, 6, 96, seed=0)
    assert digest(again) == digest(generated)
    # A larger set starts with the images of the smaller one.
    img, objects = make_image(0, 'train', 3, 96)
    bigger, more = make_image(0, 'train', 3, 96)
    assert np.array_equal(img, bigger) and objects == more
    other, _ = make_image(1, 'train', 3, 96)
    assert not np.array_equal(img, other)
    val, _ = make_image(0, 'val', 3, 96)
    assert not np.array_equal(img, val)


def test_boxes_are_tight():
    import cv2
    for i in range(5):
        img, objects = make_image(0, 'train', i, 128)
        assert 1 <= len(objects) <= 4
        for obj in objects:
            x, y, w, h = (int(v) for v in obj['bbox'])
            assert w >= 4 and h >= 4
            assert obj['area'] >= 16
    # The image is a valid uint8 BGR image.
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert cv2.imencode('.png', img)[0]


def test_loads_with_mmdet_coco_dataset(generated):
    from mmdet.datasets import CocoDataset
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    ds = CocoDataset(
        data_root=str(generated) + '/',
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        metainfo=dict(classes=SHAPES_CLASSES),
        test_mode=True,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='PackDetInputs')
        ])
    assert len(ds) == 6
    item = ds[0]
    assert tuple(item['inputs'].shape) == (3, 96, 96)
    assert len(item['data_samples'].gt_instances) >= 1
