# Baseline: VGG-16 (BN) on CIFAR-10, mmpretrain's CIFAR recipe
# (total batch 128, SGD lr 0.1, 200 epochs, lr x0.1 at epochs 100 and 150).
_base_ = [
    '../../_base_/models/vgg16bn_cifar.py',
    'mmpretrain::_base_/datasets/cifar10_bs16.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py'
]
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)
