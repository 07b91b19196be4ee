"""Write generated detection images as a COCO-format dataset.

The layout mmdet's ``CocoDataset`` reads with ``data_prefix=dict(img=
'<split>/')`` and ``ann_file='annotations/instances_<split>.json'``::

    OUT/<split>/000000.png ...
    OUT/annotations/instances_<split>.json

Shared by the synthetic datasets (:func:`mmifso.datasets.shapes.
make_shapes_coco`, ``tools/misc/make_digits_coco.py``): each brings its own
image generator and categories; their command lines share
:func:`add_split_arguments`.
"""
import argparse
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np

#: ``make_image(index) -> (BGR uint8 image, objects)``; each object is a
#: ``dict(category_id, bbox=[x, y, w, h], area)`` in COCO conventions.
ImageMaker = Callable[[int], Tuple[np.ndarray, List[Dict]]]


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that size a generated dataset, the same in every
    generator tool: ``--train`` and ``--val`` (images per split, default 400
    and 100), ``--size`` (image side in pixels, default 160) and ``--seed``
    (default 0).

    Each tool checks the ranges itself: the smallest image side it can draw
    on differs.

    Args:
        parser (argparse.ArgumentParser): The tool's parser; the options are
            added in the order above.
    """
    parser.add_argument('--train', type=int, default=400,
                        help='number of training images')
    parser.add_argument('--val', type=int, default=100,
                        help='number of validation images')
    parser.add_argument('--size', type=int, default=160,
                        help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)


def write_coco_split(out: str,
                     split: str,
                     num: int,
                     make_image: ImageMaker,
                     categories: List[Dict],
                     info: Optional[Dict] = None) -> Dict[str, int]:
    """Write the images ``0 .. num - 1`` of one split and its annotation
    file.

    The annotation file is written last, through a temporary file renamed
    into place, so that it marks a complete split.

    Args:
        out (str): Root of the dataset.
        split (str): Name of the split (its image folder and annotation
            file).
        num (int): Number of images.
        make_image (Callable): ``make_image(index)`` returns the image and
            its objects.
        categories (list[dict]): The COCO ``categories`` (``id``, ``name``).
        info (dict, optional): The COCO ``info`` block; left out when None.

    Returns:
        dict: ``dict(images=..., objects=...)``, the numbers written.
    """
    folder = osp.join(out, split)
    os.makedirs(folder, exist_ok=True)
    os.makedirs(osp.join(out, 'annotations'), exist_ok=True)
    images, annotations = [], []
    for i in range(num):
        img, objects = make_image(i)
        name = f'{i:06d}.png'
        cv2.imwrite(osp.join(folder, name), img)
        height, width = img.shape[:2]
        images.append(
            dict(id=i + 1, file_name=name, width=width, height=height))
        for obj in objects:
            annotations.append(
                dict(id=len(annotations) + 1, image_id=i + 1, iscrowd=0,
                     **obj))
    coco = dict(images=images, annotations=annotations, categories=categories)
    if info is not None:
        coco = dict(info=info, **coco)
    path = osp.join(out, 'annotations', f'instances_{split}.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(coco, f)
    os.replace(tmp, path)
    return dict(images=num, objects=len(annotations))


def describe_coco_stats(out: str, stats: Mapping[str, Mapping[str, int]],
                        noun: str = 'objects') -> str:
    """One line about a written dataset, e.g. ``wrote data/x: train 400
    images / 1011 digits, val 100 images / 247 digits``.

    Args:
        out (str): Root of the dataset.
        stats (Mapping): ``split -> dict(images, objects)``, as
            :func:`write_coco_split` returns per split.
        noun (str): What the objects are called.

    Returns:
        str: The line.
    """
    return f'wrote {out}: ' + ', '.join(
        f'{split} {s["images"]} images / {s["objects"]} {noun}'
        for split, s in stats.items())
