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
import json
import logging
import os
import os.path as osp
import time

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                      'configs', 'demo')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument(
        '--criterion',
        default='mmifso.IFSOImportance',
        help='importance type for the pruning hook')
    parser.add_argument(
        '--target-flops', type=float, default=0.5, help='FLOPs ratio')
    return parser.parse_args()


def run(cfg: Config, work_dir: str, train: bool = True) -> dict:
    cfg = cfg.copy()
    cfg.work_dir = work_dir
    cfg.default_hooks.setdefault('logger', dict(type='LoggerHook'))
    runner = Runner.from_cfg(cfg)
    if train:
        runner.train()
    metrics = runner.test()
    return dict(runner=runner, metrics=metrics)


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


def main():
    args = parse_args()
    start = time.time()
    work_dir = osp.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    import mmifso  # noqa: F401
    from mmifso.apis.export import export_checkpoint
    from mmifso.models.task_modules import (count_params, count_resources,
                                            record_layers)

    # 1. Baseline.
    base_cfg = Config.fromfile(osp.join(CONFIG_DIR,
                                        'resnet20_1xb64-30e_digits.py'))
    base = run(base_cfg, osp.join(work_dir, 'baseline'))
    base_model = base['runner'].model
    base_ckpt = osp.join(work_dir, 'baseline',
                         f'epoch_{base_cfg.train_cfg.max_epochs}.pth')
    demo_shape = (1, 3, 32, 32)

    def forward(m):
        return m(torch.rand(demo_shape), mode='tensor')

    with torch.no_grad():
        base_res = count_resources(record_layers(base_model, forward))
    baseline = dict(
        accuracy=base['metrics']['accuracy/top1'],
        flops=base_res['flops'],
        params=count_params(base_model))
    before_channels = layer_channels(base_model)

    # 2. Prune while training.
    prune_cfg = Config.fromfile(
        osp.join(CONFIG_DIR, 'ifso_resnet20_prune_digits.py'))
    prune_cfg.load_from = base_ckpt
    prune_cfg.custom_hooks[0].importance = dict(type=args.criterion)
    prune_cfg.custom_hooks[0].target_flops = args.target_flops
    prune_dir = osp.join(work_dir, 'prune')
    pruned_run = run(prune_cfg, prune_dir)
    masked_acc = pruned_run['metrics']['accuracy/top1']
    masked_ckpt = osp.join(prune_dir,
                           f'flops_{int(round(args.target_flops * 100)):02d}.pth')
    if not osp.isfile(masked_ckpt):
        raise RuntimeError(f'the pruning run did not reach the target: '
                           f'{masked_ckpt} is missing')

    # 3. Export.
    exported = export_checkpoint(prune_cfg, masked_ckpt,
                                 osp.join(work_dir, 'export'))

    # 4. Fine-tune the physically pruned model and evaluate it.
    ft_cfg = Config.fromfile(
        osp.join(CONFIG_DIR, 'ifso_resnet20_finetune_digits.py'))
    ft_cfg.model.structure = exported['structure']
    ft_cfg.load_from = exported['checkpoint']
    ft = run(ft_cfg, osp.join(work_dir, 'finetune'))
    ft_model = ft['runner'].model
    with torch.no_grad():
        ft_res = count_resources(record_layers(ft_model, forward))
    pruned = dict(
        accuracy=ft['metrics']['accuracy/top1'],
        flops=ft_res['flops'],
        params=count_params(ft_model))
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
    with open(osp.join(work_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    plot_channels(
        before_channels, layer_channels(ft_model),
        osp.join(work_dir, 'channels.png'),
        f'{criterion}: {summary["flops_ratio"]:.0%} FLOPs, top-1 '
        f'{baseline["accuracy"]:.2f} -> {pruned["accuracy"]:.2f}')

    rows = [('', 'top-1 (%)', 'FLOPs (M)', 'params (K)'),
            ('baseline', f'{baseline["accuracy"]:.2f}',
             f'{baseline["flops"] / 1e6:.2f}',
             f'{baseline["params"] / 1e3:.1f}'),
            (f'{criterion} pruned + fine-tuned', f'{pruned["accuracy"]:.2f}',
             f'{pruned["flops"] / 1e6:.2f}', f'{pruned["params"] / 1e3:.1f}')]
    table = '\n'.join(f'{a:<34}{b:>10}{c:>12}{d:>12}' for a, b, c, d in rows)
    print_log(
        '\n' + table + f'\nFLOPs ratio {summary["flops_ratio"]:.3f}, params '
        f'ratio {summary["params_ratio"]:.3f}; accuracy right after pruning '
        f'(before fine-tuning) {masked_acc:.2f}; total {summary["seconds"]} '
        f's\nwrote {osp.join(work_dir, "summary.json")} and '
        f'{osp.join(work_dir, "channels.png")}',
        logger='current',
        level=logging.INFO)


if __name__ == '__main__':
    main()
