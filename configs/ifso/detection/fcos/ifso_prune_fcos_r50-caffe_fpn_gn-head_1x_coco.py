# IFSO pruning of a trained FCOS R50-FPN (GN head, mmdet 1x, COCO) to 50% of
# its FLOPs while it keeps training (shortest diff from mmdet's config; lr and
# interval as the RetinaNet config, after MMRazor's Group Fisher detection
# configs).
# The GroupNorm head (32 groups) loses whole GN groups (blocks of 8 channels)
# and the exported GroupNorms have fewer groups. The caffe-style backbone's
# BatchNorms are frozen upstream; they are made trainable here, since units
# with frozen parameters are left out (frozen='skip').
_base_ = [
    'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    '../../_base_/pruning/ifso_det.py'
]
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

pretrained_ckpt = 'https://download.openmmlab.com/mmdetection/v2.0/fcos/fcos_r50_caffe_fpn_gn-head_1x_coco/fcos_r50_caffe_fpn_gn-head_1x_coco-821213aa.pth'  # noqa: E501
target_flops = 0.5  # fraction of the FLOPs that remains
interval = 10  # training iterations between two pruning steps
lr_ratio = 0.1  # pruning lr = training lr * lr_ratio
input_shape = (1, 3, 800, 1333)  # FLOPs are counted at this size

architecture = _base_.model
architecture.backbone.frozen_stages = -1
architecture.backbone.norm_cfg = dict(type='BN', requires_grad=True)
model = dict(_base_.ifso_model, _delete_=True, architecture=architecture)
model['mutator']['demo_input']['input_shape'] = input_shape
load_from = pretrained_ckpt

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * lr_ratio))

custom_hooks = [
    dict(_base_.ifso_hook, target_flops=target_flops, interval=interval)
]
