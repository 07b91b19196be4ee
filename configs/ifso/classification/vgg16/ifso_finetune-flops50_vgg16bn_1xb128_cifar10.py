# Fine-tune the exported VGG-16-BN at 50% FLOPs (flops_50.pth of the same
# pruning run, exported to export_flops50); otherwise as the 30% config.
_base_ = ['./ifso_finetune-flops30_vgg16bn_1xb128_cifar10.py']

structure = 'work_dirs/ifso_prune_vgg16bn_1xb128_cifar10/export_flops50/structure.json'  # noqa: E501
model = dict(structure=structure)
load_from = 'work_dirs/ifso_prune_vgg16bn_1xb128_cifar10/export_flops50/pruned.pth'  # noqa: E501
