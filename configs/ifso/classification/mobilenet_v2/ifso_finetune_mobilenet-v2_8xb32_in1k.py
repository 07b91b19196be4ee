# Fine-tune the exported (physically pruned) MobileNetV2 with the upstream
# recipe (lr 0.045, 300 epochs, lr x0.98 every epoch).
_base_ = ['./ifso_deploy_mobilenet-v2_8xb32_in1k.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py from the pruning run's flops_65.pth.
export_dir = 'work_dirs/ifso_prune_mobilenet-v2_8xb32_in1k/export'
structure = export_dir + '/structure.json'
pruned_ckpt = export_dir + '/pruned.pth'

# The pruned model of the deploy config, from this export.
model = dict(structure=structure)
load_from = pruned_ckpt
