r"""Does the way latency is timed move a latency ratio?

One pruned structure (magnitude scores of the random initialisation, as in
``benchmark.py --speed``) against the unpruned model, both exported, timed
three ways in every repeat:

* ``two``: the two models interleaved call by call (what the latency
  feedback's ``measure_latency_ratio`` does);
* ``six``: interleaved with four uniformly pruned models as well (what
  ``benchmark.py --speed`` does with its structures);
* ``blocks``: each model in blocks of back-to-back calls, taking turns
  (what a deployment running one model sees).

Each ratio is pruned / unpruned of the medians. A protocol that biased the
ratio would stand apart from the others in every repeat. Run on an idle
machine from the repository root, e.g.::

    OMP_NUM_THREADS=2 python tools/analysis/latency_protocols.py \
        mmdet::retinanet/retinanet_r50_fpn_1x_coco.py --size 640 \
        --backend onnxruntime --target-flops 0.45 --round-to 16 \
        --out docs/latency_protocols_retinanet_ort.json
"""
import argparse
import os
import sys
import time
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark as bench  # noqa: E402

#: The widths of the four extra models of the ``six`` protocol.
UNIFORM_KEEPS = (0.9, 0.8, 0.7, 0.6)


def parse_args(argv=None) -> argparse.Namespace:
    from mmifso.models.task_modules.latency import BACKENDS
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', help='config with the model (a file or '
                        'pkg::path), e.g. mmpretrain::resnet/'
                        'resnet50_8xb32_in1k.py')
    parser.add_argument('--size', type=int, default=224,
                        help='square input size; batch 1')
    parser.add_argument('--backend', default='onnxruntime', choices=BACKENDS)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--target-flops', type=float, default=0.5)
    parser.add_argument('--round-to', type=int, default=8)
    parser.add_argument('--max-prune-ratio', type=float, default=0.7)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=10,
                        help='samples per model of the interleaved protocols')
    parser.add_argument('--out', help='JSON file to write')
    parser.add_argument('--blocks', type=int, default=8,
                        help='blocks per model of the blocks protocol')
    parser.add_argument('--calls', type=int, default=3,
                        help='timed calls per block')
    args = parser.parse_args(argv)
    for name in ('threads', 'round_to', 'repeats', 'rounds', 'blocks',
                 'calls'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got '
                         f'{getattr(args, name)}')
    if not 0 < args.target_flops < 1:
        parser.error('--target-flops is the FLOPs ratio the pruned '
                     f'structure keeps, in (0, 1); got {args.target_flops}')
    return args


def structure_runners(args: argparse.Namespace) -> Dict:
    """``{label: callable}``: the unpruned model, the pruned structure and
    the uniform ones, each exported and run on ``args.backend``."""
    from mmifso.models.importance import MagnitudeImportance, ScoringContext
    from mmifso.models.mutators import ChannelSelector
    from mmifso.models.mutators.latency import (structure_runners_of,
                                                uniform_masks)
    torch.manual_seed(0)
    algo = bench.build_gated(bench.model_cfg(args.model), args.size)
    mutator = algo.mutator
    scores = MagnitudeImportance(p=1).score(
        ScoringContext(algo.architecture, mutator))
    ChannelSelector(cost='acts', cost_power=0.5, round_to=args.round_to,
                    max_prune_ratio=args.max_prune_ratio).select(
                        mutator, scores, target_flops=args.target_flops)
    structures = dict(unpruned=[torch.ones_like(u.mask)
                                for u in mutator.units],
                      pruned=[u.mask.clone() for u in mutator.units])
    for keep in UNIFORM_KEEPS:
        structures[f'uniform{keep}'] = uniform_masks(mutator, keep)
    return structure_runners_of(algo.architecture, mutator, structures,
                                (1, 3, args.size, args.size), args.backend,
                                args.threads)


def ratio(samples: Dict[str, List[float]]) -> float:
    """Pruned / unpruned of the medians."""
    return float(np.median(samples['pruned']) /
                 np.median(samples['unpruned']))


def main(argv=None) -> Dict:
    args = parse_args(argv)
    from mmifso.models.task_modules.latency import (block_samples,
                                                    interleaved_samples)
    torch.set_num_threads(args.threads)
    start = time.time()
    fns = structure_runners(args)
    pair = {k: fns[k] for k in ('unpruned', 'pruned')}
    ratios: Dict[str, List[float]] = dict(two=[], six=[], blocks=[])
    for r in range(args.repeats):
        ratios['two'].append(ratio(interleaved_samples(
            pair, args.rounds, 2, 0.0, r)))
        ratios['six'].append(ratio(interleaved_samples(
            fns, args.rounds, 2, 0.0, r)))
        ratios['blocks'].append(ratio(block_samples(
            pair, args.blocks, args.calls, r)))
        print(f'repeat {r}: ' + ', '.join(
            f'{k} {v[-1]:.3f}' for k, v in ratios.items()), flush=True)
    out = dict(args=vars(args), ratios=ratios, loadavg=os.getloadavg(),
               seconds=time.time() - start)
    if args.out:
        from mmifso.utils import save_json
        save_json(out, args.out)
        print(f'wrote {args.out}')
    return out


if __name__ == '__main__':
    main()
