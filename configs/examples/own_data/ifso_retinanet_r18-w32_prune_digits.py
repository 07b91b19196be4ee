# IFSO pruning of the baseline of retinanet_r18-w32_fpn_digits.py to 50% of
# its FLOPs while it keeps training: the shipped shapes-demo prune config
# (lr, PruningHook settings) on the dataset described in digits_data.py.
#   python tools/train.py \
#     configs/examples/own_data/ifso_retinanet_r18-w32_prune_digits.py
# writes work_dirs/ifso_retinanet_r18-w32_prune_digits/flops_50.pth; export
# it with tools/export_pruned.py (docs/own_data.md).
_base_ = [
    '../../demo_det/ifso_retinanet_r18-w32_prune_shapes.py',
    './digits_data.py'
]

# The baseline checkpoint (tools/train.py's default work dir of the baseline
# config).
load_from = 'work_dirs/retinanet_r18-w32_fpn_digits/epoch_48.pth'

# Nothing to edit below: every field follows from `own_data`. They are set
# again because the shipped config substituted its own data (the shapes)
# into them when it was read. The detector is `model.architecture` here.
image_size = _base_.own_data.image_size
classes = _base_.own_data.classes
data_root = _base_.own_data.data_root
metainfo = dict(classes=classes, palette=_base_.own_data.palette)
model = dict(
    architecture=dict(bbox_head=dict(num_classes=len(classes))),
    mutator=dict(demo_input=dict(input_shape=(1, 3, image_size,
                                              image_size))))
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
