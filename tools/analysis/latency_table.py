"""Measure the per-layer latency table of a model on this device.

Usage:
    python tools/analysis/latency_table.py CONFIG --shape 1 3 224 224 \
        --out work_dirs/latency_r50_b1.json [--backend onnxruntime] \
        [--threads 2] [--check 5]

CONFIG is the pruning config (``model.type='mmifso.PruningAlgorithm'``); its
mutator's demo input is set to ``--shape`` (batch 1), the layers are timed
at batch N. The table (JSON) is keyed by the model's layer structure, the
input shape, the CPU, the thread count, the backend and the torch version;
the pruning hook, the schedules and ``prune_to_target`` take it through
``selection=dict(latency_table=PATH)`` (with ``cost='latency'`` and/or
``target_latency``) and refuse a table of another model or device.

``--check K`` then times the physically pruned model at K random structures
(each unit keeps a random 30-100 % of its channels) and reports the error of
the table's prediction (goal: within 10 %). Timing needs an idle machine:
the tool prints the load average before and after; with ``--table`` it only
checks an existing table.
"""
import argparse
import json
import os
import sys
import time
from typing import Sequence

import torch


def parse_args():
    from mmifso.models.task_modules.latency import BACKENDS
    from mmifso.utils import add_cfg_options
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the pruning config')
    parser.add_argument('--shape', type=int, nargs=4, required=True,
                        metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--out', help='table JSON to write')
    parser.add_argument('--table', help='check this existing table instead')
    parser.add_argument(
        '--backend', default='torch', choices=BACKENDS,
        help='torch: eager; torchscript: traced, frozen and optimised for '
        'inference; onnxruntime: the ONNX export in ONNX Runtime')
    parser.add_argument('--threads', type=int,
                        default=int(os.environ.get('OMP_NUM_THREADS', 0) or
                                    torch.get_num_threads()))
    parser.add_argument('--rounds', type=int, default=7,
                        help='timed samples per layer grid point')
    parser.add_argument('--check', type=int, default=0, metavar='K',
                        help='check the prediction at K random structures')
    parser.add_argument('--check-rounds', type=int, default=15)
    parser.add_argument(
        '--check-round-to', type=int, default=1, metavar='K',
        help='random structures keep multiples of K channels per unit (as '
        'a selection with round_to=K does; ONNX Runtime runs other widths '
        'off its blocked-layout kernels)')
    parser.add_argument('--seed', type=int, default=0)
    add_cfg_options(parser)
    args = parser.parse_args()
    if bool(args.out) == bool(args.table):
        parser.error('give --out (build a table) or --table (check one)')
    if args.table and not args.check:
        parser.error('--table needs --check K')
    return args


def check_table(args: argparse.Namespace, model, mutator, table,
                load: Sequence[float]) -> None:
    """Time the pruned model at ``--check`` random structures and print the
    table's prediction errors; the result, with the load averages, goes
    into the table written to ``--out`` or, with ``--table``, to stdout.

    Args:
        args (argparse.Namespace): The parsed arguments.
        model (nn.Module): The architecture.
        mutator (ChannelMutator): Its mutator.
        table (LatencyTable): The table to check.
        load (Sequence[float]): Load averages before the timings.
    """
    from mmifso.models.mutators.latency import check_latency_table
    res = check_latency_table(model, mutator, table, args.check,
                              rounds=args.check_rounds, seed=args.seed,
                              round_to=args.check_round_to)
    for row in res['structures']:
        print(f'{row["label"]:>9}: FLOPs {row["flops_ratio"]:.3f}, '
              f'predicted {row["predicted_ms"]:8.2f} ms, measured '
              f'{row["measured_ms"]:8.2f} ms, error '
              f'{row["rel_err"]:+.1%}, error of the ratio to the unpruned '
              f'model {row["ratio_err"]:+.1%}')
    print(f'max |error| {res["max_abs_rel_err"]:.1%}, mean '
          f'{res["mean_abs_rel_err"]:.1%} (goal: within 10 %); of the '
          f'latency ratio (what target_latency uses): max '
          f'{res["max_abs_ratio_err"]:.1%}, mean '
          f'{res["mean_abs_ratio_err"]:.1%}')
    load_after = os.getloadavg()
    res['loadavg_before'] = list(load)
    res['loadavg_after'] = list(load_after)
    if args.out:
        table.data['check'] = res
        table.save(args.out)
    else:
        print(json.dumps(res, indent=2))


def main():
    """Build (``--out``) or load (``--table``) the latency table, then
    check it with ``--check``; prints the load averages around it."""
    args = parse_args()
    from mmifso.apis import exit_on_errors, load_config
    from mmifso.apis.export import build_from_config
    from mmifso.models.mutators.latency import build_model_latency_table
    from mmifso.models.task_modules.latency import (LatencyTable,
                                                    LatencyTableMismatch,
                                                    latency_key)
    from mmifso.utils import ParseTimeVariableError
    torch.set_num_threads(args.threads)
    with exit_on_errors('tools/analysis/latency_table.py', FileNotFoundError,
                        ParseTimeVariableError):
        cfg = load_config(args.config, args.cfg_options)
    if not str(cfg.model.get('type', '')).endswith('PruningAlgorithm'):
        sys.exit('tools/analysis/latency_table.py: CONFIG must be a pruning '
                 'config (model.type="mmifso.PruningAlgorithm"), got '
                 f'{cfg.model.get("type")!r}')
    demo = cfg.model.setdefault('mutator', {}).setdefault(
        'demo_input', dict(type='mmifso.DemoInput'))
    demo['input_shape'] = [1] + list(args.shape[1:])
    algo = build_from_config(cfg).eval()
    model, mutator = algo.architecture, algo.mutator
    load = os.getloadavg()
    print(f'load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')
    if load[0] >= 1:
        print('WARNING: the machine is busy (1-min load >= 1); the timings '
              'will be noisy', file=sys.stderr)
    t0 = time.perf_counter()
    if args.table:
        try:
            table = LatencyTable.load(
                args.table, latency_key(mutator, args.shape, args.backend,
                                        args.threads))
        except LatencyTableMismatch as e:
            sys.exit(f'tools/analysis/latency_table.py: {e}')
    else:
        table = build_model_latency_table(
            model, mutator, args.shape, args.backend, args.threads,
            rounds=args.rounds, seed=args.seed)
        table.save(args.out)
        print(f'wrote {args.out}: predicted unpruned latency '
              f'{table.full_ms:.2f} ms, built in {table.data["build_s"]:.1f}'
              ' s')
    if args.check:
        check_table(args, model, mutator, table, load)
    load = os.getloadavg()
    print(f'load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; '
          f'{time.perf_counter() - t0:.1f} s')


if __name__ == '__main__':
    main()
