"""The detection demo on offline shapes data: train, prune, export, fine-tune.

Usage:
    python tools/demo_det.py [--work-dir work_dirs/demo_det]
        [--data-root data/shapes_coco] [--criterion NAME]
        [--target-flops 0.5]

Every stage runs the shipped configs (configs/demo_det/) through mmengine's
Runner, exactly as ``tools/train.py`` / ``tools/test.py`` /
``tools/export_pruned.py`` would, and evaluates with mmdet's ``CocoMetric``:

0. generate the shapes data (tools/misc/make_shapes_coco.py: 400 train and 100
   val images of 160x160 pixels, five shape classes) if it is missing;
1. train a small RetinaNet from scratch
   (configs/demo_det/retinanet_r18-w32_fpn_1xb16-48e_shapes.py);
2. prune it with IFSO to 50% FLOPs while training continues
   (configs/demo_det/ifso_retinanet_r18-w32_prune_shapes.py);
3. export the masked checkpoint to a physically smaller model and evaluate
   both from disk (they must give the same bbox mAP);
4. fine-tune the exported model
   (configs/demo_det/ifso_retinanet_r18-w32_finetune_shapes.py) and evaluate;
5. control: fine-tune the unpruned baseline with the same schedule (the
   pruned model trains longer than the baseline; this separates that from
   the effect of pruning). ``--no-control`` skips it.

Writes ``summary.json`` (baseline vs pruned bbox mAP, FLOPs, params, and the
control's mAP) into the work dir.
"""
import argparse
import contextlib
import logging
import os
import os.path as osp
import sys
import time
from typing import Dict, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

from mmifso.apis import (add_pruning_arguments,  # noqa: E402
                         export_checkpoint, flops_checkpoint, run_config)
from mmifso.utils import save_json  # noqa: E402

CONFIG_DIR = osp.join(ROOT, 'configs', 'demo_det')
BASELINE = 'retinanet_r18-w32_fpn_1xb16-48e_shapes.py'
PRUNE = 'ifso_retinanet_r18-w32_prune_shapes.py'
FINETUNE = 'ifso_retinanet_r18-w32_finetune_shapes.py'
DATA = dict(train=400, val=100, size=160, seed=0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo_det')
    parser.add_argument('--data-root', default=osp.join(ROOT, 'data',
                                                         'shapes_coco'))
    # --criterion, --target-flops: checked before the minutes of baseline
    # training, not after them.
    add_pruning_arguments(parser)
    # Smaller runs (smoke tests); the defaults are the demo.
    parser.add_argument('--num-train', type=int, default=DATA['train'])
    parser.add_argument('--num-val', type=int, default=DATA['val'])
    parser.add_argument('--baseline-epochs', type=int,
                        help='default: the baseline config (48)')
    parser.add_argument('--finetune-epochs', type=int,
                        help='default: the fine-tune config (12)')
    parser.add_argument(
        '--no-control',
        action='store_true',
        help='skip the control run (the unpruned baseline fine-tuned with '
        'the same schedule as the pruned model)')
    parser.add_argument(
        '--baseline-checkpoint',
        help='a trained baseline checkpoint: evaluate it instead of '
        'training the baseline again')
    args = parser.parse_args(argv)
    if args.baseline_checkpoint and not osp.isfile(args.baseline_checkpoint):
        parser.error(f'--baseline-checkpoint {args.baseline_checkpoint} does '
                     'not exist')
    return args


def ensure_data(data_root: str, num_train: int, num_val: int) -> None:
    from mmifso.datasets.shapes import make_shapes_coco, shapes_coco_exists
    num = dict(train=num_train, val=num_val)
    if shapes_coco_exists(data_root, num=num, size=DATA['size']):
        return
    print_log(f'[demo_det] generating the shapes data in {data_root}',
              logger='current', level=logging.INFO)
    make_shapes_coco(data_root, num_train, num_val, DATA['size'],
                     DATA['seed'])


def set_epochs(cfg: Config, epochs: int) -> Config:
    """Shorten a config's schedule (smoke runs)."""
    cfg.train_cfg.max_epochs = epochs
    cfg.train_cfg.val_interval = epochs
    for sched in cfg.get('param_scheduler', None) or []:
        if sched.get('by_epoch', True) and 'end' in sched:
            sched.end = epochs
            if 'T_max' in sched:
                sched.T_max = epochs
    if cfg.default_hooks.checkpoint.get('interval', -1) > 0:
        cfg.default_hooks.checkpoint.interval = epochs
    return cfg


def with_data(cfg: Config, data_root: str) -> Config:
    """Point every dataloader and evaluator of ``cfg`` at ``data_root``."""
    root = data_root.rstrip('/') + '/'
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].dataset.data_root = root
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key].ann_file = root + 'annotations/instances_val.json'
    return cfg


