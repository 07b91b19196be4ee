r"""CPU benchmark of mmifso's overheads and of the pruned models' speed.

Measures, each as a ratio of two timings taken side by side in one run (the
two measurements are interleaved A, B, A, B, ... and the medians compared, so
that slow drifts and bursts of load on a shared machine hit both alike):

1. **Gate overhead**: one training step (data pre-processing, forward,
   backward, SGD step) of the gated model (``mmifso.PruningAlgorithm``, every
   mask 1) against the same step of the plain, ungated model with the same
   weights. Goal: ratio <= 1.05.
2. **IFSO scoring cost**: ``IFSOImportance.score`` on one batch (Neumann
   order 0, ``hvp='exact'`` and ``hvp='finite_diff'``) against one plain
   training step on the same batch. Goal: exact ratio <= 3.
3. **Pruned-model latency**: the exported (physically pruned) ResNet at 50 %
   FLOPs against the unpruned model, eval mode under ``torch.no_grad``:
   speed-up (latency ratio) against the FLOPs speed-up (1 / FLOPs ratio).
   Goal: efficiency = speed-up / FLOPs speed-up >= 0.9.

Run from the repository root::

    OMP_NUM_THREADS=2 python tools/analysis/benchmark.py \
        --wait-idle 1800 --out docs/benchmarks.json

On a shared machine other processes distort the timings badly (with 2 torch
threads on 2 cores a single busy neighbour can make a step 10x slower);
``--wait-idle`` waits before each timed section until the machine is idle,
and every section records the CPU share other processes used meanwhile
(``cpu.foreign_share`` in the JSON), so a disturbed section can be spotted.

``--quick`` runs tiny sizes (ResNet-18 at 64x64, 1-2 repeats, 1 thread) in
well under a minute: it checks that the script works, its numbers mean
little.
"""
import argparse
import copy
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.hooks import Hook

IMAGENET_CFG = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
QUICK_IMAGENET_CFG = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'

#: Full settings (the documented run) and the ``--quick`` ones.
SETTINGS = dict(
    full=dict(
        imagenet_cfg=IMAGENET_CFG,
        imagenet_model='resnet50',
        image_size=224,
        train_batch=8,
        score_batch=8,
        cifar_batch=64,
        latency_batches=[1, 8],
        repeats=20,
        score_repeats=5,
        latency_repeats=20,
        warmup=2),
    quick=dict(
        imagenet_cfg=QUICK_IMAGENET_CFG,
        imagenet_model='resnet18',
        image_size=64,
        train_batch=2,
        score_batch=2,
        cifar_batch=4,
        latency_batches=[1, 2],
        repeats=2,
        score_repeats=1,
        latency_repeats=2,
        warmup=0))

GOAL_GATE = 1.05
GOAL_SCORE = 3.0
GOAL_EFFICIENCY = 0.9
GOAL_PRUNE_RUN = 1.5
TARGET_FLOPS = 0.5

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
#: The CIFAR-style ResNet-20 (32 x 32 inputs): the digits demo's baseline.
CIFAR_CFG = os.path.join(ROOT, 'configs', 'demo',
                         'resnet20_1xb64-30e_digits.py')


def log(msg: str) -> None:
    print(f'[benchmark {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr,
          flush=True)


# ---------------------------------------------------------------------- #
# Timing
# ---------------------------------------------------------------------- #
def stats(times: Sequence[float]) -> Dict:
    return dict(
        min=min(times),
        median=statistics.median(times),
        max=max(times),
        mean=statistics.fmean(times),
        n=len(times),
        times=[round(t, 6) for t in times])


def loadavg() -> List[float]:
    try:
        with open('/proc/loadavg') as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return []


