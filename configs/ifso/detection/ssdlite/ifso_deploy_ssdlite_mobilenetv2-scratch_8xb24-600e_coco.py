# Test the pruned SSDlite MobileNetV2:
#   python tools/test.py \
#     configs/ifso/detection/ssdlite/ifso_deploy_ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py \
#     work_dirs/ifso_finetune_ssdlite_mobilenetv2-scratch_8xb24-600e_coco/CHECKPOINT.pth
# or with mmdet's own APIs (init_detector(THIS_CONFIG, CHECKPOINT)).
_base_ = ['mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py']
# mmifso.utils.mmdet_compat: mmdet 3.3.0's SSDHead cannot predict without it.
custom_imports = dict(
    imports=['mmifso', 'mmifso.utils.mmdet_compat'],
    allow_failed_imports=False)

# Written by tools/export_pruned.py.
structure = 'work_dirs/ifso_prune_ssdlite_mobilenetv2-scratch_8xb24-600e_coco/export/structure.json'  # noqa: E501

# The upstream model with its channels cut as the structure says. Its fields
# stay where the upstream tools read them (cfg.model.backbone, ...), so
# mmdet's init_detector takes this config as is.
model = dict(
    type='mmifso.PrunedModel',
    architecture_type=_base_.model.type,
    structure=structure)
