"""The user-data path of docs/own_data.md at toy size.

The configs of configs/examples/own_data/ are copied as a user would copy
them, and only their data block (digits_data.py) is edited: a 64-pixel image
size instead of 160, so that every field derived from the block is seen to
follow it. The handwritten-digits data of tools/misc/make_digits_coco.py
(8 train / 4 val images) is generated where the block's ``data_root``
points, and the documented commands run from that folder (their scripts'
``main()`` in-process, with the documented command lines):
``tools/train.py`` (baseline, then IFSO pruning to 50% FLOPs),
``tools/export_pruned.py``, ``tools/test.py`` (masked and exported),
``tools/train.py`` on the fine-tune config. The schedules are shortened
with ``--cfg-options`` (a few iterations each). In-process, the export is
evaluated with mmengine's ``Runner.from_cfg(cfg).test()`` (the same mAP as
``tools/test.py``) and run through mmdet's ``init_detector`` /
``inference_detector`` (the digits' class names from ``pruned.pth``, the
same detections as ``tools/test.py``).
"""
import contextlib
import glob
import io
import json
import os
import os.path as osp
import pickle
import re
import sys

import pytest
import torch
from mmengine.config import Config

from helpers import ROOT, load_tool

EXAMPLE_DIR = osp.join(ROOT, 'configs', 'examples', 'own_data')
DATA_BLOCK = 'digits_data.py'
BASELINE = 'retinanet_r18-w32_fpn_digits.py'
PRUNE = 'ifso_retinanet_r18-w32_prune_digits.py'
FINETUNE = 'ifso_retinanet_r18-w32_finetune_digits.py'
CLASSES = tuple(str(i) for i in range(10))
SIZE = 64
#: The toy schedule: batches of 4 (two iterations per epoch of 8 images).
SMALL_BATCH = ['train_dataloader.batch_size=4']
PRUNE_DIR = 'work_dirs/ifso_retinanet_r18-w32_prune_digits'


def copy_user_configs(dst: str, **block: str) -> None:
    """Copy the example configs to ``dst`` as a user would: the shipped
    bases by absolute path, and in the data block only the settings of
    ``block`` changed (``key='python literal'``)."""
    for name in (DATA_BLOCK, BASELINE, PRUNE, FINETUNE):
        with open(osp.join(EXAMPLE_DIR, name)) as f:
            text = f.read()
        if name == DATA_BLOCK:
            for key, value in block.items():
                text, count = re.subn(rf'^    {key}=.*,$',
                                      f'    {key}={value},', text,
                                      flags=re.M)
                assert count == 1, key
        else:
            text = text.replace("'../../demo_det/",
                                repr(osp.join(ROOT, 'configs', 'demo_det'))
                                [:-1] + '/')
        with open(osp.join(dst, name), 'w') as f:
            f.write(text)


def run_tool(cwd: str, script: str, *args: str) -> str:
    """``python tools/<script> args`` as the user runs it from ``cwd``, but
    in-process (the script's ``main(argv)``; a process per tool would spend
    most of the test importing mmdet); what it printed."""
    out = io.StringIO()
    old_cwd, old_argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    sys.argv = [osp.join(ROOT, 'tools', script), *args]
    try:
        with contextlib.redirect_stdout(out):
            load_tool(script).main()
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
    return out.getvalue()


def printed_metrics(output: str) -> dict:
    """The metrics tools/test.py printed (``metrics: {json}``)."""
    [line] = [ln for ln in output.splitlines() if ln.startswith('metrics: ')]
    return json.loads(line[len('metrics: '):])


def last_log(work_dir: str) -> str:
    """The text of the latest run's log in an mmengine work dir."""
    [path] = sorted(glob.glob(osp.join(work_dir, '*', '*.log')))[-1:]
    with open(path) as f:
        return f.read()


