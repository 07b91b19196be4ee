r"""torch.profiler summary of IFSO scoring against a plain training step.

Profiles one plain training step, one gated training step and one
``IFSOImportance(lam=1e-4, neumann_order=0).score`` call (``--hvp``) on the
same batch, each after an untimed warm-up call, and prints the operators by
self CPU time (the profile summary of docs/benchmarks.md, "Pruning-time
cost"). Models, batches and steps are those of ``benchmark.py``.

Run from the repository root::

    OMP_NUM_THREADS=1 python tools/analysis/profile_scoring.py --model resnet20
    OMP_NUM_THREADS=1 python tools/analysis/profile_scoring.py \
        --model resnet50 --batch 2
"""
import argparse
import os
import sys
import warnings
from typing import Callable, Dict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark as bench  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', choices=['resnet20', 'resnet50'],
                        default='resnet20')
    parser.add_argument('--batch', type=int, default=None,
                        help='batch size (default 64 for resnet20, 2 for '
                        'resnet50)')
    parser.add_argument('--hvp', choices=['exact', 'finite_diff'],
                        default='exact')
    parser.add_argument('--gate', choices=['weight', 'input'],
                        default='weight', help="the mutator's gate mode")
    parser.add_argument('--rows', type=int, default=18,
                        help='operators listed per profile')
    return parser.parse_args(argv)


def profiled(fns: Dict[str, Callable[[], object]], rows: int) -> Dict:
    """Profile each function once after a warm-up call; print the tables.

    Args:
        fns (dict): Name -> function.
        rows (int): Operators per table.

    Returns:
        dict: Name -> total self CPU time in seconds.
    """
    totals = {}
    for name, fn in fns.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = prof.key_averages()
        totals[name] = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f'===== {name}: self CPU {totals[name]:.3f} s')
        print(events.table(sort_by='self_cpu_time_total', row_limit=rows,
                           max_name_column_width=45))
    return totals


def main(argv=None) -> Dict:
    args = parse_args(argv)
    warnings.filterwarnings('ignore')
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    import mmifso  # noqa: F401  (registers the modules)
    from mmifso.models.importance import IFSOImportance, ScoringContext
    MMLogger.get_current_instance().setLevel('ERROR')
    torch.manual_seed(0)
    if args.model == 'resnet20':
        arch, size, classes = bench.cifar_model_cfg(), 32, 10
    else:
        arch = bench.imagenet_model_cfg(bench.IMAGENET_CFG)
        size, classes = 224, 1000
    batch_size = args.batch or (64 if args.model == 'resnet20' else 2)
    algo = bench.build_gated(arch, size, gate=args.gate)
    _, plain = bench.build_pair(arch, size)
    plain.load_state_dict(algo.architecture.state_dict())
    batch = bench.make_batch(batch_size, size, classes, seed=1)
    ctx = ScoringContext(algo.architecture, algo.mutator)
    importance = IFSOImportance(lam=1e-4, hvp=args.hvp)
    print(f'{args.model}, batch {batch_size} at {size}x{size}, hvp='
          f'{args.hvp}, gate={args.gate}, torch threads '
          f'{torch.get_num_threads()}, load average {os.getloadavg()}')
    totals = profiled(
        dict(train_step=bench.train_step_fn(plain, batch),
             gated_step=bench.train_step_fn(algo, batch),
             ifso=lambda: importance.score(ctx, [batch], seed=0)),
        args.rows)
    print(f'IFSO / train step (self CPU): '
          f'{totals["ifso"] / totals["train_step"]:.2f}; load average '
          f'{os.getloadavg()}')
    return totals


if __name__ == '__main__':
    main()