def _cpu_sample():
    """(wall s, busy CPU s of the whole machine, CPU s of this process)."""
    busy = float('nan')
    try:
        with open('/proc/stat') as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        busy = (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf(
            'SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        pass
    return time.perf_counter(), busy, time.process_time()


def foreign_share(before, after) -> float:
    """Share of the machine's CPU capacity used by *other* processes between
    two :func:`_cpu_sample` calls (0 = we had the machine to ourselves, 1 =
    every core was busy with something else); NaN without /proc/stat."""
    wall = max(after[0] - before[0], 1e-9)
    other = (after[1] - before[1]) - (after[2] - before[2])
    return max(other, 0.0) / (wall * (os.cpu_count() or 1))


#: Seconds to wait at most for the machine to go idle before each timed
#: section (``--wait-idle``); 0 does not wait.
WAIT_IDLE = dict(max_s=0.0, threshold=0.1)


def wait_idle() -> Dict:
    """Wait (at most ``WAIT_IDLE['max_s']``) until other processes use less
    than ``WAIT_IDLE['threshold']`` of the CPUs over a 2 s window."""
    t0 = time.perf_counter()
    share = float('nan')
    if WAIT_IDLE['max_s'] <= 0:
        return dict(waited_s=0.0, foreign_share_before=share)
    announced = False
    while True:
        a = _cpu_sample()
        time.sleep(2.0)
        share = foreign_share(a, _cpu_sample())
        if not share > WAIT_IDLE['threshold']:  # also stops on NaN
            break
        if time.perf_counter() - t0 > WAIT_IDLE['max_s']:
            log(f'machine still busy ({share:.0%} of the CPUs used by other '
                'processes); timing anyway')
            break
        if not announced:
            log(f'waiting for the machine to go idle ({share:.0%} of the '
                'CPUs used by other processes)')
            announced = True
    return dict(
        waited_s=time.perf_counter() - t0, foreign_share_before=share)


def interleaved(fns: Dict[str, Callable[[], None]], repeats: int,
                warmup: int) -> Dict[str, Dict]:
    """Time ``fns`` round-robin: A, B, ..., A, B, ...; ``warmup`` untimed
    rounds first. Returns the statistics of each, in seconds, and under
    ``'_cpu'`` how busy the machine was meanwhile: ``foreign_share``, the
    share of the CPUs used by other processes during the timed rounds (near
    0 on an idle machine; the timings are unreliable well above 0), and
    ``cpu_per_wall``, this process's CPU time over wall time."""
    idle = wait_idle()
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    s0 = _cpu_sample()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    s1 = _cpu_sample()
    out: Dict[str, Dict] = {k: stats(v) for k, v in times.items()}
    out['_cpu'] = dict(
        foreign_share=foreign_share(s0, s1),
        cpu_per_wall=(s1[2] - s0[2]) / max(s1[0] - s0[0], 1e-9),
        loadavg_end=loadavg(),
        **idle)
    return out


def ratio(num: Dict, den: Dict) -> Dict:
    """Ratio of medians (the headline figure), the median of the per-round
    ratios and the ratio of minimums (least affected by other processes,
    whose load only ever adds time)."""
    paired = [a / b for a, b in zip(num['times'], den['times'])]
    return dict(
        ratio=num['median'] / den['median'],
        ratio_paired_median=statistics.median(paired),
        ratio_of_mins=num['min'] / den['min'])


# ---------------------------------------------------------------------- #
# Models and data
# ---------------------------------------------------------------------- #
def model_cfg(cfg_name: str) -> dict:
    """The model of a config (a file or ``pkg::path``), with the config's
    top-level ``data_preprocessor`` inside it where it has none (as the
    Runner does)."""
    from mmengine.registry import init_default_scope

    from mmifso.apis import load_config
    full = load_config(cfg_name)
    # mmdet configs name their types in the mmdet scope.
    init_default_scope(full.get('default_scope', 'mmpretrain'))
    model = full.model.to_dict()
    if 'data_preprocessor' not in model and \
            full.get('data_preprocessor') is not None:
        model['data_preprocessor'] = full.data_preprocessor.to_dict()
    return model


def build_gated(arch_cfg: dict, size: int, gate: str = 'weight'):
    """The gated model (all masks 1) with the mutator's ``gate`` mode;
    units with frozen parameters (a detector's first backbone stage) are
    left out, as the detection prune configs do."""
    from mmifso.registry import MODELS
    return MODELS.build(
        dict(
            type='mmifso.PruningAlgorithm',
            architecture=copy.deepcopy(arch_cfg),
            mutator=dict(
                type='mmifso.ChannelMutator',
                gate=gate,
                frozen='skip',
                demo_input=dict(
                    type='mmifso.DemoInput', input_shape=(1, 3, size,
                                                          size)))))


def build_pair(arch_cfg: dict, size: int):
    """The gated model (all masks 1) and the plain one with equal weights."""
    from mmifso.registry import MODELS
    algo = build_gated(arch_cfg, size)
    plain = MODELS.build(copy.deepcopy(arch_cfg))
    plain.load_state_dict(algo.architecture.state_dict())
    return algo, plain


def make_batch(n: int, size: int, num_classes: int, seed: int = 0) -> dict:
    from mmpretrain.structures import DataSample
    g = torch.Generator().manual_seed(seed)
    return dict(
        inputs=[
            torch.randint(0, 256, (3, size, size), generator=g,
                          dtype=torch.uint8) for _ in range(n)
        ],
        data_samples=[
            DataSample().set_gt_label(int(k))
            for k in torch.randint(0, num_classes, (n, ), generator=g)
        ])


def train_step_fn(model: nn.Module, batch: dict) -> Callable[[], None]:
    """One training step as a runner does it (pre-process included)."""
    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step():
        data = model.data_preprocessor(batch, True)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


# ---------------------------------------------------------------------- #
# 1. Gate overhead
# ---------------------------------------------------------------------- #
def bench_gate(name: str, algo, plain, batch_size: int, size: int,
               num_classes: int, repeats: int, warmup: int,
               input_gated=None) -> Dict:
    """Training step of ``algo`` (and of ``input_gated``, the same model
    with the mutator's ``gate='input'``, if given) against ``plain``."""
    log(f'gate overhead: {name}, batch {batch_size} at {size}x{size}, '
        f'{repeats} repeats')
    batch = make_batch(batch_size, size, num_classes)
    fns = dict(
        plain=train_step_fn(plain, batch), gated=train_step_fn(algo, batch))
    if input_gated is not None:
        input_gated.load_state_dict(algo.state_dict())
        fns['gated_input'] = train_step_fn(input_gated, batch)
    res = interleaved(fns, repeats=repeats, warmup=warmup)
    r = ratio(res['gated'], res['plain'])
    extra = {}
    if 'gated_input' in res:
        extra = dict(
            gated_input_s=res['gated_input'],
            input_gate_ratio=ratio(res['gated_input'],
                                   res['plain'])['ratio'])
    return dict(
        model=name,
        input_shape=[batch_size, 3, size, size],
        units=len(algo.mutator.units),
        gated_layers=len(algo.mutator._sites['in']),
        gate=algo.mutator.gate,
        plain_s=res['plain'],
        gated_s=res['gated'],
        cpu=res['_cpu'],
        **r,
        **extra,
        goal=f'ratio <= {GOAL_GATE}',
        goal_met=r['ratio'] <= GOAL_GATE)


# ---------------------------------------------------------------------- #
# 2. IFSO scoring cost
# ---------------------------------------------------------------------- #
def bench_scoring(name: str, algo, plain, batch_size: int, size: int,
                  num_classes: int, repeats: int, warmup: int) -> Dict:
    from mmifso.models.importance import IFSOImportance, ScoringContext
    log(f'IFSO scoring: {name}, batch {batch_size} at {size}x{size}, '
        f'{repeats} repeats')
    batch = make_batch(batch_size, size, num_classes, seed=1)
    algo.train()
    ctx = ScoringContext(algo.architecture, algo.mutator)
    exact = IFSOImportance(
        lam=1e-4, inverse='neumann', neumann_order=0, hvp='exact')
    fdiff = IFSOImportance(
        lam=1e-4, inverse='neumann', neumann_order=0, hvp='finite_diff')
    res = interleaved(
        dict(
            train_step=train_step_fn(plain, batch),
            exact=lambda: exact.score(ctx, [batch]),
            finite_diff=lambda: fdiff.score(ctx, [batch])),
        repeats=repeats,
        warmup=warmup)
    re_ = ratio(res['exact'], res['train_step'])
    rf = ratio(res['finite_diff'], res['train_step'])
    return dict(
        model=name,
        input_shape=[batch_size, 3, size, size],
        settings=dict(lam=1e-4, inverse='neumann', neumann_order=0),
        train_step_s=res['train_step'],
        exact_s=res['exact'],
        finite_diff_s=res['finite_diff'],
        cpu=res['_cpu'],
        exact_ratio=re_['ratio'],
        exact_ratio_paired_median=re_['ratio_paired_median'],
        exact_ratio_of_mins=re_['ratio_of_mins'],
        finite_diff_ratio=rf['ratio'],
        finite_diff_ratio_paired_median=rf['ratio_paired_median'],
        finite_diff_ratio_of_mins=rf['ratio_of_mins'],
        goal=f'exact_ratio <= {GOAL_SCORE}',
        goal_met=re_['ratio'] <= GOAL_SCORE)


# ---------------------------------------------------------------------- #
# 3. Pruned-model latency
# ---------------------------------------------------------------------- #
_BLOCK = re.compile(r'^(?P<stage>.*?(?:layer\d+|stages\.\d+))\.(?P<block>\d+)'
                    r'\.(?P<conv>.+)$')


def stage_channels(model: nn.Module) -> Dict[str, Dict]:
    """Output channels of every conv, grouped by stage and block."""
    out: Dict[str, Dict] = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        match = _BLOCK.match(name)
        if match is None:  # stem
            out.setdefault('stem', {})[name] = m.out_channels
            continue
        stage = out.setdefault(match['stage'], {})
        block = stage.setdefault(match['block'], {})
        block[match['conv']] = m.out_channels
    return out


def conv_shape_summary(model: nn.Module) -> Dict:
    outs = [m.out_channels for m in model.modules()
            if isinstance(m, nn.Conv2d)]
    return dict(
        convs=len(outs),
        convs_out_not_multiple_of_8=sum(c % 8 != 0 for c in outs),
        convs_out_below_8=sum(c < 8 for c in outs))


def conv_activations(model: nn.Module, size: int) -> int:
    """Output elements of every conv/linear layer for one image: a proxy of
    the memory traffic of the layers around them (norms, activations,
    residual adds, layout reorders), which scales with width, not width^2."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size), mode='tensor')
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def uniform_choices(mutator, scores: List[torch.Tensor],
                    target: float) -> float:
    """Keep the same share of every unit (rounded to multiples of 8, the
    highest-scoring channels) so that the FLOPs ratio is just <= target."""

    def apply(r: float):
        for unit, s in zip(mutator.units, scores):
            keep = max(8, int(round(unit.num_channels * r / 8)) * 8)
            keep = min(keep, unit.num_channels)
            kept = torch.argsort(s, descending=True)[:keep].tolist()
            unit.current_choice = kept
        return mutator.resources()['flops_ratio']

    lo, hi = 0.05, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        if apply(mid) <= target:
            lo = mid
        else:
            hi = mid
    apply(lo)
    return lo


def latency_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    def run():
        with torch.no_grad():
            model(x, mode='tensor')

    return run


def bench_structure(label: str, description: str, algo, unpruned: nn.Module,
                    size: int, batches: Sequence[int], repeats: int,
                    warmup: int) -> Dict:
    res = algo.mutator.resources()
    pruned, _ = algo.export()
    pruned.eval()
    flops_speedup = 1.0 / res['flops_ratio']
    entry = dict(
        structure=label,
        description=description,
        flops=res['flops'],
        flops_ratio=res['flops_ratio'],
        params=res['params'],
        params_ratio=res['params_ratio'],
        params_exported=sum(p.numel() for p in pruned.parameters()),
        flops_speedup=flops_speedup,
        activations_ratio=conv_activations(pruned, size) /
        conv_activations(unpruned, size),
        unit_channels=algo.mutator.channel_counts(),
        stage_channels=stage_channels(pruned),
        conv_shapes=conv_shape_summary(pruned),
        batches=[])
    for n in batches:
        log(f'latency: {label}, batch {n} at {size}x{size}, '
            f'{repeats} repeats')
        x = torch.randn(n, 3, size, size, generator=torch.Generator()
                        .manual_seed(n))
        t = interleaved(
            dict(
                unpruned=latency_fn(unpruned, x),
                pruned=latency_fn(pruned, x)),
            repeats=repeats,
            warmup=warmup)
        r = ratio(t['unpruned'], t['pruned'])
        speedup = r['ratio']
        entry['batches'].append(
            dict(
                batch=n,
                latency_unpruned_s=t['unpruned'],
                latency_pruned_s=t['pruned'],
                speedup=speedup,
                speedup_paired_median=r['ratio_paired_median'],
                speedup_of_mins=r['ratio_of_mins'],
                cpu=t['_cpu'],
                flops_speedup=flops_speedup,
                efficiency=speedup / flops_speedup,
                goal=f'efficiency >= {GOAL_EFFICIENCY}',
                goal_met=speedup / flops_speedup >= GOAL_EFFICIENCY))
    return entry


def bench_latency(name: str, arch_cfg: dict, size: int,
                  batches: Sequence[int], repeats: int, warmup: int) -> Dict:
    from mmifso.models.importance import MagnitudeImportance, ScoringContext
    from mmifso.models.mutators import select_channels, strip_gates
    torch.manual_seed(0)
    algo, _ = build_pair(arch_cfg, size)
    unpruned = copy.deepcopy(algo.architecture)
    strip_gates(unpruned)
    unpruned.eval()
    full = algo.mutator.resources()
    ctx = ScoringContext(algo.architecture, algo.mutator)
    scores = MagnitudeImportance(p=1).score(ctx)
    structures = []

    t0 = time.perf_counter()
    select_channels(
        algo.mutator,
        scores,
        num_channels=10**9,
        cost='acts',
        cost_power=0.5,
        target_flops=TARGET_FLOPS)
    select_s = time.perf_counter() - t0
    log(f'select_channels to {TARGET_FLOPS} FLOPs took {select_s:.1f} s')
    structures.append(
        bench_structure(
            'global_l1',
            'IFSO-style global selection: MagnitudeImportance(p=1) scores, '
            "select_channels(cost='acts', cost_power=0.5, target_flops=0.5)",
            algo, unpruned, size, batches, repeats, warmup))
    structures[-1]['select_channels_s'] = select_s

    share = uniform_choices(algo.mutator, scores, TARGET_FLOPS)
    structures.append(
        bench_structure(
            'uniform_x8',
            f'reference shape: every unit keeps {share:.3f} of its channels '
            '(rounded to multiples of 8, highest L1 first)', algo, unpruned,
            size, batches, repeats, warmup))
    return dict(
        model=name,
        image_size=size,
        weights='random initialisation (torch.manual_seed(0)); no '
        'pretrained weights are available offline',
        target_flops=TARGET_FLOPS,
        mode='eval, torch.no_grad, mode="tensor" (logits)',
        unpruned_stage_channels=stage_channels(unpruned),
        unpruned_flops=full['flops'],
        unpruned_params=full['params'],
        structures=structures)


# ---------------------------------------------------------------------- #
# 4. Prune for speed (opt-in: --speed)
# ---------------------------------------------------------------------- #
SPEED_TARGET = 0.5


def speed_selections(round_to: int = 8) -> Tuple[Tuple[str, dict], ...]:
    """``(label, ChannelSelector.select target)`` of the section's
    structures: the FLOPs and the latency target, each with free widths and
    with multiples of ``round_to`` channels (label suffix ``_x<round_to>``).
    """
    return (
        ('flops50', dict(target_flops=SPEED_TARGET)),
        (f'flops50_x{round_to}',
         dict(target_flops=SPEED_TARGET, round_to=round_to)),
        ('latency50', dict(target_latency=SPEED_TARGET)),
        (f'latency50_x{round_to}',
         dict(target_latency=SPEED_TARGET, round_to=round_to)),
    )


def select_speed_structures(mutator, scores: List[torch.Tensor], table,
                            backend: str,
                            max_prune_ratio: Optional[float] = None,
                            round_to: int = 8,
                            model: Optional[torch.nn.Module] = None
                            ) -> Tuple[Dict, Dict]:
    """The masks of every :func:`speed_selections` entry, each selected
    from the full model with the same scores (``acts`` cost for FLOPs
    targets, the latency table for latency targets); the mutator is left
    unmasked.

    Args:
        max_prune_ratio (float, optional): No unit loses more than this
            share (keeps random-weight magnitude shapes realistic).
        round_to (int): The channel multiple of the ``_x`` structures.
        model (nn.Module, optional): The gated architecture; given, a last
            structure ``latency50_x<round_to>_measured`` goes to the target
            on measured latency (``LatencyFeedback``).

    Returns:
        tuple: ``{label: masks}`` (``unpruned`` first) and ``{label:
        selection info}`` (selection seconds, selector, FLOPs ratio,
        predicted latency, channel counts; the feedback's measurements).
    """
    from mmifso.models.mutators import ChannelSelector
    structures = dict(unpruned=[torch.ones_like(u.mask)
                                for u in mutator.units])
    info = {}
    selections = list(speed_selections(round_to))
    if model is not None:
        selections.append((f'latency50_x{round_to}_measured',
                           dict(target_latency=SPEED_TARGET,
                                round_to=round_to, feedback=True)))
    for label, target in selections:
        kw = dict(target)
        for u in mutator.units:
            u.mask.fill_(1)
        sel = ChannelSelector(
            cost='latency' if 'target_latency' in kw else 'acts',
            cost_power=0.5, round_to=kw.pop('round_to', 1),
            max_prune_ratio=max_prune_ratio, latency_table=table)
        t1 = time.perf_counter()
        if kw.pop('feedback', False):
            history = select_with_feedback(sel, mutator, scores, table,
                                           model, kw['target_latency'])
        else:
            sel.select(mutator, scores, **kw)
            history = None
        info[label] = speed_info(sel, mutator, table,
                                 time.perf_counter() - t1, history)
        structures[label] = [u.mask.clone() for u in mutator.units]
        log(f'{backend} {label}: FLOPs {info[label]["flops_ratio"]:.3f}'
            f', predicted latency ratio '
            f'{info[label]["predicted_ratio"]:.3f}')
    for u in mutator.units:
        u.mask.fill_(1)
    return structures, info


def select_with_feedback(selector, mutator, scores: List[torch.Tensor],
                         table, model: torch.nn.Module,
                         target: float) -> List[Dict]:
    """Select (from the current masks, same scores) until the exported
    structure *measures* ``target`` of the unpruned latency: the goals of
    :class:`~mmifso.models.mutators.latency.LatencyFeedback`, each measured
    at the table's shape, backend and threads.

    Returns:
        list[dict]: Predicted, measured and goal per measurement.
    """
    from mmifso.models.mutators.latency import (LatencyFeedback,
                                                measure_latency_ratio)
    fb = LatencyFeedback(target)

    def prune_to(goal: float) -> Tuple[float, bool]:
        selector.select(mutator, scores, target_latency=goal)
        predicted = selector.ratio(mutator, 'latency')
        return predicted, predicted > goal  # above the goal: the floor

    def measure() -> Tuple[float, float]:
        res = measure_latency_ratio(model, mutator, table, rounds=fb.rounds)
        log(f'  feedback: predicted {selector.ratio(mutator, "latency"):.3f}'
            f' -> measured {res["ratio"]:.3f} (se {res["ratio_se"]:.3f})')
        return res['ratio'], res['ratio_se']

    fb.run(prune_to, measure)
    return fb.history


def speed_info(selector, mutator, table, select_s: float,
               feedback: Optional[List[Dict]] = None) -> Dict:
    """A selected structure's JSON entry: selection time, selector, FLOPs
    ratio, predicted latency (ms and ratio), channel counts, and the
    feedback's measurements where it had any."""
    from mmifso.models.mutators.latency import predict_latency_ms
    out = dict(select_s=select_s, selector=repr(selector),
               flops_ratio=mutator.resources()['flops_ratio'],
               predicted_ms=predict_latency_ms(table, mutator),
               predicted_ratio=selector.ratio(mutator, 'latency'),
               unit_channels=mutator.channel_counts())
    if feedback is not None:
        out['feedback'] = feedback
    return out


def measure_speed_batch(algo, structures: Dict, info: Dict, n: int,
                        size: int, backend: str, threads: int,
                        rounds: int) -> Dict:
    """Latency of every structure at batch ``n``, interleaved with the
    unpruned model, against its FLOPs speed-up.

    Returns:
        dict: The batch's JSON entry.
    """
    from mmifso.models.mutators.latency import measure_structures_ms
    wait_idle()
    s0 = _cpu_sample()
    ms = measure_structures_ms(
        algo.architecture, algo.mutator, structures, (n, 3, size, size),
        backend, threads, rounds=rounds)
    cpu = foreign_share(s0, _cpu_sample())
    rows = {}
    for label in structures:
        if label == 'unpruned':
            continue
        speedup = ms['unpruned'] / ms[label]
        rows[label] = dict(
            ms=ms[label], speedup=speedup,
            measured_ratio=1 / speedup,
            flops_speedup=1 / info[label]['flops_ratio'],
            efficiency=speedup * info[label]['flops_ratio'])
    return dict(batch=n, unpruned_ms=ms['unpruned'], foreign_share=cpu,
                structures=rows)


def bench_speed(name: str, arch_cfg: dict, size: int, batches: Sequence[int],
                threads: int, table_rounds: int, rounds: int,
                backends: Sequence[str], work_dir: str,
                max_prune_ratio: Optional[float] = None,
                round_to: int = 8) -> Dict:
    """``target_latency=0.5`` against ``target_flops=0.5`` (same scores),
    with and without ``round_to`` (default 8), per backend: latency table
    built here (batch ``batches[0]``), structures selected with
    :class:`~mmifso.models.mutators.ChannelSelector`, the exported models
    measured interleaved with the unpruned one at every batch size."""
    from mmifso.models.importance import MagnitudeImportance, ScoringContext
    from mmifso.models.mutators.latency import build_model_latency_table
    torch.manual_seed(0)
    algo, _ = build_pair(arch_cfg, size)
    mutator = algo.mutator
    ctx = ScoringContext(algo.architecture, mutator)
    scores = MagnitudeImportance(p=1).score(ctx)
    out = dict(model=name, image_size=size, threads=threads,
               criterion='MagnitudeImportance(p=1), random initialisation',
               max_prune_ratio=max_prune_ratio, round_to=round_to,
               target=SPEED_TARGET, backends=[])
    os.makedirs(work_dir, exist_ok=True)
    for backend in backends:
        shape = (batches[0], 3, size, size)
        wait_idle()
        s0 = _cpu_sample()
        t0 = time.perf_counter()
        table = build_model_latency_table(
            algo.architecture, mutator, shape, backend, threads,
            rounds=table_rounds, log=log)
        build_s = time.perf_counter() - t0
        table.save(os.path.join(work_dir, f'latency_{backend}.json'))
        table_cpu = foreign_share(s0, _cpu_sample())
        structures, info = select_speed_structures(
            mutator, scores, table, backend, max_prune_ratio, round_to,
            algo.architecture)
        entry = dict(backend=backend, table_build_s=build_s,
                     table_foreign_share=table_cpu,
                     predicted_unpruned_ms=table.full_ms,
                     structures=info, batches=[])
        for n in batches:
            entry['batches'].append(measure_speed_batch(
                algo, structures, info, n, size, backend, threads, rounds))
        out['backends'].append(entry)
    return out


def print_speed(speed: Dict) -> None:
    print(f'\n4. Prune for speed: {speed["model"]} at '
          f'{speed["image_size"]}x{speed["image_size"]}, target '
          f'{speed["target"]} ({speed["criterion"]})')
    for e in speed['backends']:
        print(f'  {e["backend"]}: table built in {e["table_build_s"]:.0f} s '
              f'(other processes {e["table_foreign_share"]:.0%} of the CPUs)')
        for b in e['batches']:
            print(f'    batch {b["batch"]}: unpruned {b["unpruned_ms"]:.2f} ms'
                  f' (other processes {b["foreign_share"]:.0%})')
            for label, r in b['structures'].items():
                i = e['structures'][label]
                print(f'      {label:<22} FLOPs {i["flops_ratio"]:.3f}  '
                      f'predicted {i["predicted_ratio"]:.3f}  measured '
                      f'{r["measured_ratio"]:.3f}  speed-up '
                      f'{r["speedup"]:.2f}x  efficiency '
                      f'{r["efficiency"]:.2f}')


# ---------------------------------------------------------------------- #
# 5. Whole pruning run (opt-in: --prune-run)
# ---------------------------------------------------------------------- #
#: The two runs timed with and without their PruningHook.
PRUNE_RUN_CONFIGS = dict(
    digits='configs/demo/ifso_resnet20_prune_digits.py',
    shapes_retinanet='configs/demo_det/ifso_retinanet_r18-w32_prune_shapes.py')
#: The COCO prune config whose pruning phase is projected in epochs.
COCO_RETINANET_PRUNE = 'ifso_prune_retinanet_r50_fpn_1x_coco.py'
#: COCO train2017 images and the batch of the ``8xb2`` / ``1x`` schedules.
COCO_TRAIN_IMAGES = 118287
COCO_GLOBAL_BATCH = 16


def scored_per_iteration(hook: Dict) -> float:
    """Batches a ``PruningHook`` scores per iteration on average:
    ``score_batches``, times ``score_window / interval`` with a window.

    Args:
        hook (dict): The hook's config, or a :func:`prune_iterations`
            entry (same keys; the hook's defaults where missing).
    """
    batches = hook.get('score_batches', 2)
    window = hook.get('score_window')
    if window is None:
        return float(batches)
    return batches * window / hook.get('interval', 10)


def pruning_hook_cfg(cfg) -> Dict:
    """The ``PruningHook`` entry of a config's ``custom_hooks``."""
    from mmifso.apis import pruning_hook_index
    return cfg.custom_hooks[pruning_hook_index(cfg)]


def prune_iterations(cfg_file: str) -> Dict:
    """Iterations a prune config needs to reach its target.

    Builds the config's masked model (random weights), ranks the channels
    with L1-magnitude scores through the hook's own :class:`ChannelSelector`
    (``cost``, ``cost_power``, ``selection``) and counts the channels removed
    until the FLOPs target is met. With fixed scores and a per-unit cost the
    greedy order does not change between steps, so the run needs
    ``ceil(channels / channels_per_step)`` pruning steps and ``start_iter +
    steps * interval`` iterations. The real criterion ranks other channels
    (trained weights, IFSO scores), so the count is a projection: channels
    with more FLOPs per channel reach the target sooner.

    Args:
        cfg_file (str): A prune config.

    Returns:
        dict: Units, channels, the hook's settings, channels to remove,
        steps and iterations.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmifso.models.importance import MagnitudeImportance, ScoringContext
    from mmifso.models.mutators import ChannelSelector
    from mmifso.registry import MODELS
    cfg = Config.fromfile(cfg_file)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    hook = pruning_hook_cfg(cfg)
    if hook.get('target_latency') is not None:
        return dict(config=cfg_file, skipped='target_latency (needs a '
                    'latency table of the target device)')
    target = hook.get('target_flops', 0.5) or 0.5
    algo = MODELS.build(cfg.model)
    mutator = algo.mutator
    selector = ChannelSelector(
        cost=hook.get('cost', 'acts'),
        cost_power=hook.get('cost_power', 0.5),
        **(hook.get('selection') or {}))
    ctx = ScoringContext(algo.architecture, mutator)
    scores = MagnitudeImportance().compute(ctx)
    removed = selector.select(mutator, scores, None, target)
    per_step = hook.get('channels_per_step', 1)
    interval = hook.get('interval', 10)
    steps = math.ceil(len(removed) / per_step)
    out = dict(
        config=cfg_file,
        units=len(mutator.units),
        channels=sum(u.num_channels for u in mutator.units),
        target_flops=target,
        reached_flops=mutator.resources()['flops_ratio'],
        interval=interval,
        channels_per_step=per_step,
        score_batches=hook.get('score_batches', 2),
        score_window=hook.get('score_window'),
        start_iter=hook.get('start_iter', 0),
        channels_to_remove=len(removed),
        steps=steps,
        iterations=hook.get('start_iter', 0) + steps * interval)
    batch = cfg.train_dataloader.get('batch_size')
    if batch:
        out['batch_per_gpu'] = batch
    return out


class IterTimer(Hook):
    """Hook recording the wall time of every training iteration.

    Iteration ``i`` lasts from its ``before_train_iter`` to the next one's
    (the end of training for the last), so the scoring in the
    ``PruningHook``'s ``before_train_iter``, the step and the pruning step
    in its ``after_train_iter`` all count. Registered at the highest
    priority.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        super().__init__()
        self.stamps: List[float] = []

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.stamps.append(time.perf_counter())

    def after_train(self, runner) -> None:
        self.stamps.append(time.perf_counter())

    def times(self) -> List[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def prune_run_cfg(cfg_file: str, with_hook: bool, iters: int, work_dir: str,
                  data_root: Optional[str],
                  hook_options: Optional[Dict] = None):
    """The prune config as a fixed-length run, with or without its hook.

    Iteration-based for ``iters`` iterations, no validation, no checkpoint,
    no ``load_from`` (the timings do not depend on the weights, and a
    masked model costs what the full one costs), fixed seed so both runs
    see the same batches. Without the hook it is the plain training of the
    same model (the gates stay, all ones). ``hook_options`` override the
    hook's settings (e.g. ``score_window``).
    """
    from mmengine.config import Config
    cfg = Config.fromfile(cfg_file)
    cfg.work_dir = work_dir
    cfg.load_from = None
    cfg.resume = False
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters,
                         val_interval=10**9)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator',
                'test_dataloader', 'test_cfg', 'test_evaluator'):
        cfg[key] = None
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=-1, save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=10**9)
    if 'visualization' in cfg.default_hooks:
        cfg.default_hooks.pop('visualization')
    cfg.randomness = dict(seed=0)
    cfg.log_level = 'WARNING'  # no config dump and no per-step lines
    hooks = [h for h in cfg.get('custom_hooks', [])
             if not str(h.get('type', '')).endswith('PruningHook')]
    if with_hook:
        hook = copy.deepcopy(pruning_hook_cfg(cfg))
        hook['save_thresholds'] = []  # no checkpoint IO in the timing
        hook.update(hook_options or {})
        hooks.append(hook)
    cfg.custom_hooks = hooks
    if data_root is not None:
        cfg.train_dataloader.dataset.data_root = data_root.rstrip('/') + '/'
    return cfg


def bench_prune_run(name: str, cfg_file: str, iters: int, warmup: int,
                    rounds: int, work_dir: str,
                    data_root: Optional[str] = None,
                    variant: Optional[Dict] = None) -> Dict:
    """Wall time of a prune config's iterations with / without the hook.

    ``rounds`` pairs of runs (pruned, plain, pruned, plain, ...), each a
    fresh mmengine Runner of ``warmup + iters`` iterations; the first
    ``warmup`` iterations of each run are not timed. The ratio of the summed
    iteration times is the factor a user pays for the pruning phase over
    the plain training of the same iterations. With ``variant`` (hook
    settings, e.g. ``dict(interval=12, score_window=1)``) a third run,
    ``variant``, the hook with those settings, joins every round.
    """
    from mmengine.runner import Runner
    log(f'pruning run: {name}, {rounds} x ({warmup} + {iters} iterations) '
        'with and without the PruningHook')
    idle = wait_idle()
    labels = ('pruned', 'plain') + (('variant', ) if variant else ())
    totals: Dict[str, List[float]] = {label: [] for label in labels}
    s0 = _cpu_sample()
    for r in range(rounds):
        for label in labels:
            cfg = prune_run_cfg(cfg_file, label != 'plain', warmup + iters,
                                os.path.join(work_dir, name, label),
                                data_root,
                                variant if label == 'variant' else None)
            runner = Runner.from_cfg(cfg)
            timer = IterTimer()
            runner.register_hook(timer, priority='VERY_HIGH')
            runner.train()
            totals[label].append(sum(timer.times()[warmup:]))
            del runner
    s1 = _cpu_sample()
    from mmengine.config import Config
    hook = pruning_hook_cfg(Config.fromfile(cfg_file))

    def vs_plain(label: str) -> Dict:
        # Ratio of the summed times (the headline), paired median, goal.
        r = sum(totals[label]) / sum(totals['plain'])
        per_round = [a / b for a, b in zip(totals[label], totals['plain'])]
        return dict(ratio=r, ratio_paired_median=statistics.median(per_round),
                    goal_met=r <= GOAL_PRUNE_RUN)

    out = dict(
        model=name,
        config=cfg_file,
        hook=dict(hook),
        iterations=iters,
        warmup_iterations=warmup,
        rounds=rounds,
        pruned_s=stats(totals['pruned']),
        plain_s=stats(totals['plain']),
        goal=f'ratio <= {GOAL_PRUNE_RUN}',
        cpu=dict(foreign_share=foreign_share(s0, s1), **idle),
        **vs_plain('pruned'))
    if variant:
        out['variant'] = dict(hook_options=dict(variant),
                              variant_s=stats(totals['variant']),
                              **vs_plain('variant'))
    return out


def prune_run_section(iters: int, warmup: int, rounds: int, work_dir: str,
                      shapes_train: int, all_configs: bool,
                      variant: Optional[Dict] = None,
                      count: bool = True) -> Dict:
    """Section 5: both A/B runs (with a third, ``variant`` hook settings,
    where given), the iterations every shipped prune config needs (unless
    ``count`` is False), and the projected pruning-phase cost of RetinaNet
    on COCO."""
    import glob

    from mmifso.datasets.shapes import make_shapes_coco, shapes_coco_exists
    data_root = os.path.join(work_dir, 'shapes_coco')
    if not shapes_coco_exists(data_root, splits=('train', ),
                              num=dict(train=shapes_train), size=160):
        make_shapes_coco(data_root, shapes_train, 1, 160, 0)
    out = dict(runs=[
        bench_prune_run('digits', PRUNE_RUN_CONFIGS['digits'], iters,
                        warmup, rounds, work_dir, variant=variant),
        bench_prune_run('shapes_retinanet',
                        PRUNE_RUN_CONFIGS['shapes_retinanet'], iters, warmup,
                        rounds, work_dir, data_root, variant=variant),
    ])
    if not count:
        return out
    files = list(PRUNE_RUN_CONFIGS.values())
    if all_configs:
        files += sorted(
            glob.glob('configs/ifso/**/ifso_prune_*.py', recursive=True))
    out['iterations_to_target'] = []
    for f in files:
        log(f'iterations to target: {f}')
        out['iterations_to_target'].append(prune_iterations(f))
    coco = [e for e in out['iterations_to_target']
            if e['config'].endswith(COCO_RETINANET_PRUNE)]
    if coco:
        out['coco_retinanet_projection'] = coco_projection(
            out['runs'][1], coco[0])
    return out


def coco_projection(run: Dict, coco: Dict) -> Dict:
    """Extra cost of a COCO pruning phase in plain training epochs.

    Args:
        run (dict): A :func:`bench_prune_run` result (the shapes-COCO
            RetinaNet): ``(ratio - 1) /`` the batches its hook scores per
            iteration (:func:`scored_per_iteration`) is the extra cost of
            one scored batch in plain iterations.
        coco (dict): The :func:`prune_iterations` entry of the COCO config.

    Returns:
        dict: Iterations, epochs of the pruning phase and its extra cost
        ``iterations x scored batches per iteration x per-batch cost /
        iterations per epoch``, in plain epochs of ``COCO_GLOBAL_BATCH``
        images per iteration.
    """
    per_batch = (run['ratio'] - 1) / (scored_per_iteration(run['hook']) or 1)
    per_epoch = math.ceil(COCO_TRAIN_IMAGES / COCO_GLOBAL_BATCH)
    n = coco['iterations']
    return dict(
        config=coco['config'],
        pruning_iterations=n,
        iterations_per_epoch=per_epoch,
        global_batch=COCO_GLOBAL_BATCH,
        score_batches=coco['score_batches'],
        measured_ratio=run['ratio'],
        extra_per_scored_batch=per_batch,
        pruning_phase_epochs=n / per_epoch,
        extra_cost_epochs=n * per_batch * scored_per_iteration(coco) /
        per_epoch,
        note='measured at 160 px on this machine; at 1333x800 on a GPU the '
        'cost of a scored batch may differ')


def print_prune_run(section: Dict) -> None:
    print('\n5. Whole pruning run: with / without the PruningHook (sum of '
          'timed iterations)')
    for e in section['runs']:
        print(f'  {e["model"]:18s} {e["iterations"]} it x {e["rounds"]} '
              f'rounds: pruned {fmt_s(e["pruned_s"])}, plain '
              f'{fmt_s(e["plain_s"])}, ratio {e["ratio"]:.2f} (paired '
              f'median {e["ratio_paired_median"]:.2f}), goal '
              f'{e["goal"]}: {yes(e["goal_met"])}; other processes used '
              f'{e["cpu"]["foreign_share"]:.0%} of the CPUs')
        v = e.get('variant')
        if v:
            print(f'  {"":18s} variant {v["hook_options"]}: '
                  f'{fmt_s(v["variant_s"])}, ratio {v["ratio"]:.2f} (paired '
                  f'median {v["ratio_paired_median"]:.2f}), goal '
                  f'{e["goal"]}: {yes(v["goal_met"])}')
    for e in section.get('iterations_to_target', []):
        if 'skipped' in e:
            print(f'  {e["config"]}: skipped ({e["skipped"]})')
            continue
        print(f'  {e["config"]}: {e["channels_to_remove"]} of '
              f'{e["channels"]} channels in {e["units"]} units, '
              f'{e["channels_per_step"]} per step every {e["interval"]} it '
              f'-> {e["steps"]} steps, {e["iterations"]} iterations '
              f'(x{e["score_batches"]} scored batches)')
    p = section.get('coco_retinanet_projection')
    if p:
        print(f'  RetinaNet COCO: {p["pruning_iterations"]} iterations = '
              f'{p["pruning_phase_epochs"]:.2f} epochs of '
              f'{p["iterations_per_epoch"]} iterations, '
              f'{p["score_batches"]} scored batches each; extra cost '
              f'{p["extra_cost_epochs"]:.1f} plain epochs (one scored batch '
              f'= {p["extra_per_scored_batch"]:.2f} plain iterations)')


# ---------------------------------------------------------------------- #
# Report
# ---------------------------------------------------------------------- #
def machine_info(threads: int) -> Dict:
    cpu_model, flags = 'unknown', set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name') and cpu_model == 'unknown':
                    cpu_model = line.split(':', 1)[1].strip()
                if line.startswith('flags') and not flags:
                    flags = set(line.split(':', 1)[1].split())
    except OSError:
        pass
    simd = sorted(f for f in flags
                  if f in ('avx', 'avx2', 'fma', 'avx512f', 'avx512_vnni',
                           'avx512_bf16', 'amx_bf16', 'amx_tile'))
    import mmcv
    import mmengine
    import mmpretrain

    import mmifso
    return dict(
        cpu_model=cpu_model,
        cpu_simd_flags=simd,
        logical_cpus=os.cpu_count(),
        torch_threads=threads,
        torch_interop_threads=torch.get_num_interop_threads(),
        mkldnn=torch.backends.mkldnn.is_available(),
        torch=torch.__version__,
        mmengine=mmengine.__version__,
        mmcv=mmcv.__version__,
        mmpretrain=mmpretrain.__version__,
        mmifso=mmifso.__version__,
        python=platform.python_version(),
        platform=platform.platform())


def fmt_s(s: Dict) -> str:
    return (f'{s["median"] * 1e3:9.1f} ms '
            f'[{s["min"] * 1e3:.1f}-{s["max"] * 1e3:.1f}]')


def yes(ok: bool) -> str:
    return 'met' if ok else 'MISSED'


def print_report(result: Dict) -> None:
    m = result['machine']
    print(f'\nmmifso benchmark on {m["cpu_model"]}, {m["torch_threads"]} '
          f'threads, torch {m["torch"]}'
          + (' (QUICK: sizes too small to mean much)'
             if result['quick'] else ''))
    print('\n1. Gate overhead: one training step, gated / plain '
          '(median [min-max])')
    for e in result['gate_overhead']:
        print(f'  {e["model"]:<12} {str(tuple(e["input_shape"])):<18} '
              f'plain {fmt_s(e["plain_s"])}  gated {fmt_s(e["gated_s"])}  '
              f'ratio {e["ratio"]:.3f} (of mins {e["ratio_of_mins"]:.3f}; '
              f'goal <= {GOAL_GATE}: {yes(e["goal_met"])})')
        if 'input_gate_ratio' in e:
            print(f'  {"":<31}input-side gates (gate=\'input\'): '
                  f'{fmt_s(e["gated_input_s"])}, ratio '
                  f'{e["input_gate_ratio"]:.3f}')
    print('\n2. IFSO scoring of one batch / one plain training step')
    for e in result['ifso_scoring']:
        print(f'  {e["model"]:<12} {str(tuple(e["input_shape"])):<18} '
              f'train {fmt_s(e["train_step_s"])}  exact '
              f'{fmt_s(e["exact_s"])}  finite_diff '
              f'{fmt_s(e["finite_diff_s"])}')
        print(f'  {"":<31}exact ratio {e["exact_ratio"]:.2f} (of mins '
              f'{e["exact_ratio_of_mins"]:.2f}; goal <= {GOAL_SCORE}: '
              f'{yes(e["goal_met"])}), finite_diff ratio '
              f'{e["finite_diff_ratio"]:.2f} (of mins '
              f'{e["finite_diff_ratio_of_mins"]:.2f})')
    lat = result['latency']
    print(f'\n3. Exported {lat["model"]} at {TARGET_FLOPS:.0%} FLOPs, '
          f'{lat["image_size"]}x{lat["image_size"]}, eval, no_grad')
    for s in lat['structures']:
        print(f'  {s["structure"]}: FLOPs ratio {s["flops_ratio"]:.3f}, '
              f'params ratio {s["params_ratio"]:.3f}, conv output '
              f'activations ratio {s["activations_ratio"]:.3f}; '
              f'{s["conv_shapes"]["convs_out_below_8"]} of '
              f'{s["conv_shapes"]["convs"]} convs with < 8 output channels')
        for b in s['batches']:
            print(f'    batch {b["batch"]}: unpruned '
                  f'{fmt_s(b["latency_unpruned_s"])}  pruned '
                  f'{fmt_s(b["latency_pruned_s"])}  speedup '
                  f'{b["speedup"]:.2f}x (of mins {b["speedup_of_mins"]:.2f}x) '
                  f'/ FLOPs {b["flops_speedup"]:.2f}x = efficiency '
                  f'{b["efficiency"]:.2f} (goal >= {GOAL_EFFICIENCY}: '
                  f'{yes(b["goal_met"])})')
    sections = [(f'gate/{e["model"]}', e['cpu'])
                for e in result['gate_overhead']]
    sections += [(f'scoring/{e["model"]}', e['cpu'])
                 for e in result['ifso_scoring']]
    sections += [(f'latency/{s["structure"]}/b{b["batch"]}', b['cpu'])
                 for s in lat['structures'] for b in s['batches']]
    print('\nCPU share used by other processes while timing (0 = idle '
          'machine): ' + ', '.join(f'{n} {c["foreign_share"]:.0%}'
                                   for n, c in sections))
    waited = sum(c.get('waited_s', 0.0) for _, c in sections)
    print(f'total time {result["total_time_s"]:.0f} s ({waited:.0f} s of it '
          f'waiting for an idle machine); load average '
          f'{result["loadavg_start"]} at start, {result["loadavg_end"]} at '
          'end')


def parse_args(argv=None):
    """The command-line options.

    Long on purpose: one ``add_argument`` per option, each with its help.
    """
    from mmifso.models.task_modules.latency import BACKENDS
    from mmifso.utils import KeyValueAction
    parser = argparse.ArgumentParser(
        description='Time mmifso gate overhead, IFSO scoring and pruned '
        'model latency on the CPU.')
    parser.add_argument('--out', help='write the JSON results here')
    parser.add_argument(
        '--repeats', type=int,
        help='timed rounds of the training-step comparisons (default 20, '
        'quick 2)')
    parser.add_argument(
        '--score-repeats', type=int,
        help='timed rounds of the ImageNet-model IFSO scoring (default 5, '
        'quick 1); the CIFAR model uses --repeats')
    parser.add_argument(
        '--latency-repeats', type=int,
        help='timed rounds of each latency comparison (default 20, quick 2)')
    parser.add_argument(
        '--threads', type=int, default=None,
        help='torch intra-op threads (default: number of logical CPUs; 1 '
        'with --quick)')
    parser.add_argument(
        '--wait-idle', type=float, default=0.0, metavar='SECONDS',
        help='before each timed section wait up to SECONDS for other '
        'processes to use < 10%% of the CPUs (default 0: no waiting)')
    parser.add_argument(
        '--quick', action='store_true',
        help='tiny sizes and 1-2 repeats, for the test suite (< 1 min)')
    parser.add_argument(
        '--speed', action='store_true',
        help='run only section 4 (prune for speed: target_latency vs '
        'target_flops, free widths and multiples of --speed-round-to, torch '
        'and ONNX Runtime, batch 1 and 8)')
    parser.add_argument(
        '--prune-run', action='store_true',
        help='run only section 5 (the digits and shapes-COCO prune configs '
        'with and without their PruningHook, iterations every shipped '
        'prune config needs, RetinaNet COCO projection)')
    parser.add_argument(
        '--prune-iters', type=int, default=None,
        help='timed iterations per run of section 5 (default 60, quick 2)')
    parser.add_argument(
        '--prune-warmup', type=int, default=None,
        help='untimed first iterations per run (default 4, quick 1)')
    parser.add_argument(
        '--prune-rounds', type=int, default=None,
        help='A/B pairs of runs (default 3, quick 1)')
    parser.add_argument(
        '--prune-variant', nargs='+', action=KeyValueAction, default=None,
        metavar='KEY=VALUE',
        help='section 5: a third run per round, the PruningHook with these '
        'settings (e.g. interval=12 score_window=1)')
    parser.add_argument(
        '--no-prune-count', action='store_true',
        help='section 5 without counting the iterations of every shipped '
        'prune config (about 20 minutes)')
    parser.add_argument(
        '--prune-dir', default='work_dirs/benchmark_prune_run',
        help='work dirs and shapes data of section 5')
    parser.add_argument(
        '--speed-backends', nargs='+', default=['torch', 'onnxruntime'],
        choices=BACKENDS)
    parser.add_argument(
        '--speed-dir', default='work_dirs/benchmark_speed',
        help='where section 4 writes its latency tables')
    parser.add_argument(
        '--speed-config', default=None,
        help='section 4 on this config\'s model instead of ResNet-50 (a '
        'file or pkg::path, e.g. mmdet::retinanet/retinanet_r50_fpn_1x_'
        'coco.py; detectors run in tensor mode, their raw head outputs)')
    parser.add_argument(
        '--speed-size', type=int, default=None,
        help='square input size of section 4 (default: 224, quick 64)')
    parser.add_argument(
        '--speed-max-prune-ratio', type=float, default=None,
        help='section 4: no unit loses more than this share of its channels '
        '(random weights otherwise let magnitude scores empty whole stages)')
    parser.add_argument(
        '--speed-round-to', type=int, default=8,
        help='section 4: the channel multiple of its rounded structures '
        '(default 8; 16 is ONNX Runtime\'s block on the development CPU, '
        'docs/benchmarks.md "Alignment")')
    parser.add_argument(
        '--speed-batches', type=int, nargs='+', default=None,
        help='batch sizes of section 4 (default 1 8; the table is built at '
        'the first)')
    args = parser.parse_args(argv)
    if args.speed_round_to < 1:
        # Refused here, not minutes later when the structures are selected.
        parser.error('--speed-round-to must be >= 1 (1: free widths)')
    return args


def finish_section(result: Dict, start: float, out: Optional[str],
                   report: Callable[[], None]) -> Dict:
    """End of an opt-in section run (``--speed``, ``--prune-run``): total
    time and load, the section's report, the JSON written atomically.

    Args:
        result (dict): The results so far (updated in place).
        start (float): ``time.perf_counter()`` at the start of the run.
        out (str, optional): Where to write the JSON.
        report (callable): Prints the section's table.

    Returns:
        dict: ``result``.
    """
    from mmifso.utils import save_json
    result['total_time_s'] = time.perf_counter() - start
    result['loadavg_end'] = loadavg()
    report()
    print(f'total time {result["total_time_s"]:.0f} s; load average '
          f'{result["loadavg_start"]} at start, {result["loadavg_end"]} '
          'at end')
    if out:
        save_json(result, out)
        log(f'wrote {out}')
    return result


def run_settings(args: argparse.Namespace) -> Tuple[int, Dict]:
    """The torch threads and the section settings (``SETTINGS``, with the
    ``--*repeats`` overrides); sets the threads and ``--wait-idle``.

    Raises:
        SystemExit: for a repeat count below 1.
    """
    threads = args.threads or (1 if args.quick else os.cpu_count() or 1)
    torch.set_num_threads(threads)
    WAIT_IDLE['max_s'] = max(args.wait_idle, 0.0)
    cfg = dict(SETTINGS['quick' if args.quick else 'full'])
    for key in ('repeats', 'score_repeats', 'latency_repeats'):
        if getattr(args, key) is not None:
            if getattr(args, key) < 1:
                raise SystemExit(f'--{key.replace("_", "-")} must be >= 1')
            cfg[key] = getattr(args, key)
    return threads, cfg


def overhead_sections(inet: str, inet_cfg: dict, size: int,
                      cfg: Dict) -> Dict:
    """Sections 1-3 (the default run): gate overhead and IFSO scoring cost
    on the ImageNet model and the CIFAR ResNet-20, then the pruned-model
    latency.

    Returns:
        dict: ``gate_overhead``, ``ifso_scoring`` and ``latency``.
    """
    log(f'building {inet} ({size}x{size}) and CIFAR ResNet-20')
    algo_i, plain_i = build_pair(inet_cfg, size)
    algo_c, plain_c = build_pair(model_cfg(CIFAR_CFG), 32)
    gate_overhead = [
        bench_gate(inet, algo_i, plain_i, cfg['train_batch'], size, 1000,
                   cfg['repeats'], cfg['warmup'],
                   build_gated(inet_cfg, size, gate='input')),
        bench_gate('cifar_resnet20', algo_c, plain_c, cfg['cifar_batch'],
                   32, 10, cfg['repeats'], cfg['warmup'],
                   build_gated(model_cfg(CIFAR_CFG), 32, gate='input')),
    ]
    ifso_scoring = [
        bench_scoring(inet, algo_i, plain_i, cfg['score_batch'], size, 1000,
                      cfg['score_repeats'], min(cfg['warmup'], 1)),
        bench_scoring('cifar_resnet20', algo_c, plain_c, cfg['cifar_batch'],
                      32, 10, cfg['repeats'], 1),
    ]
    del algo_i, plain_i, algo_c, plain_c  # free memory before section 3
    latency = bench_latency(inet, inet_cfg, size, cfg['latency_batches'],
                            cfg['latency_repeats'], cfg['warmup'])
    return dict(gate_overhead=gate_overhead, ifso_scoring=ifso_scoring,
                latency=latency)


def goal_checks(result: Dict) -> List[Dict]:
    """One ``name``/``value``/``goal``/``met`` entry per goal of sections
    1-3 (the JSON's ``summary``)."""
    checks = []
    for e in result['gate_overhead']:
        checks.append(dict(name=f'gate_overhead/{e["model"]}',
                           value=e['ratio'], goal=e['goal'],
                           met=e['goal_met']))
    for e in result['ifso_scoring']:
        checks.append(dict(name=f'ifso_exact/{e["model"]}',
                           value=e['exact_ratio'], goal=e['goal'],
                           met=e['goal_met']))
    for s in result['latency']['structures']:
        for b in s['batches']:
            checks.append(dict(
                name=f'latency_efficiency/{s["structure"]}/batch{b["batch"]}',
                value=b['efficiency'], goal=b['goal'], met=b['goal_met']))
    return checks


def write_json(result: Dict, out: str) -> None:
    """Write the results of sections 1-3 (one-space indent, numbers that
    are not JSON types as floats), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(result, f, indent=1, default=float)
        f.write('\n')
    log(f'wrote {out}')


def result_header(quick: bool, argv: Optional[List[str]], cfg: Dict,
                  threads: int) -> Dict:
    """The start of every run's JSON: the command, settings, machine, load
    and goals."""
    return dict(
        quick=quick,
        command=' '.join([os.path.basename(sys.argv[0])] +
                         (sys.argv[1:] if argv is None else list(argv))),
        settings=cfg,
        machine=machine_info(threads),
        loadavg_start=loadavg(),
        goals=dict(
            gate_overhead_ratio_max=GOAL_GATE,
            ifso_exact_ratio_max=GOAL_SCORE,
            latency_efficiency_min=GOAL_EFFICIENCY))


def main(argv=None) -> Dict:
    """Run the default sections 1-3, or only ``--speed`` / ``--prune-run``;
    print the report and write the JSON.

    Returns:
        dict: The results (the JSON).
    """
    args = parse_args(argv)
    warnings.filterwarnings('ignore')
    start = time.perf_counter()
    threads, cfg = run_settings(args)

    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    import mmifso  # noqa: F401  (registers the modules)
    MMLogger.get_current_instance().setLevel('ERROR')

    torch.manual_seed(0)
    size = cfg['image_size']
    inet_cfg = model_cfg(cfg['imagenet_cfg'])
    inet = cfg['imagenet_model']
    result = result_header(args.quick, argv, cfg, threads)

    if args.prune_run:
        quick = args.quick
        result['prune_run'] = prune_run_section(
            args.prune_iters or (2 if quick else 60),
            args.prune_warmup if args.prune_warmup is not None else
            (1 if quick else 4),
            args.prune_rounds or (1 if quick else 3), args.prune_dir,
            32 if quick else 400, all_configs=not quick,
            variant=args.prune_variant,
            count=not args.no_prune_count)
        return finish_section(result, start, args.out,
                              lambda: print_prune_run(result['prune_run']))

    if args.speed:
        if args.speed_config:
            inet = os.path.splitext(os.path.basename(args.speed_config))[0]
            inet_cfg = model_cfg(args.speed_config)
        result['speed'] = bench_speed(
            inet, inet_cfg, args.speed_size or size,
            args.speed_batches or cfg['latency_batches'], threads,
            1 if args.quick else 7, cfg['latency_repeats'],
            args.speed_backends, args.speed_dir, args.speed_max_prune_ratio,
            args.speed_round_to)
        return finish_section(result, start, args.out,
                              lambda: print_speed(result['speed']))

    result.update(overhead_sections(inet, inet_cfg, size, cfg))
    checks = goal_checks(result)
    result['summary'] = checks
    result['total_time_s'] = time.perf_counter() - start
    result['loadavg_end'] = loadavg()

    print_report(result)
    if args.out:
        write_json(result, args.out)
    if any(not math.isfinite(c['value']) for c in checks):
        raise SystemExit('a measured ratio is not finite')
    return result


if __name__ == '__main__':
    main()
