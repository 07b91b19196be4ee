# ResNet-56 for 32x32 inputs (He et al. 2016, Sec. 4.2). mmpretrain has no
# ResNet-56 (its ResNet_CIFAR only adapts the ImageNet ResNet-18/34/50/...),
# so the backbone comes from mmifso.
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmifso.CifarResNet',
        depth=56,
        base_channels=16,
        out_indices=(2, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
    ))
