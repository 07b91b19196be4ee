# Fine-tune the exported (physically pruned) ResNet-50 with the upstream
# recipe (lr 0.1, 100 epochs, lr x0.1 at epochs 30, 60 and 90).
_base_ = ['./ifso_deploy_resnet50_8xb32_in1k.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py from the pruning run's flops_50.pth.
export_dir = 'work_dirs/ifso_prune_resnet50_8xb32_in1k/export'
structure = export_dir + '/structure.json'
pruned_ckpt = export_dir + '/pruned.pth'

# The pruned model of the deploy config, from this export.
model = dict(structure=structure)
load_from = pruned_ckpt
