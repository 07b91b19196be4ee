# Fine-tuning of the exported (physically pruned) digits RetinaNet: the
# shipped shapes-demo fine-tune config (12 epochs, cosine from lr 1e-3) on
# the dataset described in digits_data.py.
#   python tools/train.py \
#     configs/examples/own_data/ifso_retinanet_r18-w32_finetune_digits.py
_base_ = [
    '../../demo_det/ifso_retinanet_r18-w32_finetune_shapes.py',
    './digits_data.py'
]

# The export of the pruning run (tools/export_pruned.py ... --out-dir
# work_dirs/ifso_retinanet_r18-w32_prune_digits/export).
export_dir = 'work_dirs/ifso_retinanet_r18-w32_prune_digits/export/'
load_from = export_dir + 'pruned.pth'

# Nothing to edit below: every field follows from `own_data` (and
# export_dir). They are set again because the shipped config substituted its
# own data (the shapes) into them when it was read.
image_size = _base_.own_data.image_size
classes = _base_.own_data.classes
data_root = _base_.own_data.data_root
metainfo = dict(classes=classes, palette=_base_.own_data.palette)
model = dict(
    bbox_head=dict(num_classes=len(classes)),
    structure=export_dir + 'structure.json')
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
