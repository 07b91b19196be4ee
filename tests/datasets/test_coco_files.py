"""mmifso.datasets.coco_files: one split of generated images as COCO files."""
import argparse
import json

import numpy as np

from mmifso.datasets.coco_files import (add_split_arguments,
                                        describe_coco_stats, write_coco_split)

CATEGORIES = [dict(id=1, name='a'), dict(id=2, name='b')]


def make_image(index):
    """A 24 x 32 image with ``index`` objects."""
    img = np.full((24, 32, 3), index, dtype=np.uint8)
    objects = [
        dict(category_id=1 + k % 2, bbox=[k, k, 4.0, 5.0], area=20.0)
        for k in range(index)
    ]
    return img, objects


def test_write_coco_split(tmp_path):
    stats = write_coco_split(str(tmp_path), 'val', 3, make_image, CATEGORIES)
    assert stats == dict(images=3, objects=3)
    assert sorted(p.name for p in (tmp_path / 'val').iterdir()) == [
        '000000.png', '000001.png', '000002.png'
    ]
    # Only the finished annotation file is left, without an info block.
    assert [p.name for p in (tmp_path / 'annotations').iterdir()
            ] == ['instances_val.json']
    coco = json.loads((tmp_path / 'annotations' /
                       'instances_val.json').read_text())
    assert list(coco) == ['images', 'annotations', 'categories']
    assert coco['categories'] == CATEGORIES
    assert coco['images'][2] == dict(
        id=3, file_name='000002.png', width=32, height=24)
    assert [(a['id'], a['image_id'], a['category_id'])
            for a in coco['annotations']] == [(1, 2, 1), (2, 3, 1),
                                              (3, 3, 2)]
    assert all(a['iscrowd'] == 0 for a in coco['annotations'])


def test_info_block_comes_first(tmp_path):
    write_coco_split(str(tmp_path), 'train', 1, make_image, CATEGORIES,
                     info=dict(size=32))
    coco = json.loads((tmp_path / 'annotations' /
                       'instances_train.json').read_text())
    assert list(coco) == ['info', 'images', 'annotations', 'categories']
    assert coco['info'] == dict(size=32)


def test_describe_coco_stats():
    stats = dict(train=dict(images=4, objects=9), val=dict(images=2,
                                                           objects=3))
    assert describe_coco_stats('data/x', stats, 'digits') == (
        'wrote data/x: train 4 images / 9 digits, val 2 images / 3 digits')


def test_add_split_arguments():
    parser = argparse.ArgumentParser()
    add_split_arguments(parser)
    assert vars(parser.parse_args([])) == dict(train=400, val=100, size=160,
                                               seed=0)
    args = parser.parse_args(
        ['--train', '3', '--val', '2', '--size', '64', '--seed', '5'])
    assert (args.train, args.val, args.size, args.seed) == (3, 2, 64, 5)
