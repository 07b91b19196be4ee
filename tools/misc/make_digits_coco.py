"""Generate a small COCO-format detection dataset of handwritten digits.

Usage:
    python tools/misc/make_digits_coco.py --out data/digits_coco \
        --train 400 --val 100 --size 160 --seed 0

The worked example of docs/own_data.md: a dataset that is not the shapes
data, made the way a user's own data usually is (images on disk plus COCO
json annotations). The digits are scikit-learn's 1,797 real 8x8 handwritten
digits (``sklearn.datasets.load_digits``, shipped with scikit-learn, no
download), upsampled to 20-56 pixels with a random aspect jitter and pasted
as ink of a random colour on a textured ``size x size`` canvas, one to four
per image, not overlapping. The writers of the validation digits are kept
apart from the training ones: each class's 8x8 digits are split once (seeded,
80/20) and the ``val`` images only use the held-out part.

Writes (the layout mmdet's ``CocoDataset`` reads with ``data_prefix=dict(
img='train/')`` and ``ann_file='annotations/instances_train.json'``)::

    OUT/train/000000.png ...
    OUT/val/000000.png ...
    OUT/annotations/instances_train.json
    OUT/annotations/instances_val.json

with categories ``1..10`` named ``'0'..'9'`` and tight boxes ``[x, y, w, h]``
around the visible ink. The output depends only on the arguments: image ``i``
of a split depends only on ``(seed, split, i, size)``, so a larger set starts
with the images of a smaller one.
"""
import argparse
import os.path as osp
import sys
import time
from functools import partial
from typing import Dict, List, Tuple

import cv2
import numpy as np

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmifso.datasets.coco_files import (add_split_arguments,  # noqa: E402
                                        describe_coco_stats,
                                        write_coco_split)

#: Class names; category ``k + 1`` is the digit ``k``.
CLASSES = tuple(str(i) for i in range(10))
SPLITS = {'train': 0, 'val': 1}
#: Fraction of each class's source digits kept for the val images.
VAL_FRACTION = 0.2
#: Visible ink: upsampled intensity above this fraction of the maximum.
INK_THRESHOLD = 0.25


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/digits_coco',
                        help='output directory')
    add_split_arguments(parser)
    parser.add_argument('--max-objects', type=int, default=4,
                        help='at most this many digits per image (at least 1)')
    args = parser.parse_args(argv)
    if args.train < 0 or args.val < 0:
        parser.error('--train and --val must be >= 0')
    if args.size < 64:
        parser.error('--size must be >= 64 (digits are up to 56 pixels)')
    if args.max_objects < 1:
        parser.error('--max-objects must be >= 1')
    return args


def source_digits(seed: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits split per class into train and val pools.

    Returns:
        dict: ``split -> (images, labels)``: float32 ``N x 8 x 8`` images in
        ``[0, 1]`` and int labels.
    """
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng([seed, 1797])
    pools: Dict[str, List[int]] = {'train': [], 'val': []}
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * VAL_FRACTION))
        pools['val'].extend(idx[:n_val].tolist())
        pools['train'].extend(idx[n_val:].tolist())
    images = (digits.images / 16.0).astype(np.float32)
    return {
        split: (images[sorted(idx)], digits.target[sorted(idx)])
        for split, idx in pools.items()
    }


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``size x size x 3`` float background: smooth noise on a random
    colour plus grain."""
    base = rng.uniform(60, 220, size=3)
    cells = int(rng.integers(2, 7))
    field = rng.uniform(-1, 1, size=(cells, cells, 3)).astype(np.float32)
    field = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
    img = base + 40 * field + rng.normal(0, 6, size=(size, size, 3))
    return img.astype(np.float32)


def _overlaps(box: Tuple[int, int, int, int],
              boxes: List[Tuple[int, int, int, int]], gap: int = 2) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap
               and b[1] < y1 + gap for b in boxes)


def make_image(seed: int,
               split: str,
               index: int,
               pool: Tuple[np.ndarray, np.ndarray],
               size: int = 160,
               max_objects: int = 4) -> Tuple[np.ndarray, List[Dict]]:
    """One canvas (BGR uint8) and its digits.

    Args:
        seed (int): The dataset seed.
        split (str): ``'train'`` or ``'val'``.
        index (int): The image's index in its split.
        pool (tuple): ``(images, labels)`` of the split's source digits
            (:func:`source_digits`).
        size (int): Canvas side in pixels.
        max_objects (int): At most this many digits.

    Returns:
        tuple: The image and a list of ``dict(category_id, bbox=[x, y, w,
        h], area)`` (COCO conventions, ``category_id`` = digit + 1).
    """
    rng = np.random.default_rng([seed, SPLITS[split], index])
    images, labels = pool
    img = _background(rng, size)
    objects: List[Dict] = []
    boxes: List[Tuple[int, int, int, int]] = []
    wanted = int(rng.integers(1, max_objects + 1))
    tries = 0
    while len(objects) < wanted and tries < 50:
        tries += 1
        k = int(rng.integers(0, len(labels)))
        side = rng.uniform(20, 56)
        aspect = rng.uniform(0.85, 1.15)
        w = min(int(round(side * aspect)), size)
        h = min(int(round(side / aspect)), size)
        x = int(rng.integers(0, size - w + 1))
        y = int(rng.integers(0, size - h + 1))
        alpha = cv2.resize(images[k], (w, h), interpolation=cv2.INTER_CUBIC)
        alpha = np.clip(alpha, 0, 1)
        ys, xs = np.nonzero(alpha > INK_THRESHOLD * alpha.max())
        if len(xs) < 16:
            continue
        box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1,
               y + int(ys.max()) + 1)
        if _overlaps(box, boxes):
            continue
        # Ink that stands out from the background under it.
        under = img[y:y + h, x:x + w].reshape(-1, 3).mean(0)
        ink = np.where(under > 128, rng.uniform(0, 60, 3),
                       rng.uniform(195, 255, 3))
        patch = img[y:y + h, x:x + w]
        img[y:y + h, x:x + w] = patch * (1 - alpha[..., None]) + \
            ink * alpha[..., None]
        boxes.append(box)
        bw, bh = box[2] - box[0], box[3] - box[1]
        objects.append(
            dict(
                category_id=int(labels[k]) + 1,
                bbox=[float(box[0]), float(box[1]),
                      float(bw), float(bh)],
                area=float(bw * bh)))
    return np.clip(img, 0, 255).astype(np.uint8), objects


def make_digits_coco(out: str,
                     num: Dict[str, int],
                     size: int = 160,
                     seed: int = 0,
                     max_objects: int = 4) -> Dict[str, Dict[str, int]]:
    """Write the images and COCO annotation files of every split.

    Args:
        out (str): Output directory.
        num (dict): ``split -> number of images`` (``train``, ``val``).
        size (int): Image side in pixels.
        seed (int): Seed of everything (source split, layouts, colours).
        max_objects (int): At most this many digits per image.

    Returns:
        dict: ``split -> dict(images, objects)``.
    """
    pools = source_digits(seed)
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    return {
        split: write_coco_split(
            out, split, count,
            partial(make_image, seed, split, pool=pools[split], size=size,
                    max_objects=max_objects), categories)
        for split, count in num.items()
    }


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    stats = make_digits_coco(
        args.out,
        dict(train=args.train, val=args.val),
        size=args.size,
        seed=args.seed,
        max_objects=args.max_objects)
    print(f'{describe_coco_stats(args.out, stats, "digits")} in '
          f'{time.time() - start:.1f} s')
    return stats


if __name__ == '__main__':
    main()
