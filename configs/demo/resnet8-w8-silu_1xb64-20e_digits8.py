# Small baseline for the converged loss-change fidelity benchmark
# (tools/analysis/loss_change_fidelity.py --retrain converged): ResNet-8
# (CIFAR style, widths 8/16/32, SiLU) on scikit-learn's
# digits at their native 8x8 resolution. One full-batch L-BFGS retrain on
# 512 samples takes seconds on one CPU core. Needs no download. SiLU
# instead of ReLU: IFSO's estimator (implicit-function theorem) needs a twice
# differentiable loss, and with ReLU kinks L-BFGS stalls far above a tight
# gradient tolerance.
#
# Train (about a minute on one core):
#   python tools/train.py configs/demo/resnet8-w8-silu_1xb64-20e_digits8.py \
#       --work-dir work_dirs/digits8
# Converged fidelity (see docs/criteria.md):
#   OMP_NUM_THREADS=1 python tools/analysis/loss_change_fidelity.py \
#       configs/demo/resnet8-w8-silu_1xb64-20e_digits8.py \
#       work_dirs/digits8/epoch_20.pth --retrain converged --converge-start
# Add --retrain-params '^head\.' to retrain the classifier only (convex in
# the retrained weights; about 10 minutes for 60 channels on one core).
_base_ = ['./resnet20_1xb64-30e_digits.py']

model = dict(
    backbone=dict(depth=8, base_channels=8, act_cfg=dict(type='SiLU')),
    head=dict(in_channels=32))

train_pipeline = [
    dict(type='RandomCrop', crop_size=8, padding=1),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]
train_dataloader = dict(
    dataset=dict(image_size=8, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(image_size=8, pipeline=test_pipeline))
test_dataloader = val_dataloader

param_scheduler = dict(type='CosineAnnealingLR', by_epoch=True, T_max=20)
train_cfg = dict(by_epoch=True, max_epochs=20, val_interval=20)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=20, max_keep_ckpts=1))
