# Fine-tune the exported (physically pruned) RTMDet-tiny with the
# upstream schedule at half its lr (as the RetinaNet set).
_base_ = ['./ifso_deploy_rtmdet_tiny_8xb32-300e_coco.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py from the pruning run's flops_50.pth.
export_dir = 'work_dirs/ifso_prune_rtmdet_tiny_8xb32-300e_coco/export'
structure = export_dir + '/structure.json'
pruned_ckpt = export_dir + '/pruned.pth'

# The pruned model of the deploy config, from this export.
model = dict(structure=structure)
load_from = pruned_ckpt

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * 0.5))
