# Test the pruned RetinaNet R50-FPN:
#   python tools/test.py \
#     configs/ifso/detection/retinanet/ifso_deploy_retinanet_r50_fpn_1x_coco.py \
#     work_dirs/ifso_finetune_retinanet_r50_fpn_1x_coco/epoch_12.pth
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)

# Written by tools/export_pruned.py.
structure = 'work_dirs/ifso_prune_retinanet_r50_fpn_1x_coco/export/structure.json'  # noqa: E501

architecture = _base_.model
architecture.backbone.frozen_stages = -1
model = dict(
    _delete_=True,
    type='mmifso.PrunedModel',
    architecture=architecture,
    structure=structure)