@pytest.fixture(scope='module')
def user_run(tmp_path_factory) -> dict:
    """The documented path, run by a user in the folder ``work`` that holds
    the edited configs (``configs/``), the data (``data/digits_coco``, as
    the block says) and the ``work_dirs/``."""
    work = str(tmp_path_factory.mktemp('own_data'))
    cfg_dir = osp.join(work, 'configs')
    os.makedirs(cfg_dir)
    copy_user_configs(cfg_dir, image_size=str(SIZE))
    load_tool('misc', 'make_digits_coco.py').main([
        '--out', osp.join(work, 'data', 'digits_coco'), '--train', '8',
        '--val', '4', '--size', str(SIZE), '--seed', '0'
    ])
    export_dir = PRUNE_DIR + '/export'
    out = dict(work=work, export=osp.join(work, export_dir))
    run_tool(work, 'train.py', 'configs/' + BASELINE, '--cfg-options',
             'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
             'default_hooks.checkpoint.interval=1', *SMALL_BATCH)
    # Large pruning steps at every iteration: the target in a few.
    run_tool(work, 'train.py', 'configs/' + PRUNE, '--cfg-options',
             'load_from=work_dirs/retinanet_r18-w32_fpn_digits/epoch_1.pth',
             'custom_hooks.0.interval=1',
             'custom_hooks.0.channels_per_step=128', *SMALL_BATCH)
    out['prune_log'] = last_log(osp.join(work, PRUNE_DIR))
    out['export_log'] = run_tool(work, 'export_pruned.py', 'configs/' + PRUNE,
                                 PRUNE_DIR + '/flops_50.pth', '--out-dir',
                                 export_dir)
    # A model trained for a few iterations scores every box below mmdet's
    # score_thr (0.05), and CocoMetric returns no mAP at all without boxes:
    # the evaluations and the fine-tuning's validation keep every box (the
    # detector is model.architecture in the prune config, model itself in
    # the deploy and fine-tune configs). One image per batch, as
    # inference_detector runs: the same computation, the same detections.
    out['masked'] = printed_metrics(
        run_tool(work, 'test.py', 'configs/' + PRUNE,
                 PRUNE_DIR + '/flops_50.pth', '--cfg-options',
                 'model.architecture.test_cfg.score_thr=0',
                 'test_dataloader.batch_size=1'))
    out['exported'] = printed_metrics(
        run_tool(work, 'test.py', export_dir + '/deploy_config.py',
                 export_dir + '/pruned.pth', '--out', 'exported.pkl',
                 '--cfg-options', 'model.test_cfg.score_thr=0',
                 'test_dataloader.batch_size=1'))
    run_tool(work, 'train.py', 'configs/' + FINETUNE, '--cfg-options',
             'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
             'default_hooks.checkpoint.interval=1',
             'model.test_cfg.score_thr=0', *SMALL_BATCH)
    out['finetune_dir'] = osp.join(work, 'work_dirs',
                                   'ifso_retinanet_r18-w32_finetune_digits')
    return out


def test_make_digits_coco(tmp_path):
    """Deterministic; COCO json mmdet reads with the ten digit names; boxes
    inside the image; val digits are other handwriting than train's."""
    tool = load_tool('misc', 'make_digits_coco.py')
    for name in ('a', 'b'):
        tool.main(['--out', str(tmp_path / name), '--train', '3', '--val',
                   '2', '--size', '64'])
    for rel in ('annotations/instances_train.json',
                'annotations/instances_val.json', 'train/000002.png',
                'val/000001.png'):
        assert (tmp_path / 'a' / rel).read_bytes() == (tmp_path / 'b' /
                                                        rel).read_bytes()
    with open(tmp_path / 'a' / 'annotations' / 'instances_train.json') as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == list(CLASSES)
    assert len(coco['images']) == 3 and coco['annotations']
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64
        assert w > 0 and h > 0 and ann['area'] == w * h
    from mmdet.datasets import CocoDataset
    dataset = CocoDataset(
        data_root=str(tmp_path / 'a'),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=dict(classes=CLASSES),
        pipeline=[])
    assert len(dataset) == 3
    assert sum(len(d['instances']) for d in dataset) == len(
        coco['annotations'])
    pools = tool.source_digits(0)
    train = {p.tobytes() for p in pools['train'][0]}
    val = {p.tobytes() for p in pools['val'][0]}
    assert len(pools['val'][0]) + len(pools['train'][0]) == 1797
    assert len(val) > 300 and not train & val


@pytest.mark.parametrize('name', [BASELINE, PRUNE, FINETUNE])
def test_every_data_field_follows_the_block(tmp_path, name):
    """An edit of the data block alone (root, image size, class names, val
    layout) reaches every field the shipped shapes config filled with its
    own data."""
    classes = ('a', 'b', 'c')
    copy_user_configs(
        str(tmp_path),
        data_root=repr('/my/data/'),
        image_size='96',
        classes=repr(classes),
        palette=repr([(1, 2, 3), (4, 5, 6), (7, 8, 9)]),
        val_ann_file=repr('ann/val.json'),
        val_img_prefix=repr('images/val/'))
    cfg = Config.fromfile(str(tmp_path / name))
    detector = cfg.model.get('architecture', cfg.model)
    assert detector.bbox_head.num_classes == 3
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.data_root == '/my/data/'
        assert dataset.metainfo.classes == classes
        assert len(dataset.metainfo.palette) == 3
        scales = [s.scale for s in dataset.pipeline if s.type == 'Resize']
        assert scales == [(96, 96)]
    assert cfg.test_dataloader.dataset.ann_file == 'ann/val.json'
    assert cfg.test_dataloader.dataset.data_prefix.img == 'images/val/'
    for evaluator in ('val_evaluator', 'test_evaluator'):
        assert cfg[evaluator].ann_file == '/my/data/ann/val.json'
    if name == PRUNE:
        assert cfg.model.mutator.demo_input.input_shape == (1, 3, 96, 96)
    # No field keeps the shapes' names, root or size.
    text = cfg.pretty_text
    for stale in ('circle', 'shapes_coco', '160'):
        assert stale not in text, stale


