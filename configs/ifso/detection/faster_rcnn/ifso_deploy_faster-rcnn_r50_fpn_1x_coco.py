# Test the pruned Faster R-CNN R50-FPN:
#   python tools/test.py \
#     configs/ifso/detection/faster_rcnn/ifso_deploy_faster-rcnn_r50_fpn_1x_coco.py \
#     work_dirs/ifso_finetune_faster-rcnn_r50_fpn_1x_coco/CHECKPOINT.pth
# or with mmdet's own APIs (init_detector(THIS_CONFIG, CHECKPOINT)).
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py.
structure = 'work_dirs/ifso_prune_faster-rcnn_r50_fpn_1x_coco/export/structure.json'  # noqa: E501

# The upstream model with its channels cut as the structure says. Its fields
# stay where the upstream tools read them (cfg.model.backbone, ...), so
# mmdet's init_detector takes this config as is.
model = dict(
    type='mmifso.PrunedModel',
    architecture_type=_base_.model.type,
    structure=structure)
