# Fine-tune the exported VGG-16-BN at 30% FLOPs: batch 128 on one GPU,
# SGD lr 0.1, 200 epochs, lr x0.1 at epochs 120 and 160 (IFSO's schedule).
_base_ = ['./ifso_deploy-flops30_vgg16bn_1xb128_cifar10.py']

# Exported by tools/export_pruned.py from the pruning run's flops_30.pth, next
# to the structure.json that the deploy config reads.
load_from = 'work_dirs/ifso_prune_vgg16bn_1xb128_cifar10/export_flops30/pruned.pth'  # noqa: E501

train_dataloader = dict(batch_size=128)
param_scheduler = dict(milestones=[120, 160])
