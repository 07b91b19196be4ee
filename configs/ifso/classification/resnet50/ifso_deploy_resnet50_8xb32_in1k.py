# Test the pruned ResNet-50:
#   python tools/test.py \
#     configs/ifso/classification/resnet50/ifso_deploy_resnet50_8xb32_in1k.py \
#     work_dirs/ifso_finetune_resnet50_8xb32_in1k/epoch_100.pth
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py.
structure = 'work_dirs/ifso_prune_resnet50_8xb32_in1k/export/structure.json'

# The upstream model with its channels cut as the structure says. Its fields
# stay where the upstream tools read them (cfg.model.backbone, ...), so
# mmpretrain's get_model / mmdet's init_detector take this config as is.
model = dict(
    type='mmifso.PrunedModel',
    architecture_type=_base_.model.type,
    structure=structure)
