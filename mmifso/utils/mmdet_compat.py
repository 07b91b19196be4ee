"""Fixes for known bugs of the pinned mmdet (3.3.0), applied when this module
is imported: list it in a config's ``custom_imports`` next to ``mmifso``.

* ``SSDHead`` cannot predict (validation, test, ``inference_detector``):
  ``BaseDenseHead._predict_by_feat_single`` reads ``self.loss_cls``, which
  ``SSDHead.__init__`` never sets (open-mmlab/mmdetection#11305, #11780; fix
  proposed in #11524), so every SSD/SSDlite config fails in its first
  validation, with or without mmifso. A class attribute ``loss_cls = None``
  takes the branch SSDHead had before (softmax scores over its classes plus
  background); instances that set their own ``loss_cls`` are not affected.
"""
from mmdet.models.dense_heads import SSDHead


def fix_ssd_head_predict() -> bool:
    """Give ``SSDHead`` the ``loss_cls`` attribute its prediction reads.

    Returns:
        bool: Whether the fix was applied (``False`` where mmdet already has
        the attribute, e.g. once upstream fixes it).
    """
    if hasattr(SSDHead, 'loss_cls'):
        return False
    SSDHead.loss_cls = None
    return True


fix_ssd_head_predict()
