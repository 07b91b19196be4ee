# IFSO pruning of a trained ResNet-50 on ImageNet-1k to 50% of its FLOPs
# while it keeps training. As in MMRazor's Group Fisher configs, the lr is
# the training lr x 0.04 (pruning is unstable at the full lr) and one channel
# is removed every 25 iterations. The hook writes work_dir/flops_90.pth ...
# flops_50.pth and stops training at the target; export the last one with
#   python tools/export_pruned.py \
#     configs/ifso/classification/resnet50/ifso_prune_resnet50_8xb32_in1k.py \
#     work_dirs/ifso_prune_resnet50_8xb32_in1k/flops_50.pth \
#     --out-dir work_dirs/ifso_prune_resnet50_8xb32_in1k/export
_base_ = [
    'mmpretrain::resnet/resnet50_8xb32_in1k.py',
    '../../_base_/pruning/ifso_cls.py'
]
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

pretrained_ckpt = 'https://download.openmmlab.com/mmclassification/v0/resnet/resnet50_8xb32_in1k_20210831-ea4938fc.pth'  # noqa: E501
target_flops = 0.5  # fraction of the FLOPs that remains
interval = 25  # training iterations between two pruning steps
lr_ratio = 0.04  # pruning lr = training lr * lr_ratio
input_shape = (1, 3, 224, 224)

architecture = _base_.model
model = dict(_base_.ifso_model, _delete_=True, architecture=architecture)
model['mutator']['demo_input']['input_shape'] = input_shape
load_from = pretrained_ckpt

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * lr_ratio))

custom_hooks = [
    dict(_base_.ifso_hook, target_flops=target_flops, interval=interval)
]
