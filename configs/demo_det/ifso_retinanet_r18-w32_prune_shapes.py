# IFSO pruning of the shapes RetinaNet baseline to 50% of its FLOPs while it
# keeps training (tools/demo_det.py passes the baseline checkpoint).
_base_ = ['./retinanet_r18-w32_fpn_1xb16-48e_shapes.py']

model = dict(
    _delete_=True,
    type='mmifso.PruningAlgorithm',
    architecture=_base_.model,
    mutator=dict(
        type='mmifso.ChannelMutator',
        demo_input=dict(
            type='mmifso.DetDemoInput',
            input_shape=(1, 3, _base_.image_size, _base_.image_size))))

# The trained baseline (tools/demo_det.py passes the real path).
load_from = 'work_dirs/demo_det/baseline/epoch_48.pth'

# Pruning continues training at a constant, lower lr; the hook stops the run
# when the target is reached (max_epochs is an upper bound).
optim_wrapper = dict(optimizer=dict(lr=5e-4))
param_scheduler = []
train_cfg = dict(max_epochs=40, val_interval=100)

custom_hooks = [
    dict(
        type='mmifso.PruningHook',
        # AdamW's weight decay is 1e-4; with neumann_order=0 lambda only
        # scales every score (the ranking does not depend on it).
        importance=dict(type='mmifso.IFSOImportance', lam=1e-4),
        target_flops=0.5,
        # One scored batch per pruning step, every 12 iterations (about
        # 1.4x plain training instead of 4.8x; docs/benchmarks.md,
        # "Scoring window"). It needs ~650 iterations: max_epochs above.
        interval=12,
        score_window=1,
        channels_per_step=12,
        score_batches=1,
        cost='acts',
        cost_power=0.5),
]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=-1))
