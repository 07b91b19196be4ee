# Fine-tune the exported (physically pruned) digits model.
_base_ = ['./resnet20_1xb64-30e_digits.py']

# The baseline's model with its channels cut as the structure says; its
# fields stay where mmdet's init_detector / mmpretrain's get_model read them.
model = dict(
    type='mmifso.PrunedModel',
    architecture_type=_base_.model.type,
    # Written by tools/export_pruned.py (tools/demo.py passes the real path).
    structure='work_dirs/demo/export/structure.json')
load_from = 'work_dirs/demo/export/pruned.pth'

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=5e-4))
param_scheduler = dict(type='CosineAnnealingLR', by_epoch=True, T_max=15)
train_cfg = dict(by_epoch=True, max_epochs=15, val_interval=15)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=15))
