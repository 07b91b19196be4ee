# IFSO pruning of a trained RetinaNet R50-FPN (mmdet 1x, COCO) to 50% of its
# FLOPs while it keeps training, as MMRazor's Group Fisher RetinaNet config:
# lr = training lr x 0.1, one channel removed every 10 iterations, the
# backbone unfrozen (frozen stages would be left out: their units have no
# gradients). The hook writes work_dir/flops_90.pth ... flops_50.pth and
# stops training at the target; export the last one with
#   python tools/export_pruned.py \
#     configs/ifso/detection/retinanet/ifso_prune_retinanet_r50_fpn_1x_coco.py \
#     work_dirs/ifso_prune_retinanet_r50_fpn_1x_coco/flops_50.pth \
#     --out-dir work_dirs/ifso_prune_retinanet_r50_fpn_1x_coco/export
# Coupled channels: the FPN lateral convs (top-down adds) form one unit, the
# FPN outputs (one head shared by the five levels) another; retina_cls and
# retina_reg are predictions and never pruned. FLOPs count the shared head on
# every level.
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    '../../_base_/pruning/ifso_det.py'
]
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

pretrained_ckpt = 'https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_r50_fpn_1x_coco/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth'  # noqa: E501
target_flops = 0.5  # fraction of the FLOPs that remains
interval = 10  # training iterations between two pruning steps
lr_ratio = 0.1  # pruning lr = training lr * lr_ratio
# FLOPs are counted at mmdet's reference test size.
input_shape = (1, 3, 800, 1333)

architecture = _base_.model
architecture.backbone.frozen_stages = -1
model = dict(_base_.ifso_model, _delete_=True, architecture=architecture)
model['mutator']['demo_input']['input_shape'] = input_shape
load_from = pretrained_ckpt

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * lr_ratio))

custom_hooks = [
    dict(_base_.ifso_hook, target_flops=target_flops, interval=interval)
]
