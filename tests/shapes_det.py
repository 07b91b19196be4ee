"""Shipped detection configs moved onto the offline shapes-COCO data.

Shared by the end-to-end detection test (tests/tools/
test_detection_coco_runs.py) and the EMA test (tests/engine/test_hooks/
test_ema.py). A user with COCO only sets ``data_root``; here the data is
generated (:func:`make_shapes_coco`, COCO's own layout), so a few things
more are changed and nothing else: the class names and the heads' number of
classes (the shapes' five), a small image scale, no data workers, a one-epoch
schedule with validation, no download (pretrained backbone initialisation,
YOLOX's multi-scale batch resize).
"""
from typing import Any, Optional

from mmengine.config import Config

from mmifso.datasets.shapes import (COCO_SPLITS, SHAPES_CLASSES,
                                    make_shapes_coco)

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def load_config(path: str) -> Config:
    """``Config.fromfile(path)`` without yapf formatting of its text: the
    Runner formats the whole config for its log, its dump and every
    checkpoint's meta, about ten seconds per Runner for a detector config;
    the unformatted text is the same Python. (mmengine 0.10.7's
    ``Config.fromfile`` ignores its ``format_python_code`` argument for
    ordinary configs, hence the copy.)"""
    cfg = Config.fromfile(path)
    return Config(cfg.to_dict(),
                  cfg_text=cfg.text,
                  filename=cfg.filename,
                  format_python_code=False)


def shapes_coco(root: str,
                size: int,
                num_train: int = 4,
                num_val: int = 2) -> str:
    """Write a shapes-COCO set in COCO's layout (``train2017/``,
    ``annotations/instances_val2017.json``, ...) under ``root``, so the
    configs' ``ann_file`` and ``data_prefix`` stay as they are.

    Returns:
        str: ``root``.
    """
    make_shapes_coco(root,
                     size=size,
                     seed=0,
                     splits=dict(zip(COCO_SPLITS, (num_train, num_val))))
    return root


def _walk(cfg: Any, key: str, fix) -> None:
    """Call ``fix(d)`` on every dict of the (nested) ``cfg`` that has
    ``key``."""
    if isinstance(cfg, dict):
        if key in cfg:
            fix(cfg)
        for value in cfg.values():
            _walk(value, key, fix)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            _walk(value, key, fix)


def detector_cfg(cfg: Config) -> dict:
    """The detector's own fields: ``model.architecture`` of a prune config,
    ``model`` itself for a deploy or fine-tune config (flat
    ``PrunedModel``)."""
    model = cfg.model
    return model.architecture if 'architecture' in model else model


def _small_detector(model: dict) -> None:
    """Five classes, no pretrained download, no multi-scale batch resize."""

    def classes(d):
        d['num_classes'] = len(SHAPES_CLASSES)

    def no_download(d):
        init = d['init_cfg']
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            d['init_cfg'] = None

    _walk(model, 'num_classes', classes)
    _walk(model, 'init_cfg', no_download)
    if model.get('data_preprocessor'):
        model['data_preprocessor']['batch_augments'] = None


def _coco_datasets(dataset: dict) -> tuple:
    """``(wrapper, coco)``: the dataset wrapper (``RepeatDataset``,
    ``MultiImageMixDataset``) or None, and the COCO dataset it wraps."""
    if 'dataset' not in dataset:
        return None, dataset
    return dataset, dataset['dataset']


def on_shapes(cfg: Config,
              data_root: str,
              size: int,
              work_dir: str,
              name: str,
              load_from: Optional[str] = None) -> Config:
    """Move a shipped detection config onto shapes-COCO data, in place.

    Args:
        cfg (Config): A prune, deploy or fine-tune config (or an upstream
            mmdet config).
        data_root (str): The :func:`shapes_coco` directory.
        size (int): Image scale (``Resize`` to ``size x size``).
        work_dir (str): The run's work directory.
        name (str): Its experiment name (unique per Runner: two Runners of
            one name share a logger).
        load_from (str, optional): The checkpoint to start from.

    Returns:
        Config: ``cfg``.
    """
    root = data_root.rstrip('/') + '/'
    load = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True)
    ]
    rest = [
        dict(type='Resize', scale=(size, size), keep_ratio=True),
        dict(type='PackDetInputs')
    ]
    for loader_name in LOADERS:
        loader = cfg[loader_name]
        loader.update(batch_size=2, num_workers=0, persistent_workers=False)
        wrapper, coco = _coco_datasets(loader.dataset)
        coco.update(data_root=root, metainfo=dict(classes=SHAPES_CLASSES))
        if wrapper is not None and 'pipeline' in wrapper:
            # MultiImageMixDataset (YOLOX): loading in the wrapped dataset.
            coco.pipeline, wrapper.pipeline = load, rest
        else:
            coco.pipeline = load + rest
        if wrapper is not None and 'times' in wrapper:
            wrapper.times = 1  # RepeatDataset (SSDlite)
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = root + 'annotations/instances_val2017.json'
    _small_detector(detector_cfg(cfg))
    cfg.train_cfg.update(max_epochs=1, val_interval=1)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    cfg.load_from = load_from
    cfg.work_dir = work_dir
    cfg.experiment_name = name
    cfg.randomness = dict(seed=0)
    return cfg


def pruning_hook(cfg: Config) -> dict:
    """The config of the prune config's ``PruningHook`` (to change it in
    place)."""
    [hook] = [h for h in cfg.custom_hooks if 'PruningHook' in h['type']]
    return hook
