# Test the pruned VGG-16-BN (50% FLOPs):
#   python tools/test.py \
#     configs/ifso/classification/vgg16/ifso_deploy-flops50_vgg16bn_1xb128_cifar10.py \
#     work_dirs/ifso_finetune-flops50_vgg16bn_1xb128_cifar10/epoch_200.pth
_base_ = ['./ifso_deploy-flops30_vgg16bn_1xb128_cifar10.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

structure = 'work_dirs/ifso_prune_vgg16bn_1xb128_cifar10/export_flops50/structure.json'  # noqa: E501
model = dict(structure=structure)
