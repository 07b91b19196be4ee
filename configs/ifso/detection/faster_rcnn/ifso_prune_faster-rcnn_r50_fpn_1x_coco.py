# IFSO pruning of a trained Faster R-CNN R50-FPN (mmdet 1x, COCO) to 50% of its
# FLOPs while it keeps training (shortest diff from mmdet's config; lr and
# interval as the RetinaNet config, after MMRazor's Group Fisher detection
# configs).
# Two-stage: DetDemoInput builds real DetDataSamples and runs the RoI head on
# num_proposals fixed boxes per image (1000, mmdet's test-time RPN output), so
# RoI-head FLOPs count 1000 RoIs per image. The RPN outputs and the RoI
# head's fc_cls/fc_reg are predictions and never pruned.
_base_ = [
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    '../../_base_/pruning/ifso_det.py'
]
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

pretrained_ckpt = 'https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/faster_rcnn_r50_fpn_1x_coco/faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth'  # noqa: E501
target_flops = 0.5  # fraction of the FLOPs that remains
interval = 10  # training iterations between two pruning steps
lr_ratio = 0.1  # pruning lr = training lr * lr_ratio
input_shape = (1, 3, 800, 1333)  # FLOPs are counted at this size

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
