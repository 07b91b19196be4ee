# Fine-tune the exported (physically pruned) MobileNetV2 with the upstream
# recipe (lr 0.045, 300 epochs, lr x0.98 every epoch).
_base_ = ['./ifso_deploy_mobilenet-v2_8xb32_in1k.py']

# Exported by tools/export_pruned.py from the pruning run's flops_65.pth, next
# to the structure.json that the deploy config reads.
load_from = 'work_dirs/ifso_prune_mobilenet-v2_8xb32_in1k/export/pruned.pth'
