"""Generate the offline shapes detection dataset in COCO format.

Usage:
    python tools/misc/make_shapes_coco.py --out data/shapes_coco \
        --train 400 --val 100 --size 160 --seed 0

Writes ``OUT/train/*.png``, ``OUT/val/*.png`` and
``OUT/annotations/instances_{train,val}.json``: one to four filled shapes
(circle, square, triangle, cross, star) of random colour, size and rotation
per image on textured backgrounds, with tight boxes. The output depends only
on the arguments (image ``i`` of a split depends only on seed, split, ``i``
and size). Load it with mmdet's ``CocoDataset`` and ``metainfo=dict(classes=
('circle', 'square', 'triangle', 'cross', 'star'))``.
"""
import argparse
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmifso.datasets.coco_files import (add_split_arguments,  # noqa: E402
                                        describe_coco_stats)
from mmifso.datasets.shapes import COCO_SPLITS, make_shapes_coco  # noqa: E402,E501


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/shapes_coco')
    add_split_arguments(parser)
    parser.add_argument('--max-objects', type=int, default=4)
    parser.add_argument(
        '--coco-layout',
        action='store_true',
        help='name the splits train2017/val2017 like COCO, so that a COCO '
        'config runs on the data with only data_root (and the class names) '
        'changed')
    args = parser.parse_args(argv)
    if args.train < 0 or args.val < 0 or args.size < 32:
        parser.error('--train/--val must be >= 0 and --size >= 32')
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    splits = dict(train=args.train, val=args.val)
    if args.coco_layout:
        splits = dict(zip(COCO_SPLITS, splits.values()))
    stats = make_shapes_coco(
        args.out,
        size=args.size,
        seed=args.seed,
        max_objects=args.max_objects,
        splits=splits)
    print(f'{describe_coco_stats(args.out, stats)} in '
          f'{time.time() - start:.1f} s')
    return stats


if __name__ == '__main__':
    main()
