# Test the pruned MobileNetV2:
#   python tools/test.py \
#     configs/ifso/classification/mobilenet_v2/ifso_deploy_mobilenet-v2_8xb32_in1k.py \
#     work_dirs/ifso_finetune_mobilenet-v2_8xb32_in1k/epoch_300.pth
_base_ = ['mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py.
structure = 'work_dirs/ifso_prune_mobilenet-v2_8xb32_in1k/export/structure.json'  # noqa: E501

# The upstream model with its channels cut as the structure says. Its fields
# stay where the upstream tools read them (cfg.model.backbone, ...), so
# mmpretrain's get_model / mmdet's init_detector take this config as is.
model = dict(
    type='mmifso.PrunedModel',
    architecture_type=_base_.model.type,
    structure=structure)
