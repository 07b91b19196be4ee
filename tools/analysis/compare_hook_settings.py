"""Accuracy of PruningHook settings side by side: same baseline, same target.

Usage:
    python tools/analysis/compare_hook_settings.py PRUNE_CONFIG \\
        FINETUNE_CONFIG CHECKPOINT \\
        --variant shipped \\
        --variant window score_window=1 \\
        [--seeds 0 1 2] [--work-dir work_dirs/hook_settings] [--out NAME]
        [--cfg-options KEY=VALUE ...]

Each variant is a name and ``KEY=VALUE`` overrides of the config's
``PruningHook`` (none: the config as shipped; dotted keys reach nested
settings, e.g. ``target_flops=None target_latency=0.5 cost=latency
selection.latency_table=T.json selection.round_to=8``). For every seed and variant
it runs what a user runs, through mmengine's Runner:

1. the prune config from ``CHECKPOINT`` (the trained baseline) with the
   variant's hook settings and ``randomness.seed`` = the seed, training
   until the hook reaches its target, then the config's test (the masked
   model, "after pruning");
2. export of the target's ``flops_XX.pth`` / ``latency_XX.pth``;
3. the fine-tune config on the exported model, same seed, and its test.

Reported per variant: the first test metric (or ``--metric``) after
pruning and after fine-tuning, mean +- std over the seeds, the iterations
the pruning run took, the batches the criterion scored, and the pruning
run's wall time (one run each, not interleaved: ``benchmark.py
--prune-run --prune-variant`` measures the cost side by side).

``--cfg-options`` overrides the prune config for every variant (e.g.
``train_cfg.max_epochs=60`` when a variant that prunes less often needs more
iterations to reach the target; the hook stops each run at its target). A
run that ends before its target stops the comparison with what to change.

Writes ``<out>.json`` (after every run, so finished runs are kept if a later
one fails) and ``<out>.md`` into ``--work-dir``.
"""
import argparse
import os.path as osp
import statistics
import sys
import time
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmengine.config import Config  # noqa: E402

from mmifso.apis import (exit_on_errors, export_checkpoint,  # noqa: E402
                         pruning_hook_index, run_config)
from mmifso.engine.hooks import PruningHook  # noqa: E402
from mmifso.engine.hooks.pruning_hook import \
    threshold_checkpoint_name  # noqa: E402
from mmifso.utils import (KeyValueAction, ParseTimeVariableError,  # noqa
                          add_cfg_options, merge_cfg_options, save_json)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('prune_config')
    parser.add_argument('finetune_config')
    parser.add_argument('checkpoint', help='the trained baseline')
    parser.add_argument(
        '--variant', nargs='+', action='append', required=True,
        metavar='NAME [KEY=VALUE ...]',
        help='a name and PruningHook overrides; repeat for each variant')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--metric', default=None,
                        help='test metric to report (default: the first)')
    parser.add_argument('--work-dir', default='work_dirs/hook_settings')
    parser.add_argument('--out', default='hook_settings')
    add_cfg_options(parser)
    args = parser.parse_args(argv)
    variants = {}
    for name, *options in args.variant:
        if name in variants:
            parser.error(f'variant {name!r} given twice')
        # Hook settings are KEY=VALUE items, parsed (and refused when
        # malformed) as every tool's --cfg-options.
        action = KeyValueAction(option_strings=['--variant'], dest='options')
        ns = argparse.Namespace()
        action(parser, ns, options, f'--variant {name}')
        variants[name] = getattr(ns, 'options', None) or {}
    args.variants = variants
    return args


def _metric(metrics: Dict, name: Optional[str]) -> float:
    if name is None:
        return float(next(iter(metrics.values())))
    if name not in metrics:
        raise SystemExit(f'no test metric {name!r}; the test gave '
                         f'{sorted(metrics)}')
    return float(metrics[name])


