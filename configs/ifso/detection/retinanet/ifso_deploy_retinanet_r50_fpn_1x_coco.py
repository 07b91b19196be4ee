# Test the pruned RetinaNet R50-FPN:
#   python tools/test.py \
#     configs/ifso/detection/retinanet/ifso_deploy_retinanet_r50_fpn_1x_coco.py \
#     work_dirs/ifso_finetune_retinanet_r50_fpn_1x_coco/epoch_12.pth
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py.
structure = 'work_dirs/ifso_prune_retinanet_r50_fpn_1x_coco/export/structure.json'  # noqa: E501

# The upstream model with its channels cut as the structure says. Its fields
# stay where the upstream tools read them (cfg.model.backbone, ...), so
# mmpretrain's get_model / mmdet's init_detector take this config as is.
model = dict(
    type='mmifso.PrunedModel',
    architecture_type=_base_.model.type,
    structure=structure)
