# IFSO pruning of a trained VGG-16-BN on CIFAR-10 to 30% of its FLOPs while
# it keeps training (IFSO settings: SGD lr 0.1, momentum 0.9, weight decay
# 1e-4 = lambda, batch 128 on one GPU, one channel every 10 iterations).
# The same run passes 50% on the way and saves work_dir/flops_50.pth, so it
# gives both operating points: export flops_30.pth and/or flops_50.pth with
#   python tools/export_pruned.py \
#     configs/ifso/classification/vgg16/ifso_prune_vgg16bn_1xb128_cifar10.py \
#     work_dirs/ifso_prune_vgg16bn_1xb128_cifar10/flops_30.pth \
#     --out-dir work_dirs/ifso_prune_vgg16bn_1xb128_cifar10/export_flops30
_base_ = ['./vgg16bn_8xb16_cifar10.py', '../../_base_/pruning/ifso_cls.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# The trained baseline (tools/train.py vgg16bn_8xb16_cifar10.py).
pretrained_ckpt = 'work_dirs/vgg16bn_8xb16_cifar10/epoch_200.pth'
target_flops = 0.3  # fraction of the FLOPs that remains
interval = 10  # training iterations between two pruning steps
input_shape = (1, 3, 32, 32)

architecture = _base_.model
model = dict(_base_.ifso_model, _delete_=True, architecture=architecture)
model['mutator']['demo_input']['input_shape'] = input_shape
load_from = pretrained_ckpt

train_dataloader = dict(batch_size=128)
# Constant lr while pruning; training stops when the target is reached.
param_scheduler = []

custom_hooks = [
    dict(_base_.ifso_hook, target_flops=target_flops, interval=interval)
]
