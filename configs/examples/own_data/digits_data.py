# YOUR DATASET: the one block to edit (docs/own_data.md).
#
# Variables only, no runner setting: the three configs of this folder list
# this file after a shipped demo_det config in `_base_` and take everything
# that depends on the data from `own_data` (the class count of the head, the
# dataset metainfo, every dataloader and evaluator, the resize scale and the
# size FLOPs are counted at). Its name is unique so that mmengine accepts it
# next to the shipped config (keys may not repeat among bases).
#
# The values here are the worked example: the handwritten-digits COCO data
# written by
#   python tools/misc/make_digits_coco.py --out data/digits_coco
own_data = dict(
    # Root of the dataset; the paths below are relative to it.
    data_root='data/digits_coco/',
    # Class names in the order of the COCO category ids of the annotation
    # files (mmdet matches them by name); the head predicts len(classes).
    classes=('0', '1', '2', '3', '4', '5', '6', '7', '8', '9'),
    # A list of one (R, G, B) tuple per class for the visualizer, or None
    # (mmdet then draws with its seeded random colours, any class count).
    palette=None,
    # Images are resized to fit image_size x image_size (aspect kept);
    # FLOPs are counted at this size.
    image_size=160,
    train_ann_file='annotations/instances_train.json',
    train_img_prefix='train/',
    val_ann_file='annotations/instances_val.json',
    val_img_prefix='val/',
)
