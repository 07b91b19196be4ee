# Fine-tune the exported (physically pruned) SSDlite MobileNetV2 with the
# upstream schedule at half its lr (as the RetinaNet set).
_base_ = ['./ifso_deploy_ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py']

# Exported by tools/export_pruned.py from the pruning run's flops_50.pth, next
# to the structure.json that the deploy config reads.
load_from = 'work_dirs/ifso_prune_ssdlite_mobilenetv2-scratch_8xb24-600e_coco/export/pruned.pth'  # noqa: E501

optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * 0.5))
