# Baseline on your own COCO-format data: the shipped shapes-demo RetinaNet
# (ResNet-18 at half width, 64-channel FPN and head, trained from scratch,
# 48 epochs) on the dataset described in digits_data.py. Train it with
#   python tools/train.py \
#     configs/examples/own_data/retinanet_r18-w32_fpn_digits.py
# (writes work_dirs/retinanet_r18-w32_fpn_digits/epoch_48.pth).
_base_ = [
    '../../demo_det/retinanet_r18-w32_fpn_1xb16-48e_shapes.py',
    './digits_data.py'
]

# Nothing to edit below: every field follows from `own_data`. They are set
# again because the shipped config substituted its own data (the shapes)
# into them when it was read.
image_size = _base_.own_data.image_size
classes = _base_.own_data.classes
data_root = _base_.own_data.data_root
metainfo = dict(classes=classes, palette=_base_.own_data.palette)
model = dict(bbox_head=dict(num_classes=len(classes)))
train_pipeline = [
    dict(step, scale=(image_size, image_size))
    if step.type == 'Resize' else step for step in _base_.train_pipeline
]
test_pipeline = [
    dict(step, scale=(image_size, image_size))
    if step.type == 'Resize' else step for step in _base_.test_pipeline
]
train_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file=_base_.own_data.train_ann_file,
        data_prefix=dict(img=_base_.own_data.train_img_prefix),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file=_base_.own_data.val_ann_file,
        data_prefix=dict(img=_base_.own_data.val_img_prefix),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + _base_.own_data.val_ann_file)
test_evaluator = val_evaluator
