# IFSO pruning of a trained SSDlite MobileNetV2 (mmdet 600e, COCO) to 50% of
# its FLOPs while it keeps training (shortest diff from mmdet's config; lr and
# interval as the RetinaNet config, after MMRazor's Group Fisher detection
# configs).
# Depthwise convs tie their input and output channels; the extra layers'
# 1x1 maps at 320 px are handled in eval mode.
_base_ = [
    'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
    '../../_base_/pruning/ifso_det.py'
]
# mmifso.utils.mmdet_compat: mmdet 3.3.0's SSDHead cannot predict without it.
custom_imports = dict(
    imports=['mmifso', 'mmifso.utils.mmdet_compat'],
    allow_failed_imports=False)

pretrained_ckpt = 'https://download.openmmlab.com/mmdetection/v2.0/ssd/ssdlite_mobilenetv2_scratch_600e_coco/ssdlite_mobilenetv2_scratch_600e_coco_20210629_110627-974d9307.pth'  # noqa: E501
target_flops = 0.5  # fraction of the FLOPs that remains
interval = 10  # training iterations between two pruning steps
lr_ratio = 0.1  # pruning lr = training lr * lr_ratio
input_shape = (1, 3, 320, 320)  # FLOPs are counted at this size

architecture = _base_.model
model = dict(_base_.ifso_model, _delete_=True, architecture=architecture)
model['mutator']['demo_input']['input_shape'] = input_shape
load_from = pretrained_ckpt

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * lr_ratio))

# mmdet's own hooks (class-number and loss checks) stay.
custom_hooks = _base_.custom_hooks + [
    dict(_base_.ifso_hook, target_flops=target_flops, interval=interval)
]
