# IFSO pruning of a trained RTMDet-tiny (mmdet 300e, COCO) to 50% of its FLOPs
# while it keeps training (shortest diff from mmdet's config; lr and interval
# as the RetinaNet config, after MMRazor's Group Fisher detection configs).
# The head shares its convs across levels (separate BNs): the shared convs'
# channels are one unit per conv. Keeps the upstream hooks (EMA, pipeline
# switch) and adds pruning.
# With the EMA hook, every checkpoint's state_dict (flops_XX.pth included)
# holds the EMA weights (the training weights are under ema_state_dict); the
# pruning hook keeps the EMA copy's masks equal to the model's, so
# tools/export_pruned.py exports the EMA model, the one mmdet evaluates.
_base_ = [
    'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    '../../_base_/pruning/ifso_det.py'
]
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

pretrained_ckpt = 'https://download.openmmlab.com/mmdetection/v3.0/rtmdet/rtmdet_tiny_8xb32-300e_coco/rtmdet_tiny_8xb32-300e_coco_20220902_112414-78e30dcc.pth'  # noqa: E501
target_flops = 0.5  # fraction of the FLOPs that remains
interval = 10  # training iterations between two pruning steps
lr_ratio = 0.1  # pruning lr = training lr * lr_ratio
input_shape = (1, 3, 640, 640)  # FLOPs are counted at this size

architecture = _base_.model
model = dict(_base_.ifso_model, _delete_=True, architecture=architecture)
model['mutator']['demo_input']['input_shape'] = input_shape
load_from = pretrained_ckpt

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * lr_ratio))

custom_hooks = _base_.custom_hooks + [
    dict(_base_.ifso_hook, target_flops=target_flops, interval=interval)
]