def coco(metrics: dict, key: str) -> float:
    """A CocoMetric result; mmdet returns no keys when nothing was detected
    (which counts as 0)."""
    return float(metrics.get(f'coco/{key}', 0.0))


def bbox_maps(metrics: dict) -> dict:
    """``bbox_mAP`` and ``bbox_mAP_50`` of a test run, as in summary.json."""
    return dict(
        bbox_mAP=coco(metrics, 'bbox_mAP'),
        bbox_mAP_50=coco(metrics, 'bbox_mAP_50'))


def measure(model: torch.nn.Module, size: int) -> dict:
    """mmifso's FLOPs (conv/linear MACs per image) and the parameters."""
    from mmifso.models.task_modules import (DetDemoInput, count_params,
                                            count_resources, record_layers)
    with torch.no_grad():
        res = count_resources(
            record_layers(model, DetDemoInput((1, 3, size, size))))
    return dict(flops=res['flops'], params=count_params(model))


def load(name: str, data_root: str, epochs: Optional[int] = None) -> Config:
    """A demo config on ``data_root``, its schedule shortened to ``epochs``
    when given."""
    cfg = with_data(Config.fromfile(osp.join(CONFIG_DIR, name)), data_root)
    return set_epochs(cfg, epochs) if epochs else cfg


def baseline_stage(args, work_dir: str, data_root: str) -> tuple:
    """Stage 1: train the baseline (or evaluate ``--baseline-checkpoint``);
    returns its config, checkpoint and figures."""
    cfg = load(BASELINE, data_root, args.baseline_epochs)
    if args.baseline_checkpoint:
        ckpt = osp.abspath(args.baseline_checkpoint)
        cfg.load_from = ckpt
        runner, metrics = run_config(
            cfg, osp.join(work_dir, 'baseline'), train=False)
    else:
        runner, metrics = run_config(cfg, osp.join(work_dir, 'baseline'))
        ckpt = osp.join(work_dir, 'baseline',
                        f'epoch_{cfg.train_cfg.max_epochs}.pth')
    figures = dict(**bbox_maps(metrics), **measure(runner.model,
                                                   cfg.image_size))
    return cfg, ckpt, figures


def prune_stage(args, work_dir: str, data_root: str,
                base_ckpt: str) -> tuple:
    """Stage 2: prune the baseline while training continues; returns the
    pruning config and the masked checkpoint at the target."""
    cfg = load(PRUNE, data_root)
    cfg.load_from = base_ckpt
    cfg.custom_hooks[0].importance.type = args.criterion
    if args.criterion.split('.')[-1] != 'IFSOImportance':
        cfg.custom_hooks[0].importance.pop('lam', None)
    cfg.custom_hooks[0].target_flops = args.target_flops
    prune_dir = osp.join(work_dir, 'prune')
    run_config(cfg, prune_dir)
    return cfg, flops_checkpoint(prune_dir, args.target_flops)


def export_stage(work_dir: str, data_root: str, prune_cfg: Config,
                 masked_ckpt: str) -> tuple:
    """Stage 3: export, then evaluate the masked checkpoint and the exported
    model from disk with the test loop (as tools/test.py does; they give the
    same COCO mAP). Returns the export and both mAPs."""
    exported = export_checkpoint(prune_cfg, masked_ckpt,
                                 osp.join(work_dir, 'export'))
    masked_cfg = prune_cfg.copy()
    masked_cfg.load_from = masked_ckpt
    _, masked = run_config(
        masked_cfg, osp.join(work_dir, 'eval_masked'), train=False)
    deploy_cfg = with_data(Config.fromfile(exported['config']), data_root)
    deploy_cfg.load_from = exported['checkpoint']
    _, deployed = run_config(
        deploy_cfg, osp.join(work_dir, 'eval_exported'), train=False)
    return exported, coco(masked, 'bbox_mAP'), coco(deployed, 'bbox_mAP')


def finetune_stage(args, work_dir: str, data_root: str, exported: dict,
                   size: int) -> dict:
    """Stage 4: fine-tune the exported model; its figures."""
    cfg = load(FINETUNE, data_root, args.finetune_epochs)
    cfg.model.structure = exported['structure']
    cfg.load_from = exported['checkpoint']
    runner, metrics = run_config(cfg, osp.join(work_dir, 'finetune'))
    return dict(**bbox_maps(metrics), **measure(runner.model, size))


