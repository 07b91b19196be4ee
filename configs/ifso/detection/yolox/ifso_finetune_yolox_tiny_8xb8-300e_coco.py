# Fine-tune the exported (physically pruned) YOLOX-tiny with the
# upstream schedule at half its lr (as the RetinaNet set).
_base_ = ['./ifso_deploy_yolox_tiny_8xb8-300e_coco.py']

# Exported by tools/export_pruned.py from the pruning run's flops_50.pth, next
# to the structure.json that the deploy config reads.
load_from = 'work_dirs/ifso_prune_yolox_tiny_8xb8-300e_coco/export/pruned.pth'

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * 0.5))
