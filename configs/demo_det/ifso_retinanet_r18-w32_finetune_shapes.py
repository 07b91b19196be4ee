# Fine-tune the exported (physically pruned) shapes RetinaNet.
_base_ = ['./retinanet_r18-w32_fpn_1xb16-48e_shapes.py']

# The baseline's model with its channels cut as the structure says; its
# fields stay where mmdet's init_detector / mmpretrain's get_model read them.
model = dict(
    type='mmifso.PrunedModel',
    architecture_type=_base_.model.type,
    # Written by tools/export_pruned.py (tools/demo_det.py passes the paths).
    structure='work_dirs/demo_det/export/structure.json')
load_from = 'work_dirs/demo_det/export/pruned.pth'

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs,
         T_max=max_epochs, eta_min=1e-5)
]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=max_epochs,
                    max_keep_ckpts=1))
