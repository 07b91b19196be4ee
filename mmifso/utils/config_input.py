"""The image size a config's model is tested at, read from its pipeline."""
from typing import Any, Mapping, Optional, Sequence, Tuple


def _pair(value: Any, order: str) -> Optional[Tuple[int, int]]:
    """``(H, W)`` of a size field: an int (square) or a pair given in
    ``order`` (``'wh'``: mmcv/mmdet ``scale`` and mmpretrain ``crop_size``
    are ``(w, h)``)."""
    if isinstance(value, (int, float)) and value > 0:
        return int(value), int(value)
    if isinstance(value, Sequence) and len(value) == 2 and all(
            isinstance(v, (int, float)) and v > 0 for v in value):
        w, h = (value[0], value[1]) if order == 'wh' else (value[1],
                                                           value[0])
        return int(h), int(w)
    return None


def _test_pipeline(cfg: Any) -> Sequence:
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}
    dataset = loader.get('dataset') or {}
    while isinstance(dataset, Mapping) and 'pipeline' not in dataset and \
            isinstance(dataset.get('dataset'), Mapping):
        dataset = dataset['dataset']  # wrappers: RepeatDataset, ...
    pipeline = dataset.get('pipeline') if isinstance(dataset,
                                                     Mapping) else None
    return pipeline or cfg.get('test_pipeline') or []


def pipeline_input_size(cfg: Any) -> Optional[Tuple[int, int]]:
    """``(H, W)`` of the images the config's test pipeline feeds the model.

    The last size-setting transform of the test pipeline decides: a crop
    (``CenterCrop.crop_size``, also EfficientNet's), a resize to a fixed scale (``Resize.scale``,
    mmdet's ``(w, h)``, taken as the largest image keep-ratio resizing
    gives), a short-edge resize (``ResizeEdge.scale``, square) or mmdet's
    test-time padding (``Pad.size``).

    Args:
        cfg (Config | dict): A full config (its ``test_dataloader``, else
            ``val_dataloader``, else ``test_pipeline``).

    Returns:
        tuple[int, int] | None: ``(H, W)``, or None when the pipeline sets no
        size (e.g. CIFAR images fed as they are).
    """
    size = None
    for step in _test_pipeline(cfg):
        if not isinstance(step, Mapping):
            continue
        kind = str(step.get('type', '')).split('.')[-1]
        if (kind.endswith('CenterCrop') or kind == 'RandomCrop') and \
                'crop_size' in step:
            size = _pair(step['crop_size'], 'wh') or size
        elif kind in ('Resize', 'FixShapeResize') and \
                step.get('scale') is not None:
            size = _pair(step['scale'], 'wh') or size
        elif kind in ('Resize', 'FixShapeResize') and \
                step.get('width') and step.get('height'):
            size = int(step['height']), int(step['width'])
        elif kind == 'ResizeEdge' and step.get('scale') is not None:
            size = _pair(step['scale'], 'wh') or size
        elif kind == 'Pad' and step.get('size') is not None:
            size = _pair(step['size'], 'wh') or size
    return size
