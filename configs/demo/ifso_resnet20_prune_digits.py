# IFSO pruning of the digits baseline to 50% FLOPs while training continues.
_base_ = ['./resnet20_1xb64-30e_digits.py']

model = dict(
    _delete_=True,
    type='mmifso.PruningAlgorithm',
    architecture=_base_.model,
    mutator=dict(
        type='mmifso.ChannelMutator',
        demo_input=dict(type='mmifso.DemoInput', input_shape=(1, 3, 32, 32))))

# The trained baseline (tools/demo.py passes the real path).
load_from = 'work_dirs/demo/baseline/epoch_30.pth'

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4))
param_scheduler = []
train_cfg = dict(by_epoch=True, max_epochs=20, val_interval=100)

custom_hooks = [
    dict(
        type='mmifso.PruningHook',
        importance=dict(type='mmifso.IFSOImportance', hvp='exact'),
        target_flops=0.5,
        # Score one batch in the last iteration before each pruning step
        # (every 12): the pruning phase costs about 1.5x plain training
        # instead of 6x, with the same or better accuracy on digits and
        # shapes-COCO (docs/benchmarks.md, "Scoring window").
        interval=12,
        score_window=1,
        channels_per_step=8,
        score_batches=1,
        cost='acts',
        cost_power=0.5),
]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=-1))
