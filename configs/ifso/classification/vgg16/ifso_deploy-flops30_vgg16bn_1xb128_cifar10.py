# Test the pruned VGG-16-BN (30% FLOPs):
#   python tools/test.py \
#     configs/ifso/classification/vgg16/ifso_deploy-flops30_vgg16bn_1xb128_cifar10.py \
#     work_dirs/ifso_finetune-flops30_vgg16bn_1xb128_cifar10/epoch_200.pth
_base_ = ['./vgg16bn_8xb16_cifar10.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py.
structure = 'work_dirs/ifso_prune_vgg16bn_1xb128_cifar10/export_flops30/structure.json'  # noqa: E501

# The upstream model with its channels cut as the structure says. Its fields
# stay where the upstream tools read them (cfg.model.backbone, ...), so
# mmpretrain's get_model / mmdet's init_detector take this config as is.
model = dict(
    type='mmifso.PrunedModel',
    architecture_type=_base_.model.type,
    structure=structure)
