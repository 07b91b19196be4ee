# Fine-tune the exported (physically pruned) GFL R50-FPN with the
# upstream schedule at half its lr (as the RetinaNet set).
_base_ = ['./ifso_deploy_gfl_r50_fpn_1x_coco.py']

# Exported by tools/export_pruned.py from the pruning run's flops_50.pth, next
# to the structure.json that the deploy config reads.
load_from = 'work_dirs/ifso_prune_gfl_r50_fpn_1x_coco/export/pruned.pth'

# As in the prune config: every stage trains (the pruned stages too).
model = dict(backbone=dict(frozen_stages=-1))
optim_wrapper = dict(
    optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr * 0.5))
