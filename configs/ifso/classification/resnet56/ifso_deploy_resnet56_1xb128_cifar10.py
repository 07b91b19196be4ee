# Test the pruned ResNet-56:
#   python tools/test.py \
#     configs/ifso/classification/resnet56/ifso_deploy_resnet56_1xb128_cifar10.py \
#     work_dirs/ifso_finetune_resnet56_1xb128_cifar10/epoch_200.pth
# (or the exported pruned.pth, to test the pruned model before fine-tuning).
_base_ = ['./resnet56_8xb16_cifar10.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py.
structure = 'work_dirs/ifso_prune_resnet56_1xb128_cifar10/export/structure.json'  # noqa: E501

# The upstream model with its channels cut as the structure says. Its fields
# stay where the upstream tools read them (cfg.model.backbone, ...), so
# mmpretrain's get_model / mmdet's init_detector take this config as is.
model = dict(
    type='mmifso.PrunedModel',
    architecture_type=_base_.model.type,
    structure=structure)
