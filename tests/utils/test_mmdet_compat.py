"""mmifso.utils.mmdet_compat: mmdet 3.3.0's SSDHead predicts once the module
is imported (as the SSDlite configs do through custom_imports)."""
import torch
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

from mmifso.utils.mmdet_compat import fix_ssd_head_predict


def test_ssd_head_predicts():
    from mmdet.models.dense_heads import SSDHead
    from mmdet.utils import register_all_modules
    register_all_modules()
    fix_ssd_head_predict()  # idempotent: the import already applied it
    assert not fix_ssd_head_predict()
    torch.manual_seed(0)
    head = SSDHead(
        num_classes=3,
        in_channels=(8, 8),
        anchor_generator=dict(
            type='SSDAnchorGenerator', scale_major=False, input_size=64,
            strides=[16, 32], ratios=[[2], [2]], min_sizes=[16, 32],
            max_sizes=[32, 64]),
        test_cfg=ConfigDict(
            nms_pre=100,
            nms=dict(type='nms', iou_threshold=0.5),
            min_bbox_size=0,
            score_thr=0.0,
            max_per_img=10))
    # SSDHead sets no loss_cls of its own; the class attribute serves.
    assert 'loss_cls' not in vars(head) and SSDHead.loss_cls is None
    feats = (torch.rand(1, 8, 4, 4), torch.rand(1, 8, 2, 2))
    cls_scores, bbox_preds = head(feats)
    (result, ) = head.predict_by_feat(
        cls_scores, bbox_preds,
        batch_img_metas=[dict(img_shape=(64, 64), scale_factor=(1., 1.))],
        rescale=False)
    assert isinstance(result, InstanceData)
    assert len(result.bboxes) > 0
    assert result.labels.max() < 3  # softmax over 3 classes + background
