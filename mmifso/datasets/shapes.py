"""Synthetic COCO-format detection data: geometric shapes on textures.

Offline and deterministic: image ``i`` of a split depends only on ``(seed,
split, i, size)``, so a larger set starts with the images of a smaller one.
Each image has one to four filled shapes of random colour, size and rotation
on a textured background (smooth noise, stripes, checkerboards, gradients,
grain); the box of a shape is the tight box of its drawn pixels.

Used by ``tools/misc/make_shapes_coco.py`` and ``tools/demo_det.py``; load
the result with mmdet's ``CocoDataset`` and ``metainfo=dict(classes=
SHAPES_CLASSES)``.
"""
import json
import math
import os.path as osp
import zlib
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .coco_files import write_coco_split

#: Category names, ids 1..5 in the annotation files.
SHAPES_CLASSES = ('circle', 'square', 'triangle', 'cross', 'star')
SHAPES_PALETTE = [(220, 20, 60), (0, 128, 255), (0, 200, 0), (255, 160, 0),
                  (160, 32, 240)]
SPLITS = {'train': 0, 'val': 1}
#: COCO 2017's split names: with them the COCO configs run after changing
#: nothing but ``data_root`` (and the class names).
COCO_SPLITS = ('train2017', 'val2017')


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``size x size x 3`` uint8 background."""
    kind = rng.integers(0, 4)
    base = rng.uniform(40, 215, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # smooth noise: random low-res field, upsampled
        cells = int(rng.integers(3, 9))
        field = rng.uniform(-1, 1, size=(cells, cells, 3)).astype(np.float32)
        field = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
        img = base + 45 * field
    elif kind == 1:  # stripes at a random angle
        angle = rng.uniform(0, math.pi)
        freq = rng.uniform(4, 14)
        wave = np.sin(2 * math.pi * freq *
                      (xx * math.cos(angle) + yy * math.sin(angle)))
        img = base + 35 * wave[..., None] * rng.uniform(0.5, 1, size=3)
    elif kind == 2:  # checkerboard
        cells = int(rng.integers(4, 12))
        board = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2 - 1
        img = base + 30 * board[..., None] * rng.uniform(0.5, 1, size=3)
    else:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        ramp = xx * math.cos(angle) + yy * math.sin(angle)
        img = base + 80 * (ramp[..., None] - 0.5) * rng.uniform(
            0.5, 1, size=3)
    img = img + rng.normal(0, 8, size=(size, size, 3))  # grain
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(kind: str, cx: float, cy: float, r: float,
             angle: float) -> np.ndarray:
    if kind == 'square':
        pts = [(math.cos(angle + math.pi / 4 + k * math.pi / 2),
                math.sin(angle + math.pi / 4 + k * math.pi / 2))
               for k in range(4)]
    elif kind == 'triangle':
        pts = [(math.cos(angle + k * 2 * math.pi / 3),
                math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == 'star':
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = angle + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif kind == 'cross':
        w = 0.33
        base = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1),
                (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(x * ca - y * sa, x * sa + y * ca) for x, y in base]
    else:
        raise ValueError(kind)
    return np.array([(cx + r * x, cy + r * y) for x, y in pts],
                    dtype=np.float32)


def _draw(mask: np.ndarray, kind: str, cx: float, cy: float, r: float,
          angle: float) -> None:
    shift = 4  # sub-pixel precision of cv2's drawing functions
    scale = 1 << shift
    if kind == 'circle':
        cv2.circle(mask, (int(round(cx * scale)), int(round(cy * scale))),
                   int(round(r * scale)), 1, -1, cv2.LINE_8, shift)
    else:
        pts = np.round(_polygon(kind, cx, cy, r, angle) * scale).astype(
            np.int32)
        cv2.fillPoly(mask, [pts], 1, cv2.LINE_8, shift)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) *
             (b[3] - b[1]) - inter)
    return inter / union if union > 0 else 0.0


def make_image(seed: int, split: str, index: int, size: int = 160,
               max_objects: int = 4, min_frac: float = 0.12,
               max_frac: float = 0.4) -> Tuple[np.ndarray, List[Dict]]:
    """One image (BGR uint8) and its objects.

    Returns:
        tuple: the image and a list of ``dict(category_id, bbox=[x, y, w,
        h], area)`` (COCO conventions, ``category_id`` from 1).
    """
    # train/val keep their historic streams; other split names get one of
    # their own, stable across runs (unlike ``hash``).
    split_key = SPLITS.get(split, zlib.crc32(split.encode()) + 2)
    rng = np.random.default_rng([int(seed), split_key, int(index)])
    img = _texture(rng, size)
    objects: List[Dict] = []
    boxes: List[Tuple[float, float, float, float]] = []
    occupied = np.zeros((size, size), np.uint8)
    wanted = int(rng.integers(1, max_objects + 1))
    tries = 0
    while len(objects) < wanted and tries < 50:
        tries += 1
        label = int(rng.integers(0, len(SHAPES_CLASSES)))
        kind = SHAPES_CLASSES[label]
        r = rng.uniform(min_frac, max_frac) * size / 2
        cx = rng.uniform(r * 0.8, size - r * 0.8)
        cy = rng.uniform(r * 0.8, size - r * 0.8)
        angle = rng.uniform(0, 2 * math.pi)
        mask = np.zeros((size, size), np.uint8)
        _draw(mask, kind, cx, cy, r, angle)
        ys, xs = np.nonzero(mask)
        if len(xs) < 16:
            continue
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1),
               float(ys.max() + 1))
        # Shapes never touch, so every box stays tight on visible pixels.
        if any(_iou(box, b) > 0.1 for b in boxes) or (occupied & mask).any():
            continue
        # A colour that stands out from the background under the shape.
        under = img[mask > 0].mean(0)
        colour = rng.uniform(0, 255, size=3)
        for _ in range(10):
            if np.abs(colour - under).sum() > 150:
                break
            colour = rng.uniform(0, 255, size=3)
        shade = rng.uniform(0.85, 1.0, size=(size, size, 1))
        fill = np.clip(colour * shade, 0, 255).astype(np.uint8)
        img[mask > 0] = fill[mask > 0]
        occupied |= mask
        boxes.append(box)
        objects.append(
            dict(
                category_id=label + 1,
                bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]],
                area=float(mask.sum())))
    return img, objects


def make_shapes_coco(out: str,
                     num_train: int = 400,
                     num_val: int = 100,
                     size: int = 160,
                     seed: int = 0,
                     max_objects: int = 4,
                     splits: Optional[Dict[str, int]] = None) -> Dict:
    """Write ``out/{train,val}/*.png`` and
    ``out/annotations/instances_{train,val}.json``.

    Returns:
        dict: Per split, the number of images and of objects.
    """
    splits = splits or dict(train=num_train, val=num_val)
    categories = [
        dict(id=i + 1, name=name, supercategory='shape')
        for i, name in enumerate(SHAPES_CLASSES)
    ]
    # shapes_coco_exists compares info.size with the size asked for.
    info = dict(
        description='mmifso synthetic shapes',
        version='1.0',
        seed=seed,
        size=size)
    return {
        split: write_coco_split(
            out, split, num,
            partial(make_image, seed, split, size=size,
                    max_objects=max_objects), categories, info)
        for split, num in splits.items()
    }


def shapes_coco_exists(out: str, splits: Sequence[str] = ('train', 'val'),
                       num: Optional[Dict[str, int]] = None,
                       size: Optional[int] = None) -> bool:
    """Whether ``out`` holds complete splits (of the given sizes)."""
    for split in splits:
        path = osp.join(out, 'annotations', f'instances_{split}.json')
        if not osp.isfile(path):
            return False
        with open(path) as f:
            coco = json.load(f)
        if num is not None and len(coco['images']) != num[split]:
            return False
        if size is not None and coco.get('info', {}).get('size') != size:
            return False
        if not all(
                osp.isfile(osp.join(out, split, im['file_name']))
                for im in coco['images']):
            return False
    return True