def control_stage(args, work_dir: str, data_root: str, base_cfg: Config,
                  base_ckpt: str) -> dict:
    """Stage 5: the unpruned baseline with the same fine-tuning schedule, so
    that the extra training the pruned model got is not mistaken for a gain
    from pruning; its mAPs."""
    cfg = load(FINETUNE, data_root, args.finetune_epochs)
    cfg.model = base_cfg.model
    cfg.load_from = base_ckpt
    _, metrics = run_config(cfg, osp.join(work_dir, 'control'))
    return bbox_maps(metrics)


def report(summary: dict, work_dir: str) -> None:
    """Log the baseline/control/pruned table and where the summary is."""
    baseline, pruned = summary['baseline'], summary['pruned']
    control = summary['baseline_finetuned']
    rows = [('', 'bbox mAP', 'mAP@50', 'FLOPs (M)', 'params (K)'),
            ('baseline', f'{baseline["bbox_mAP"]:.3f}',
             f'{baseline["bbox_mAP_50"]:.3f}',
             f'{baseline["flops"] / 1e6:.1f}',
             f'{baseline["params"] / 1e3:.1f}'),
            (f'{summary["criterion"]} pruned + fine-tuned',
             f'{pruned["bbox_mAP"]:.3f}', f'{pruned["bbox_mAP_50"]:.3f}',
             f'{pruned["flops"] / 1e6:.1f}', f'{pruned["params"] / 1e3:.1f}')]
    if control:
        rows.insert(2, ('baseline + same fine-tuning',
                        f'{control["bbox_mAP"]:.3f}',
                        f'{control["bbox_mAP_50"]:.3f}',
                        f'{baseline["flops"] / 1e6:.1f}',
                        f'{baseline["params"] / 1e3:.1f}'))
    table = '\n'.join(f'{a:<34}{b:>10}{c:>10}{d:>12}{e:>12}'
                      for a, b, c, d, e in rows)
    print_log(
        '\n' + table + f'\nFLOPs ratio {summary["flops_ratio"]:.3f}, params '
        f'ratio {summary["params_ratio"]:.3f}; bbox mAP right after pruning '
        f'(before fine-tuning) '
        f'{summary["pruned_before_finetune_bbox_mAP"]:.3f} masked, '
        f'{summary["exported_before_finetune_bbox_mAP"]:.3f} exported; total '
        f'{summary["seconds"]} s ({summary["stage_seconds"]})\nwrote '
        f'{osp.join(work_dir, "summary.json")}',
        logger='current',
        level=logging.INFO)


class StageTimer:
    """``with timer('name'):`` records the block's seconds (one decimal) in
    :attr:`seconds`."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.time()
        yield
        self.seconds[name] = round(time.time() - start, 1)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    work_dir = osp.abspath(args.work_dir)
    data_root = osp.abspath(args.data_root)
    os.makedirs(work_dir, exist_ok=True)
    timer = StageTimer()
    with timer('data'):
        ensure_data(data_root, args.num_train, args.num_val)
    with timer('baseline'):
        base_cfg, base_ckpt, baseline = baseline_stage(args, work_dir,
                                                       data_root)
    with timer('prune'):
        prune_cfg, masked_ckpt = prune_stage(args, work_dir, data_root,
                                             base_ckpt)
    with timer('export'):
        exported, masked_map, exported_map = export_stage(
            work_dir, data_root, prune_cfg, masked_ckpt)
    with timer('finetune'):
        pruned = finetune_stage(args, work_dir, data_root, exported,
                                base_cfg.image_size)
    control = None
    if not args.no_control:
        with timer('control'):
            control = control_stage(args, work_dir, data_root, base_cfg,
                                    base_ckpt)
    summary = dict(
        baseline=baseline,
        pruned=pruned,
        criterion=args.criterion.split('.')[-1],
        baseline_finetuned=control,
        bbox_mAP_drop_vs_baseline_finetuned=(
            control['bbox_mAP'] - pruned['bbox_mAP'] if control else None),
        target_flops=args.target_flops,
        pruned_before_finetune_bbox_mAP=masked_map,
        exported_before_finetune_bbox_mAP=exported_map,
        flops_ratio=pruned['flops'] / baseline['flops'],
        params_ratio=pruned['params'] / baseline['params'],
        bbox_mAP_drop=baseline['bbox_mAP'] - pruned['bbox_mAP'],
        masked_vs_exported_max_abs_diff=exported['max_abs_diff'],
        image_size=base_cfg.image_size,
        data=dict(DATA, train=args.num_train, val=args.num_val),
        stage_seconds=timer.seconds,
        seconds=round(time.time() - start, 1))
    save_json(summary, osp.join(work_dir, 'summary.json'))
    report(summary, work_dir)
    return summary


if __name__ == '__main__':
    main()