def run_variant(args: argparse.Namespace, name: str, options: Dict,
                seed: int) -> Dict:
    """Prune, export and fine-tune one variant with one seed.

    Returns:
        dict: Metrics after pruning and after fine-tuning, iterations,
        scored batches, wall time of the pruning run, FLOPs ratio.
    """
    run_dir = osp.join(args.work_dir, f'{name}_seed{seed}')
    cfg = Config.fromfile(args.prune_config)
    merge_cfg_options(cfg, args.cfg_options)
    cfg.load_from = args.checkpoint
    cfg.randomness = dict(seed=seed)
    # Dotted keys reach nested settings (selection.round_to=8).
    index = pruning_hook_index(cfg)
    cfg.merge_from_dict(
        {f'custom_hooks.{index}.{k}': v for k, v in options.items()})
    t0 = time.perf_counter()
    runner, metrics = run_config(cfg, osp.join(run_dir, 'prune'))
    prune_s = time.perf_counter() - t0
    hook = next(h for h in runner.hooks if isinstance(h, PruningHook))
    if not hook.done:
        raise SystemExit(
            f'compare_hook_settings.py: variant {name!r} (seed {seed}) ended '
            f'after {runner.iter} iterations and {hook._steps} pruning steps '
            f'before its {hook.metric} target {hook.target} (see the '
            f'PruningHook warning in {runner.log_dir}); give the runs more '
            'iterations, e.g. --cfg-options train_cfg.max_epochs=N')
    masked = osp.join(runner.work_dir,
                      threshold_checkpoint_name(hook.target, hook.metric))
    exported = export_checkpoint(cfg, masked, osp.join(run_dir, 'export'))
    ft = Config.fromfile(args.finetune_config)
    ft.model.structure = exported['structure']
    ft.load_from = exported['checkpoint']
    ft.randomness = dict(seed=seed)
    _, ft_metrics = run_config(ft, osp.join(run_dir, 'finetune'))
    return dict(
        variant=name, seed=seed, hook_options=options,
        after_pruning=_metric(metrics, args.metric),
        after_finetune=_metric(ft_metrics, args.metric),
        prune_iterations=runner.iter, scored_batches=hook._consumed,
        pruning_steps=hook._steps, prune_run_s=prune_s,
        flops_ratio=exported['flops'] / exported['flops_unpruned'])


def summarise(rows: List[Dict]) -> Dict[str, Dict]:
    """Mean and std (over seeds) of every number, per variant."""
    out: Dict[str, Dict] = {}
    for name in dict.fromkeys(r['variant'] for r in rows):
        mine = [r for r in rows if r['variant'] == name]
        out[name] = dict(hook_options=mine[0]['hook_options'],
                         seeds=[r['seed'] for r in mine])
        for key in ('after_pruning', 'after_finetune', 'prune_iterations',
                    'scored_batches', 'prune_run_s', 'flops_ratio'):
            vals = [float(r[key]) for r in mine]
            out[name][key] = dict(
                mean=statistics.mean(vals),
                std=statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


def markdown(summary: Dict[str, Dict]) -> str:
    """The summary as a markdown table."""
    lines = ['| variant | hook settings | FLOPs ratio | after pruning | '
             'after fine-tuning | iterations | scored batches | pruning '
             'run (s) |', '|---|---|---|---|---|---|---|---|']

    def ms(d: Dict, fmt: str = '.2f') -> str:
        return f'{d["mean"]:{fmt}} ± {d["std"]:{fmt}}'

    for name, s in summary.items():
        opts = ', '.join(f'{k}={v}' for k, v in s['hook_options'].items())
        lines.append(
            f'| {name} | {opts or "as shipped"} | '
            f'{s["flops_ratio"]["mean"]:.3f} | {ms(s["after_pruning"])} | '
            f'{ms(s["after_finetune"])} | {ms(s["prune_iterations"], ".0f")}'
            f' | {ms(s["scored_batches"], ".0f")} | '
            f'{ms(s["prune_run_s"], ".0f")} |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> Dict:
    args = parse_args(argv)
    result = dict(prune_config=args.prune_config,
                  finetune_config=args.finetune_config,
                  checkpoint=args.checkpoint, seeds=args.seeds,
                  cfg_options=args.cfg_options, runs=[])
    for seed in args.seeds:
        for name, options in args.variants.items():
            # A --cfg-options override that would change nothing stops the
            # first run before it trains.
            with exit_on_errors('compare_hook_settings.py',
                                ParseTimeVariableError):
                row = run_variant(args, name, options, seed)
            result['runs'].append(row)
            result['summary'] = summarise(result['runs'])
            save_json(result, osp.join(args.work_dir, f'{args.out}.json'))
    table = markdown(result['summary'])
    with open(osp.join(args.work_dir, f'{args.out}.md'), 'w') as f:
        f.write(table)
    print(table)
    return result


if __name__ == '__main__':
    main()
