# IFSO pruning of a trained MobileNetV2 on ImageNet-1k to 65% of its FLOPs
# while it keeps training; target, lr ratio and interval follow MMRazor's
# Group Fisher MobileNetV2 config (lr = 0.045 x 0.1125, one channel every 25
# iterations). IFSO's lambda is the weight decay, 4e-5. Export with
#   python tools/export_pruned.py \
#     configs/ifso/classification/mobilenet_v2/ifso_prune_mobilenet-v2_8xb32_in1k.py \
#     work_dirs/ifso_prune_mobilenet-v2_8xb32_in1k/flops_65.pth \
#     --out-dir work_dirs/ifso_prune_mobilenet-v2_8xb32_in1k/export
_base_ = [
    'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
    '../../_base_/pruning/ifso_cls.py'
]
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

pretrained_ckpt = 'https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth'  # noqa: E501
target_flops = 0.65  # fraction of the FLOPs that remains
interval = 25  # training iterations between two pruning steps
lr_ratio = 0.1125  # pruning lr = training lr * lr_ratio
input_shape = (1, 3, 224, 224)

architecture = _base_.model
model = dict(_base_.ifso_model, _delete_=True, architecture=architecture)
model['mutator']['demo_input']['input_shape'] = input_shape
load_from = pretrained_ckpt

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * lr_ratio))

custom_hooks = [
    dict(
        _base_.ifso_hook,
        target_flops=target_flops,
        interval=interval,
        # flops_65.pth is always written (the target is added).
        save_thresholds=(0.9, 0.8, 0.7))
]
