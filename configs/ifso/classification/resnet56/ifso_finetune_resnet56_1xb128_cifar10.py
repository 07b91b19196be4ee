# Fine-tune the exported (physically pruned) ResNet-56: batch 128 on one GPU,
# SGD lr 0.1, 200 epochs, lr x0.1 at epochs 120 and 160 (IFSO's schedule).
_base_ = ['./ifso_deploy_resnet56_1xb128_cifar10.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py from the pruning run's flops_50.pth.
export_dir = 'work_dirs/ifso_prune_resnet56_1xb128_cifar10/export'
structure = export_dir + '/structure.json'
pruned_ckpt = export_dir + '/pruned.pth'

# The pruned model of the deploy config, from this export.
model = dict(structure=structure)
load_from = pruned_ckpt

train_dataloader = dict(batch_size=128)
param_scheduler = dict(milestones=[120, 160])
