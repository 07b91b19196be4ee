# VGG-16 with BN for 32x32 inputs, the CIFAR variant used by pruning papers
# (13 conv layers, 313M conv/linear MACs): mmpretrain's VGG without its
# classifier (num_classes=-1) and without the last max-pool, so the 2x2
# feature map of the last stage is averaged into a 512-d vector for a
# single linear classifier.
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VGG',
        depth=16,
        norm_cfg=dict(type='BN'),
        num_classes=-1,
        out_indices=(4, ),
        with_last_pool=False),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=512,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
    ))
