"""The main job on the embedded digits data: train, prune, export, fine-tune.

Usage:
    python tools/demo.py [--work-dir work_dirs/demo] [--criterion NAME]

Every stage runs the shipped configs through mmengine's Runner, exactly as
``tools/train.py`` / ``tools/test.py`` / ``tools/export_pruned.py`` would:

1. train the baseline (configs/demo/resnet20_1xb64-30e_digits.py);
2. prune it with IFSO to 50% FLOPs while training continues
   (configs/demo/ifso_resnet20_prune_digits.py);
3. export the masked checkpoint to a physically smaller model;
4. fine-tune the exported model (configs/demo/ifso_resnet20_finetune_digits.py)
   and evaluate it.

Writes ``summary.json`` (baseline vs pruned accuracy, FLOPs, params) and
``channels.png`` (channels per layer before and after) into the work dir.
"""
import argparse
import logging
import os
import os.path as osp
import time

import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

from mmifso.apis import (add_pruning_arguments,  # noqa: E402
                         export_checkpoint, flops_checkpoint, run_config)
from mmifso.utils import save_json  # noqa: E402

CONFIG_DIR = osp.join(ROOT, 'configs', 'demo')
#: The demo input FLOPs are counted on (one digits image).
DEMO_SHAPE = (1, 3, 32, 32)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    add_pruning_arguments(parser)  # --criterion, --target-flops (checked)
    return parser.parse_args()


def layer_channels(model: torch.nn.Module) -> dict:
    return {
        name: m.out_channels
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    }


def plot_channels(before: dict, after: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(before)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.35), 4.5))
    ax.bar(x, [before[n] for n in names], color='#c8d6e5', label='baseline')
    ax.bar(x, [after[n] for n in names], color='#2e86de', label='pruned')
    ax.set_xticks(list(x))
    ax.set_xticklabels([n.replace('backbone.', '') for n in names],
                       rotation=90,
                       fontsize=7)
    ax.set_ylabel('output channels')
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure(model: torch.nn.Module) -> dict:
    """mmifso's FLOPs (conv/linear MACs of one 32x32 image) and the
    parameters of ``model``."""
    from mmifso.models.task_modules import (count_params, count_resources,
                                            record_layers)

    def forward(m):
        return m(torch.rand(DEMO_SHAPE), mode='tensor')

    with torch.no_grad():
        res = count_resources(record_layers(model, forward))
    return dict(flops=res['flops'], params=count_params(model))


def train_baseline(work_dir: str) -> tuple:
    """Stage 1: train the baseline; its accuracy, FLOPs, params, checkpoint
    and channels per layer."""
    cfg = Config.fromfile(osp.join(CONFIG_DIR, 'resnet20_1xb64-30e_digits.py'))
    runner, metrics = run_config(cfg, osp.join(work_dir, 'baseline'))
    ckpt = osp.join(work_dir, 'baseline',
                    f'epoch_{cfg.train_cfg.max_epochs}.pth')
    baseline = dict(accuracy=metrics['accuracy/top1'], **measure(runner.model))
    return baseline, ckpt, layer_channels(runner.model)


def prune(work_dir: str, base_ckpt: str, criterion: str,
          target_flops: float) -> tuple:
    """Stage 2: prune the baseline while training continues; the config,
    the masked checkpoint and the accuracy right after pruning."""
    cfg = Config.fromfile(
        osp.join(CONFIG_DIR, 'ifso_resnet20_prune_digits.py'))
    cfg.load_from = base_ckpt
    cfg.custom_hooks[0].importance = dict(type=criterion)
    cfg.custom_hooks[0].target_flops = target_flops
    prune_dir = osp.join(work_dir, 'prune')
    _, metrics = run_config(cfg, prune_dir)
    return cfg, flops_checkpoint(prune_dir, target_flops), metrics[
        'accuracy/top1']


def finetune(work_dir: str, exported: dict) -> tuple:
    """Stage 4: fine-tune the exported model; its accuracy, FLOPs, params
    and channels per layer."""
    cfg = Config.fromfile(
        osp.join(CONFIG_DIR, 'ifso_resnet20_finetune_digits.py'))
    cfg.model.structure = exported['structure']
    cfg.load_from = exported['checkpoint']
    runner, metrics = run_config(cfg, osp.join(work_dir, 'finetune'))
    pruned = dict(accuracy=metrics['accuracy/top1'], **measure(runner.model))
    return pruned, layer_channels(runner.model)


def report(summary: dict, work_dir: str) -> None:
    """Log the baseline/pruned table and where the files are."""
    baseline, pruned = summary['baseline'], summary['pruned']
    rows = [('', 'top-1 (%)', 'FLOPs (M)', 'params (K)'),
            ('baseline', f'{baseline["accuracy"]:.2f}',
             f'{baseline["flops"] / 1e6:.2f}',
             f'{baseline["params"] / 1e3:.1f}'),
            (f'{summary["criterion"]} pruned + fine-tuned',
             f'{pruned["accuracy"]:.2f}', f'{pruned["flops"] / 1e6:.2f}',
             f'{pruned["params"] / 1e3:.1f}')]
    table = '\n'.join(f'{a:<34}{b:>10}{c:>12}{d:>12}' for a, b, c, d in rows)
    print_log(
        '\n' + table + f'\nFLOPs ratio {summary["flops_ratio"]:.3f}, params '
        f'ratio {summary["params_ratio"]:.3f}; accuracy right after pruning '
        f'(before fine-tuning) '
        f'{summary["pruned_before_finetune_accuracy"]:.2f}; total '
        f'{summary["seconds"]} s\nwrote {osp.join(work_dir, "summary.json")} '
        f'and {osp.join(work_dir, "channels.png")}',
        logger='current',
        level=logging.INFO)


def main():
    args = parse_args()
    start = time.time()
    work_dir = osp.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)

    baseline, base_ckpt, before_channels = train_baseline(work_dir)
    prune_cfg, masked_ckpt, masked_acc = prune(work_dir, base_ckpt,
                                               args.criterion,
                                               args.target_flops)
    exported = export_checkpoint(prune_cfg, masked_ckpt,
                                 osp.join(work_dir, 'export'))
    pruned, after_channels = finetune(work_dir, exported)
    criterion = args.criterion.split('.')[-1]
    summary = dict(
        baseline=baseline,
        pruned=pruned,
        criterion=criterion,
        pruned_before_finetune_accuracy=masked_acc,
        flops_ratio=pruned['flops'] / baseline['flops'],
        params_ratio=pruned['params'] / baseline['params'],
        masked_vs_exported_max_abs_diff=exported['max_abs_diff'],
        seconds=round(time.time() - start, 1))
    save_json(summary, osp.join(work_dir, 'summary.json'))
    plot_channels(
        before_channels, after_channels, osp.join(work_dir, 'channels.png'),
        f'{criterion}: {summary["flops_ratio"]:.0%} FLOPs, top-1 '
        f'{baseline["accuracy"]:.2f} -> {pruned["accuracy"]:.2f}')
    report(summary, work_dir)


if __name__ == '__main__':
    main()