def test_prune_reaches_target_and_export_matches(user_run):
    """IFSO reaches 50% FLOPs; the masked checkpoint (prune config) and the
    export (deploy config) give the same mAP through tools/test.py."""
    with open(osp.join(user_run['export'], 'structure.json')) as f:
        resources = json.load(f)['resources']
    assert resources['flops'] <= 0.5 * resources['flops_unpruned']
    assert resources['params'] < resources['params_unpruned']
    assert 'reached target flops 0.5' in user_run['prune_log']
    assert 'max |masked - exported|' in user_run['export_log']
    masked = user_run['masked']
    assert 'coco/bbox_mAP' in masked and masked == user_run['exported']


def test_runner_from_cfg_test_on_the_deploy_config(user_run, monkeypatch):
    """mmengine's own ``Runner.from_cfg(cfg).test()`` on deploy_config.py
    (it loads pruned.pth through its ``load_from``) gives what
    tools/test.py gave."""
    from mmengine.runner import Runner
    monkeypatch.chdir(user_run['work'])  # the config's relative data_root
    cfg = Config.fromfile(osp.join(user_run['export'], 'deploy_config.py'))
    cfg.work_dir = osp.join(user_run['work'], 'work_dirs', 'runner_test')
    cfg.experiment_name = 'own_data_runner_test'
    # As in tools/test.py above.
    cfg.model.test_cfg.score_thr = 0
    cfg.test_dataloader.batch_size = 1
    metrics = Runner.from_cfg(cfg).test()
    assert metrics == user_run['exported']


def test_init_detector_names_the_digits(user_run):
    """``init_detector(deploy_config, pruned.pth)``: the digits' class names
    from the checkpoint's dataset_meta; ``inference_detector`` detects what
    tools/test.py detected on the same image; mmdet's visualizer draws it
    with those names (palette None: mmdet's colours for ten classes)."""
    import numpy as np
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS
    export = user_run['export']
    meta = torch.load(osp.join(export, 'pruned.pth'),
                      map_location='cpu')['meta']['dataset_meta']
    assert tuple(meta['classes']) == CLASSES
    image = osp.join(user_run['work'], 'data', 'digits_coco', 'val',
                     '000000.png')
    cfg = Config.fromfile(osp.join(export, 'deploy_config.py'))
    cfg.model.test_cfg.score_thr = 0  # as in tools/test.py
    model = init_detector(cfg, osp.join(export, 'pruned.pth'), device='cpu')
    assert tuple(model.dataset_meta['classes']) == CLASSES
    result = inference_detector(model, image)
    with open(osp.join(user_run['work'], 'exported.pkl'), 'rb') as f:
        [dumped] = [
            r for r in pickle.load(f)
            if osp.samefile(osp.join(user_run['work'], r['img_path']), image)
        ]
    pred, ref = result.pred_instances, dumped['pred_instances']
    assert len(ref['labels']) > 0
    assert torch.equal(pred.labels, ref['labels'])
    torch.testing.assert_close(pred.scores, ref['scores'])
    torch.testing.assert_close(pred.bboxes, ref['bboxes'])
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample(
        'digits', np.zeros((SIZE, SIZE, 3), np.uint8), result,
        draw_gt=False, pred_score_thr=0.0)
    assert visualizer.get_image().any()


def test_finetune_starts_from_the_export(user_run):
    """The fine-tune config loads pruned.pth into the pruned architecture and
    trains and validates it: its checkpoint has the exported shapes."""
    export_ckpt = osp.join(user_run['export'], 'pruned.pth')
    log = last_log(user_run['finetune_dir'])
    assert 'Load checkpoint from ' + PRUNE_DIR + '/export/pruned.pth' in log
    assert re.search(r'Epoch\(val\) \[1\]\[1/1\] +coco/bbox_mAP: ', log)
    exported = torch.load(export_ckpt, map_location='cpu')['state_dict']
    tuned = torch.load(
        osp.join(user_run['finetune_dir'], 'epoch_1.pth'),
        map_location='cpu')['state_dict']
    assert {k: v.shape for k, v in tuned.items()} == {
        k: v.shape for k, v in exported.items()
    }
