# IFSO pruning of a trained MobileNetV2 on ImageNet-1k to 65% of its FLOPs
# while it keeps training; target, lr ratio and interval follow MMRazor's
# Group Fisher MobileNetV2 config (lr = 0.045 x 0.1125, one channel every 25
# iterations). IFSO's lambda is the weight decay, 4e-5. Export with
#   python tools/export_pruned.py \
#     configs/ifso/mobilenet_v2/ifso_prune_mobilenet-v2_8xb32_in1k.py \
#     work_dirs/ifso_prune_mobilenet-v2_8xb32_in1k/flops_65.pth \
#     --out-dir work_dirs/ifso_prune_mobilenet-v2_8xb32_in1k/export
_base_ = ['mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

pretrained_ckpt = 'https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth'  # noqa: E501
target_flops = 0.65  # fraction of the FLOPs that remains
interval = 25  # training iterations between two pruning steps
lr_ratio = 0.1125  # pruning lr = training lr * lr_ratio
input_shape = (1, 3, 224, 224)

architecture = _base_.model
model = dict(
    _delete_=True,
    type='mmifso.PruningAlgorithm',
    architecture=architecture,
    mutator=dict(
        type='mmifso.ChannelMutator',
        demo_input=dict(type='mmifso.DemoInput', input_shape=input_shape),
        min_channels=1,
        frozen='error'))
load_from = pretrained_ckpt

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * lr_ratio))

custom_hooks = [
    dict(
        type='mmifso.PruningHook',
        # lam=None: lambda is the optimizer's weight decay (4e-5).
        importance=dict(
            type='mmifso.IFSOImportance',
            lam=None,
            inverse='neumann',
            neumann_order=0,
            hvp='exact'),
        target_flops=target_flops,
        interval=interval,
        channels_per_step=1,
        score_batches=2,
        cost='acts',
        cost_power=0.5,
        # flops_65.pth is always written (the target is added).
        save_thresholds=(0.9, 0.8, 0.7),
        stop_at_target=True),
]
