# IFSO pruning of a trained ResNet-56 to 50% of its FLOPs while it keeps
# training, with the settings of the IFSO release: SGD lr 0.1, momentum 0.9,
# weight decay 1e-4 (also IFSO's lambda), batch 128 on one GPU, one channel
# removed every 10 iterations. The hook writes work_dir/flops_90.pth ...
# flops_50.pth; export the last one with
#   python tools/export_pruned.py \
#     configs/ifso/classification/resnet56/ifso_prune_resnet56_1xb128_cifar10.py \
#     work_dirs/ifso_prune_resnet56_1xb128_cifar10/flops_50.pth \
#     --out-dir work_dirs/ifso_prune_resnet56_1xb128_cifar10/export
_base_ = ['./resnet56_8xb16_cifar10.py', '../../_base_/pruning/ifso_cls.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# The trained baseline (tools/train.py resnet56_8xb16_cifar10.py).
pretrained_ckpt = 'work_dirs/resnet56_8xb16_cifar10/epoch_200.pth'
target_flops = 0.5  # fraction of the FLOPs that remains
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
