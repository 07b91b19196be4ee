# Fine-tune the exported (physically pruned) ResNet-50 with the upstream
# recipe (lr 0.1, 100 epochs, lr x0.1 at epochs 30, 60 and 90).
_base_ = ['./ifso_deploy_resnet50_8xb32_in1k.py']

# Exported by tools/export_pruned.py from the pruning run's flops_50.pth, next
# to the structure.json that the deploy config reads.
load_from = 'work_dirs/ifso_prune_resnet50_8xb32_in1k/export/pruned.pth'
