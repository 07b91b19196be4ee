"""Accuracy at a FLOPs budget: several criteria side by side.

Usage:
    python tools/analysis/compare_criteria.py CONFIG CHECKPOINT \\
        [--targets 0.7 0.5 0.3] [--criteria ifso tp_taylor ...] \\
        [--finetune-epochs 2] [--lr-scale 0.2] [--score-batches 2] [--rounds 1] \\
        [--work-dir work_dirs/compare] [--out-prefix NAME]

Protocol (identical for every criterion):

1. The unpruned baseline (``CONFIG``: a plain mmpretrain/mmdet config or an
   ``mmifso.PruningAlgorithm`` one; ``CHECKPOINT``: its trained weights) is
   evaluated with the config's test dataloader and evaluator.
2. ``--score-batches`` batches are drawn once from the config's train
   dataloader (seeded sampler and augmentation) and every criterion scores
   exactly these batches, batch ``i`` with seed ``seed + i``, in train mode
   (as the pruning hooks score during training).
3. Pruning to each target starts from the baseline: ``--rounds`` rounds,
   round ``k`` re-scores the masked model and prunes to the FLOPs ratio
   ``target ** (k / rounds)`` (the geometric schedule of
   ``IterativePruningHook``, without training in between). Selection is
   mmifso's global ``select_channels`` with ``--cost`` / ``--cost-power``
   (IFSO's ``acts`` / 0.5 by default) for every criterion. With one round
   (one-shot, the default) the scores of the baseline serve every target,
   so they are computed once per criterion.
4. The masked model is exported (physically smaller), evaluated ("before
   fine-tuning"), fine-tuned for ``--finetune-epochs`` epochs with the
   config's optimizer at ``--lr-scale`` times its lr (a baseline's
   from-scratch lr, 0.1 for the digits demo, wrecks a freshly pruned model
   in a short run; 0.2 x gives the demo fine-tune config's 0.02) and its lr
   schedule scaled to that length (epochs,
   milestones, ``T_max``, warm-up ends multiplied by
   ``finetune_epochs / max_epochs``), same seed, and evaluated again.

Writes ``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png`` (top-1 or the
config's first metric vs achieved FLOPs ratio, one line per criterion, the
baseline as a horizontal line; with ``--seeds``, every seed's metric per
criterion and the reference's paired differences with their intervals) into
``--work-dir``; the runners' logs and the structures of the pruned models go
below it.

Scoring seconds and peak extra memory cover ``update`` + ``compute`` of the
criterion (every round). Memory is the peak resident set size during
scoring minus the RSS before it (Linux ``/proc/self/clear_refs`` reset of
``VmHWM``), or ``torch.cuda.max_memory_allocated`` minus the allocation
before scoring on a GPU; the JSON says which.
"""
import argparse
import copy
import json
import logging
import os
import os.path as osp
import time
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, set_random_seed

from mmifso.apis.fidelity import paired_difference, recalibrate_bn

#: Short names for ``--criteria``; any registered criterion type name or
#: ``LABEL=JSON`` (a config dict) works too.
CRITERIA: Dict[str, dict] = dict(
    ifso=dict(type='mmifso.IFSOImportance', hvp='exact'),
    group_fisher=dict(type='mmifso.GroupFisherImportance'),
    taylor=dict(type='mmifso.TaylorImportance'),
    snip=dict(type='mmifso.TaylorImportance', variant='snip'),
    biased_loss=dict(type='mmifso.GradFlowImportance', kind='biased_loss'),
    # GraSP's signed scores keep their order only without cost
    # normalisation (a negative score divided by a cost moves towards 0).
    grasp=dict(type='mmifso.GradFlowImportance', kind='grasp', cost_power=0),
    grad_norm=dict(type='mmifso.GradFlowImportance', kind='grad_norm'),
    sosp_h=dict(type='mmifso.SOSPHImportance'),
    woodfisher=dict(type='mmifso.WoodFisherImportance'),
    inf_cp=dict(type='mmifso.InfCPImportance'),
    magnitude=dict(type='mmifso.MagnitudeImportance', p=1),
    l2=dict(type='mmifso.MagnitudeImportance', p=2),
    bn_scale=dict(type='mmifso.BNScaleImportance'),
    tp_taylor=dict(type='mmifso.TorchPruningImportance', kind='taylor'),
    tp_magnitude=dict(type='mmifso.TorchPruningImportance', kind='magnitude'),
    tp_hessian=dict(type='mmifso.TorchPruningImportance', kind='hessian'),
    tp_hessian_fixed=dict(
        type='mmifso.TorchPruningImportance',
        kind='hessian',
        hessian_accumulation='fixed'),
    # No seed: it follows --seed / each of --seeds.
    random=dict(type='mmifso.RandomImportance'),
)
#: Every criterion of the project, Torch-Pruning's three as external
#: baselines, and random as the floor.
DEFAULT_CRITERIA = list(CRITERIA)
#: Keys of lr/momentum schedulers that count epochs (or iterations).
_SCHEDULE_KEYS = ('begin', 'end', 'T_max', 'step_size', 'total_iters')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='criteria short names: ' + ', '.join(CRITERIA))
    parser.add_argument('config', help='config of the unpruned baseline')
    parser.add_argument('checkpoint', help='trained baseline checkpoint')
    parser.add_argument('--targets', type=float, nargs='+',
                        default=[0.7, 0.5, 0.3],
                        help='FLOPs ratios to prune to, each in (0, 1)')
    parser.add_argument('--criteria', nargs='+', default=DEFAULT_CRITERIA,
                        help='short names, registered types or LABEL=JSON')
    parser.add_argument('--finetune-epochs', type=int, default=2)
    parser.add_argument('--lr-scale', type=float, default=0.2,
                        help="fine-tuning lr = the config's lr x this")
    parser.add_argument('--score-batches', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=1,
                        help='pruning rounds per target (1 = one-shot)')
    parser.add_argument('--cost', default='acts',
                        choices=['acts', 'flops', 'none'])
    parser.add_argument('--cost-power', type=float, default=0.5)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--seeds', type=int, nargs='+', default=None,
        help='several seeds (overrides --seed): each seed draws its own '
        'scoring batches and its own fine-tuning order from the same '
        'baseline; the summary gives mean +- std and the reference '
        "criterion's paired difference to every other one")
    parser.add_argument('--reference', default='ifso',
                        help='criterion label the paired differences are '
                        'taken against (with --seeds)')
    parser.add_argument(
        '--bn-recalibrate', type=int, default=0, metavar='N',
        help='also evaluate right after one-shot pruning with BatchNorm '
        'statistics re-estimated on N training batches (fine-tuning then '
        'starts from the recalibrated model); 0: off')
    parser.add_argument('--work-dir', default='work_dirs/compare')
    parser.add_argument('--out-prefix', default='compare',
                        help='file name stem of the JSON/markdown/plot')
    return parser.parse_args(argv)


# ---------------------------------------------------------------------- #
# Arguments
# ---------------------------------------------------------------------- #
def check_targets(targets: Sequence[float]) -> List[float]:
    """The targets, validated and sorted from the mildest.

    Raises:
        ValueError: for a target outside (0, 1) or a repeated one.
    """
    bad = [t for t in targets if not 0 < t < 1]
    if bad or not targets:
        raise ValueError(f'--targets must be FLOPs ratios in (0, 1), got '
                         f'{list(targets)}')
    if len(set(targets)) != len(targets):
        raise ValueError(f'--targets has repeated values: {list(targets)}')
    return sorted(targets, reverse=True)


def resolve_criteria(names: Sequence[str]) -> Dict[str, dict]:
    """``{label: criterion config}`` for ``--criteria``.

    Raises:
        ValueError: for an unknown name, bad JSON or a repeated label.
    """
    from mmifso.models.importance import BaseImportance
    from mmifso.registry import TASK_UTILS
    out: Dict[str, dict] = {}
    for name in names:
        if '=' in name:
            label, text = name.split('=', 1)
            try:
                cfg = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f'criterion {label!r}: bad JSON ({e})')
            if not isinstance(cfg, dict) or 'type' not in cfg:
                raise ValueError(f'criterion {label!r}: the JSON must be a '
                                 'dict with a "type"')
        elif name in CRITERIA:
            label, cfg = name, copy.deepcopy(CRITERIA[name])
        else:
            label, cfg = name.split('.')[-1], dict(type=name)
        type_name = cfg['type']
        cls = TASK_UTILS.get(type_name if '.' in type_name else
                             f'mmifso.{type_name}') if isinstance(
                                 type_name, str) else None
        if not (isinstance(cls, type) and issubclass(cls, BaseImportance)):
            raise ValueError(
                f'unknown criterion {name!r}; use one of '
                f'{", ".join(CRITERIA)}, a registered type (e.g. '
                "mmifso.TaylorImportance) or LABEL='{\"type\": ...}'")
        if '.' not in type_name:
            cfg['type'] = f'mmifso.{type_name}'
        if label in out:
            raise ValueError(f'criterion {label!r} given twice')
        out[label] = cfg
    return out


# ---------------------------------------------------------------------- #
# Model, data, runners
# ---------------------------------------------------------------------- #
def baseline_model(cfg: Config, checkpoint: str) -> nn.Module:
    """The unpruned architecture of ``cfg`` with the checkpoint's weights.

    Raises:
        ValueError: for a checkpoint that is already pruned or masked.
    """
    from mmifso.apis import model_kind
    from mmifso.models.algorithms.pruning_algorithm import (ARCH_PREFIX,
                                                            MUTATOR_PREFIX,
                                                            build_architecture)
    from mmifso.utils.io import load_checkpoint_file
    arch_cfg = cfg.model.architecture if model_kind(
        cfg) == 'masked' else cfg.model
    if model_kind(cfg) == 'pruned':
        raise ValueError('CONFIG must describe the unpruned baseline, not a '
                         'PrunedModel')
    model = build_architecture(arch_cfg, cfg.get('data_preprocessor'))
    ckpt = load_checkpoint_file(checkpoint)
    state = ckpt.get('state_dict', ckpt)
    masks = [v for k, v in state.items() if k.startswith(MUTATOR_PREFIX)]
    if any(bool((m == 0).any()) for m in masks if m.dtype.is_floating_point):
        raise ValueError(f'{checkpoint} has removed channels: compare '
                         'criteria from the unpruned baseline')
    state = {(k[len(ARCH_PREFIX):] if k.startswith(ARCH_PREFIX) else k): v
             for k, v in state.items() if not k.startswith(MUTATOR_PREFIX)}
    model.load_state_dict(state, strict=True)
    return model


def scale_schedulers(schedulers, factor: float) -> list:
    """The config's lr/momentum schedulers with lengths times ``factor``."""
    if schedulers is None:
        return []
    items = [schedulers] if isinstance(schedulers, dict) else list(schedulers)
    out = []
    for s in items:
        s = copy.deepcopy(dict(s))
        for key in _SCHEDULE_KEYS:
            if isinstance(s.get(key), (int, float)) and s[key] < 1e8:
                s[key] = max(1, int(round(s[key] * factor))) \
                    if key != 'begin' else int(round(s[key] * factor))
        if 'milestones' in s:
            s['milestones'] = [
                max(1, int(round(m * factor))) for m in s['milestones']
            ]
        out.append(s)
    return out


def make_runner(cfg: Config, model: nn.Module, work_dir: str, name: str,
                seed: int, epochs: int = 0, lr_scale: float = 1.0) -> Runner:
    """A Runner on ``model`` with the config's data, evaluator, optimizer and
    (scaled) schedule; it trains ``epochs`` epochs when asked to."""
    train = {}
    if epochs > 0:
        max_epochs = int(cfg.train_cfg.get('max_epochs', epochs))
        optim = copy.deepcopy(cfg.optim_wrapper)
        optim['optimizer']['lr'] = optim['optimizer']['lr'] * lr_scale
        train = dict(
            train_dataloader=cfg.train_dataloader,
            optim_wrapper=optim,
            param_scheduler=scale_schedulers(
                cfg.get('param_scheduler'), epochs / max(max_epochs, 1)),
            train_cfg=dict(by_epoch=True, max_epochs=epochs,
                           val_interval=epochs + 1))
    hooks = dict(cfg.get('default_hooks', {}))
    hooks['checkpoint'] = None  # fine-tuned weights are not kept
    return Runner(
        model=model,
        work_dir=work_dir,
        experiment_name=name,
        test_dataloader=cfg.test_dataloader,
        test_evaluator=cfg.test_evaluator,
        test_cfg=cfg.get('test_cfg', dict()),
        default_hooks=hooks,
        default_scope=cfg.get('default_scope', 'mmengine'),
        randomness=dict(seed=seed, deterministic=False),
        env_cfg=cfg.get('env_cfg', dict(dist_cfg=dict(backend='nccl'))),
        log_processor=cfg.get('log_processor'),
        log_level=cfg.get('log_level', 'INFO'),
        launcher='none',
        **train)


def evaluate(runner: Runner, metric: Optional[str]) -> Tuple[str, float]:
    """Run the test loop; the named metric or the first (top-1 first)."""
    metrics = runner.test()
    if metric is None:
        metric = 'accuracy/top1' if 'accuracy/top1' in metrics else next(
            iter(metrics))
    return metric, float(metrics[metric])


def scoring_batches(cfg: Config, n: int, seed: int) -> List[dict]:
    """``n`` raw batches of the train dataloader, seeded."""
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    if isinstance(loader_cfg.get('sampler'), dict):
        loader_cfg['sampler']['seed'] = seed
    set_random_seed(seed)
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            return batches
    raise ValueError(f'the train dataloader has only {len(batches)} batches, '
                     f'fewer than --score-batches {n}')


# ---------------------------------------------------------------------- #
# Measurement
# ---------------------------------------------------------------------- #
class PeakMemory:
    """Peak extra memory of a code block (bytes) and how it was measured."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.method = ('torch.cuda.max_memory_allocated - allocated before'
                       if self.cuda else
                       'peak RSS (VmHWM after writing 5 to '
                       '/proc/self/clear_refs) - RSS before')
        if not self.cuda and not _can_reset_peak_rss():
            self.method = 'unavailable (no /proc/self/clear_refs)'

    def __enter__(self) -> 'PeakMemory':
        self.peak = None
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        elif self.method.startswith('peak RSS'):
            _release_free_heap()
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self.before = _proc_status_kb('VmRSS') * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.before
        elif self.method.startswith('peak RSS'):
            self.peak = _proc_status_kb('VmHWM') * 1024 - self.before


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``): memory an
    earlier criterion freed but the allocator kept resident would otherwise
    be reused without raising the RSS, hiding the next criterion's peak."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def _can_reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        _proc_status_kb('VmHWM')
        return True
    except (OSError, RuntimeError):
        return False


# ---------------------------------------------------------------------- #
# The comparison
# ---------------------------------------------------------------------- #
def score_and_prune(ctx, imp, batches: List[dict], seed: int, ratio: float,
                    args: argparse.Namespace, memory: PeakMemory,
                    scores=None, cost_power: Optional[float] = None
                    ) -> Tuple[list, float, Optional[int]]:
    """One round: score (unless ``scores`` are given) and prune to
    ``ratio`` with ``score / cost ** cost_power`` (default
    ``--cost-power``); returns the scores, scoring seconds and peak
    bytes."""
    if cost_power is None:
        cost_power = args.cost_power
    from mmifso.models.algorithms import prune_step
    from mmifso.models.mutators import ChannelSelector
    seconds, peak = 0.0, None
    if scores is None:
        with memory:
            start = time.perf_counter()
            scores = imp.score(ctx, batches if imp.requires_data else [],
                               seed)
            imp.reset()  # frees the accumulated statistics
            seconds = time.perf_counter() - start
        peak = memory.peak
    step = prune_step(ctx, imp, ChannelSelector(args.cost, cost_power),
                      scores, target_flops=ratio)
    if step.skipped:
        raise FloatingPointError(
            f'{type(imp).__name__}: NaN/Inf scores in units '
            f'{step.nonfinite_units}')
    return scores, seconds, peak


@dataclass
class Baseline:
    """What every (criterion, target) run of one seed starts from.

    Attributes:
        cfg (Config): The baseline's config.
        criteria (Dict[str, dict]): ``{label: criterion config}``.
        targets (List[float]): FLOPs ratios, mildest first.
        work_dir (str): Absolute output folder.
        stamp (str): Time stamp of the runners' experiment names.
        model (nn.Module): The unpruned model (masked in place by every
            run, restored from ``state`` before the next).
        mutator: Its channel mutator.
        state (dict): The baseline's weights.
        resources (dict): The baseline's FLOPs and parameters.
        optim_wrapper: The config's optimizer on ``model`` (criteria that
            read the weight decay bind to it).
        memory (PeakMemory): The scoring-memory probe.
        metric (str): The evaluated metric's name.
        metric_value (float): The baseline's value of it.
        batches (List[dict]): The scoring batches.
    """
    cfg: Config
    criteria: Dict[str, dict]
    targets: List[float]
    work_dir: str
    stamp: str
    model: nn.Module
    mutator: Any
    state: dict
    resources: dict
    optim_wrapper: Any
    memory: PeakMemory
    metric: str
    metric_value: float
    batches: List[dict]


def prepare_baseline(args: argparse.Namespace) -> Baseline:
    """Validate the arguments, evaluate the baseline, draw the scoring
    batches and analyse the model (protocol steps 1 and 2).

    Raises:
        ValueError: for bad targets, counts, criteria or checkpoint.
    """
    targets = check_targets(args.targets)
    if args.rounds < 1 or args.score_batches < 1 or args.finetune_epochs < 0:
        raise ValueError('--rounds and --score-batches must be >= 1 and '
                         '--finetune-epochs >= 0')
    cfg = Config.fromfile(args.config)
    import mmifso  # noqa: F401  (registers the criteria)
    criteria = resolve_criteria(args.criteria)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    from mmifso.apis.pruning import analyse_model
    from mmengine.optim import build_optim_wrapper
    work_dir = osp.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    stamp = time.strftime('%Y%m%d_%H%M%S')

    model = baseline_model(cfg, args.checkpoint)
    runner = make_runner(cfg, copy.deepcopy(model),
                         osp.join(work_dir, 'baseline'),
                         f'compare_{stamp}_baseline', args.seed)
    metric, base_acc = evaluate(runner, None)
    batches = scoring_batches(cfg, args.score_batches, args.seed)
    data = model.data_preprocessor(batches[0], False)
    shape = (1, ) + tuple(data['inputs'].shape[1:])
    mutator = analyse_model(model, input_shape=shape)
    base = Baseline(
        cfg=cfg, criteria=criteria, targets=targets, work_dir=work_dir,
        stamp=stamp, model=model, mutator=mutator,
        resources=mutator.resources(),
        state=copy.deepcopy(model.state_dict()),
        optim_wrapper=build_optim_wrapper(model, cfg.optim_wrapper),
        memory=PeakMemory(next(model.parameters()).device),
        metric=metric, metric_value=base_acc, batches=batches)
    print_log(
        f'[compare] baseline {metric} {base_acc:.2f}, '
        f'{base.resources["flops"] / 1e6:.2f} M FLOPs, '
        f'{base.resources["params"] / 1e3:.1f} K params; criteria '
        f'{list(criteria)}, targets {targets}, {args.rounds} round(s), '
        f'{args.score_batches} scoring batches, {args.finetune_epochs} '
        'fine-tuning epochs', logger='current', level=logging.INFO)
    return base


class PruneRun(NamedTuple):
    """What :func:`prune_from_baseline` measured.

    Attributes:
        cost_power (float): The cost power used.
        seconds (float): Scoring seconds over all rounds.
        peak (int, optional): The largest scoring peak extra memory
            (bytes), None when it could not be measured.
        first_round (tuple): ``(scores, seconds, peak)`` of round 1, for
            the next target of the same criterion to reuse.
    """
    cost_power: float
    seconds: float
    peak: Optional[int]
    first_round: tuple


def prune_from_baseline(base: Baseline, crit_cfg: dict, target: float,
                        args: argparse.Namespace,
                        first_round: Optional[tuple]) -> PruneRun:
    """Restore the baseline and prune it in ``--rounds`` rounds to
    ``target`` with one criterion (protocol step 3); ``base.model`` is left
    masked.

    Args:
        base (Baseline): The shared start.
        crit_cfg (dict): The criterion's config.
        target (float): FLOPs ratio to reach.
        args (argparse.Namespace): The parsed arguments.
        first_round (tuple, optional): Round 1 of an earlier target of the
            same criterion: its scores (of the same baseline) serve again.

    Returns:
        PruneRun: Cost power, scoring seconds and peak, and round 1.
    """
    from mmifso.apis.pruning import build_criterion
    from mmifso.models.importance import ScoringContext
    model, mutator = base.model, base.mutator
    model.load_state_dict(base.state)
    with torch.no_grad():
        for unit in mutator.units:
            unit.mask.fill_(1)
    model.train()
    # A criterion entry may fix its own cost power (GraSP).
    crit_kwargs = dict(crit_cfg)
    cost_power = crit_kwargs.pop('cost_power', args.cost_power)
    if crit_kwargs['type'] == 'mmifso.RandomImportance':
        # Each seed its own random choice (unless the entry fixes
        # one): otherwise --seeds would repeat one random mask.
        crit_kwargs.setdefault('seed', args.seed)
    imp = build_criterion(crit_kwargs)
    ctx = ScoringContext(model, mutator)
    # IFSO's lam=None: the weight decay of the scored weights.
    imp.bind_optimizer(base.optim_wrapper, ctx)
    seconds, peaks = 0.0, []
    for k in range(1, args.rounds + 1):
        ratio = target**(k / args.rounds)
        reuse = first_round if k == 1 else None
        scores, sec, peak = score_and_prune(
            ctx, imp, base.batches, args.seed, ratio, args, base.memory,
            None if reuse is None else reuse[0], cost_power)
        if reuse is not None:
            sec, peak = reuse[1], reuse[2]
        elif k == 1:
            first_round = (scores, sec, peak)
        seconds += sec
        peaks.append(peak)
    known = [p for p in peaks if p is not None]
    return PruneRun(cost_power, seconds, max(known) if known else None,
                    first_round)


def finetune_and_evaluate(base: Baseline, label: str, target: float,
                          args: argparse.Namespace
                          ) -> Tuple[float, Optional[float], float]:
    """Export the masked ``base.model``, evaluate it, optionally with
    recalibrated BatchNorm, fine-tune it and evaluate again (protocol
    step 4); the structure goes to ``<work_dir>/<label>/flops_<target>``.

    Returns:
        tuple: The metric before fine-tuning, after BatchNorm
        recalibration (None without ``--bn-recalibrate``) and after
        fine-tuning (the last evaluation when there is none).
    """
    from mmifso.apis.pruning import export_model
    pruned, structure = export_model(base.model, base.mutator)
    run_dir = osp.join(base.work_dir, label, f'flops_{target:.2f}')
    os.makedirs(run_dir, exist_ok=True)
    with open(osp.join(run_dir, 'structure.json'), 'w') as f:
        json.dump(structure, f)
    # Runner.train() calls init_weights() on modules not marked as
    # initialised, which would re-initialise the pruned weights.
    for m in pruned.modules():
        if hasattr(m, '_is_init'):
            m._is_init = True
    runner = make_runner(base.cfg, pruned, run_dir,
                         f'compare_{base.stamp}_{label}_{target:.2f}',
                         args.seed, args.finetune_epochs, args.lr_scale)
    _, before = evaluate(runner, base.metric)
    before_bn = None
    if args.bn_recalibrate > 0:
        recalibrate_bn(runner.model, scoring_batches(
            base.cfg, args.bn_recalibrate, args.seed + 1000))
        _, before_bn = evaluate(runner, base.metric)
    after = before if before_bn is None else before_bn
    if args.finetune_epochs > 0:
        runner.train()
        _, after = evaluate(runner, base.metric)
    return before, before_bn, after


def run_comparison(args: argparse.Namespace) -> dict:
    """Prune, fine-tune and evaluate every (criterion, target) pair.

    Returns:
        dict: ``baseline``, ``rows`` (one per pair) and the settings.
    """
    base = prepare_baseline(args)
    metric = base.metric
    rows = []
    total = len(base.criteria) * len(base.targets)
    for label, crit_cfg in base.criteria.items():
        first_round = None  # (scores, seconds, peak): one-shot reuse
        for target in base.targets:
            run = prune_from_baseline(base, crit_cfg, target, args,
                                      first_round)
            first_round = run.first_round
            res = base.mutator.resources()
            before, before_bn, after = finetune_and_evaluate(
                base, label, target, args)
            rows.append(dict(
                criterion=label,
                config=crit_cfg,
                cost_power=run.cost_power,
                target=target,
                flops_ratio=res['flops_ratio'],
                params_ratio=res['params_ratio'],
                reached=res['flops_ratio'] <= target,
                flops=res['flops'],
                params=res['params'],
                seed=args.seed,
                metric_before_finetune=before,
                metric_before_finetune_bn_recalibrated=before_bn,
                metric_after_finetune=after,
                scoring_seconds=run.seconds,
                scoring_peak_extra_bytes=run.peak))
            print_log(
                f'[compare] {len(rows)}/{total} {label} @ {target:.2f}: '
                f'FLOPs {res["flops_ratio"]:.3f}, params '
                f'{res["params_ratio"]:.3f}, {metric} {before:.2f} -> '
                f'{after:.2f} after {args.finetune_epochs} epochs; scoring '
                f'{run.seconds:.1f} s, peak +{_mib(run.peak)}'
                ' MiB', logger='current', level=logging.INFO)
    return dict(
        config=args.config,
        checkpoint=args.checkpoint,
        metric=metric,
        baseline=dict(metric=base.metric_value,
                      flops=base.resources['flops'],
                      params=base.resources['params']),
        targets=base.targets,
        rounds=args.rounds,
        score_batches=args.score_batches,
        score_batch_size=len(base.batches[0]['inputs']),
        finetune_epochs=args.finetune_epochs,
        finetune_lr=float(base.cfg.optim_wrapper.optimizer.lr) *
        args.lr_scale,
        cost=args.cost,
        cost_power=args.cost_power,
        seed=args.seed,
        bn_recalibrate=args.bn_recalibrate,
        memory_method=base.memory.method,
        rows=rows)


def _mib(b: Optional[int]) -> str:
    return 'n/a' if b is None else f'{b / 2**20:.1f}'


def markdown_table(result: dict) -> str:
    """The rows as a markdown table."""
    m = result['metric']
    lines = [
        f'| criterion | target | FLOPs ratio | params ratio | {m} before '
        f'fine-tuning | {m} after {result["finetune_epochs"]} epochs | '
        'scoring (s) | scoring peak extra memory (MiB) |',
        '|---|---|---|---|---|---|---|---|',
        f'| baseline (unpruned) | 1.00 | 1.000 | 1.000 | '
        f'{result["baseline"]["metric"]:.2f} | '
        f'{result["baseline"]["metric"]:.2f} | | |'
    ]
    for r in result['rows']:
        flag = '' if r['reached'] else ' (not reached)'
        seed = '' if r.get('seed') is None or result.get('seeds') is None \
            else f' (seed {r["seed"]})'
        lines.append(
            f'| {r["criterion"]}{seed} | {r["target"]:.2f} | '
            f'{r["flops_ratio"]:.3f}{flag} | {r["params_ratio"]:.3f} | '
            f'{r["metric_before_finetune"]:.2f} | '
            f'{r["metric_after_finetune"]:.2f} | '
            f'{r["scoring_seconds"]:.1f} | '
            f'{_mib(r["scoring_peak_extra_bytes"])} |')
    return '\n'.join(lines) + '\n'


def plot(result: dict, path: str) -> None:
    """Metric vs achieved FLOPs ratio, one line per criterion; before and
    after fine-tuning side by side."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharex=True)
    labels = list(dict.fromkeys(r['criterion'] for r in result['rows']))
    # 20 colours, 4 markers, 2 line styles: many criteria stay apart.
    colors = plt.get_cmap('tab20').colors
    markers = 'os^D'
    for ax, key, title in (
            (axes[0], 'metric_after_finetune',
             f'after {result["finetune_epochs"]} fine-tuning epochs'),
            (axes[1], 'metric_before_finetune', 'right after pruning')):
        for k, label in enumerate(labels):
            rows = sorted((r for r in result['rows']
                           if r['criterion'] == label),
                          key=lambda r: r['flops_ratio'])
            ax.plot([r['flops_ratio'] for r in rows], [r[key] for r in rows],
                    marker=markers[k % len(markers)],
                    color=colors[k % len(colors)],
                    ls='-' if k % 2 == 0 else '--', label=label)
        ax.axhline(result['baseline']['metric'], color='k', ls='--', lw=1,
                   label='unpruned baseline')
        ax.set_xlabel('FLOPs ratio (pruned / baseline)')
        ax.set_ylabel(result['metric'])
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc='center left', bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_seeds(result: dict, path: str) -> None:
    """The multi-seed comparison, one column per target.

    Top: every seed's metric after fine-tuning per criterion (dots, with
    the mean and one std as a bar). Bottom: the reference criterion's mean
    paired difference to every other criterion with its 95 % t interval,
    black where the interval misses 0 (a significant difference).

    Args:
        result (dict): The tool's result with ``seeds`` and ``summary``
            (:func:`seed_summary`).
        path (str): The PNG to write.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    summary = result['summary']
    targets = sorted({r['target'] for r in result['rows']}, reverse=True)
    labels = list(dict.fromkeys(r['criterion'] for r in result['rows']))
    key = 'metric_after_finetune'
    stats = {(r['criterion'], r['target']): r[key]
             for r in summary['table'] if key in r}
    fig, axes = plt.subplots(2, len(targets), squeeze=False,
                             figsize=(1.6 + 1.3 * len(labels) * len(targets),
                                      8))
    for col, target in enumerate(targets):
        ax = axes[0][col]
        for k, label in enumerate(labels):
            vals = [r[key] for r in result['rows']
                    if r['criterion'] == label and r['target'] == target]
            # Seeds side by side (in seed order) so equal values stay seen.
            spread = np.arange(len(vals)) / max(len(vals) - 1, 1) - 0.5
            ax.plot(k + 0.3 * spread, vals, '.', alpha=0.5, color=f'C{k}')
            mean_std = stats[(label, target)]
            ax.errorbar(k + 0.25, mean_std['mean'], yerr=mean_std['std'],
                        fmt='o', color='k', capsize=4)
        ax.axhline(result['baseline']['metric'], color='k', ls='--', lw=1)
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_ylabel(f'{result["metric"]} after '
                      f'{result["finetune_epochs"]} fine-tuning epochs')
        ax.set_title(f'FLOPs target {target:.2f}, '
                     f'{len(result["seeds"])} seeds (dots; bar: mean ± std)')
        ax.grid(alpha=0.3, axis='y')
        ax = axes[1][col]
        paired = summary['paired'].get(f'{target:.2f}', {})
        others = [label for label in labels
                  if key in paired.get(label, {})]
        for k, label in enumerate(others):
            d = paired[label][key]
            low, high = d['ci'] if d['ci'] is not None else (d['mean'], ) * 2
            ax.errorbar(k, d['mean'], yerr=[[d['mean'] - low],
                                            [high - d['mean']]],
                        fmt='o', color='k' if low > 0 or high < 0 else
                        'grey', capsize=4)
        ax.axhline(0, color='k', lw=1)
        ax.set_xticks(range(len(others)), others, rotation=30)
        ax.set_ylabel(f'{summary["reference"]} − criterion '
                      f'({result["metric"]})')
        ax.set_title('mean paired difference, 95 % t interval')
        ax.grid(alpha=0.3, axis='y')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seed_summary(runs: Sequence[dict], reference: str) -> dict:
    """Mean +- std over seeds per (criterion, target), and the reference
    criterion's mean paired difference (95 % t interval) to every other.

    Args:
        runs (Sequence[dict]): One :func:`run_comparison` result per seed.
        reference (str): Label of the reference criterion.

    Returns:
        dict: ``table`` (rows with ``mean``/``std`` of every metric) and
        ``paired`` (``{target: {criterion: paired_difference}}`` of the
        metric after fine-tuning, and before it).
    """
    keys = ('metric_before_finetune', 'metric_before_finetune_bn_recalibrated',
            'metric_after_finetune')
    groups: Dict[Tuple[str, float], List[dict]] = {}
    for run in runs:
        for r in run['rows']:
            groups.setdefault((r['criterion'], r['target']), []).append(r)
    table = []
    for (label, target), rows in groups.items():
        row = dict(criterion=label, target=target, seeds=[r['seed'] for r in
                                                          rows],
                   flops_ratio=float(np.mean([r['flops_ratio']
                                              for r in rows])))
        for key in keys:
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                row[key] = dict(mean=float(np.mean(vals)),
                                std=float(np.std(vals, ddof=1))
                                if len(vals) > 1 else 0.0)
        table.append(row)
    paired: Dict[str, Dict] = {}
    labels = sorted({label for label, _ in groups})
    if reference in labels:
        for (label, target), rows in groups.items():
            ref = groups.get((reference, target))
            if label == reference or ref is None:
                continue
            by_seed = {r['seed']: r for r in rows}
            pairs = [(x, by_seed[x['seed']]) for x in ref
                     if x['seed'] in by_seed]
            entry = {}
            for key in keys:
                if all(a.get(key) is not None for a, _ in pairs) and pairs:
                    entry[key] = paired_difference(
                        [a[key] for a, _ in pairs], [b[key] for _, b in pairs])
            paired.setdefault(f'{target:.2f}', {})[label] = entry
    return dict(reference=reference, table=table, paired=paired)


def seed_markdown(summary: dict, metric: str) -> str:
    """The multi-seed summary as markdown."""
    fmt = (lambda d: '' if d is None else f'{d["mean"]:.2f} ± {d["std"]:.2f}')
    lines = [
        f'| criterion | target | FLOPs ratio | {metric} one-shot | '
        f'one-shot + BN recal. | after fine-tuning | '
        f'{summary["reference"]} − criterion after FT (95 % CI) |',
        '|---|---|---|---|---|---|---|'
    ]
    for r in sorted(summary['table'], key=lambda r: (-r['target'],
                                                     r['criterion'])):
        d = summary['paired'].get(f'{r["target"]:.2f}', {}).get(
            r['criterion'], {}).get('metric_after_finetune')
        diff = '' if d is None else (
            f'{d["mean"]:+.2f}' + ('' if d['ci'] is None else
                                   f' [{d["ci"][0]:+.2f}, {d["ci"][1]:+.2f}]'))
        lines.append(
            f'| {r["criterion"]} | {r["target"]:.2f} | {r["flops_ratio"]:.3f} '
            f'| {fmt(r.get("metric_before_finetune"))} | '
            f'{fmt(r.get("metric_before_finetune_bn_recalibrated"))} | '
            f'{fmt(r.get("metric_after_finetune"))} | {diff} |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    start = time.time()
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    seeds = args.seeds or [args.seed]
    runs = []
    for seed in seeds:
        args.seed = seed
        runs.append(run_comparison(args))
    result = runs[0] if len(runs) == 1 else dict(
        runs[0], rows=[r for run in runs for r in run['rows']], seed=None,
        seeds=seeds, seed_protocol='same baseline; each seed draws its own '
        'scoring batches (train dataloader seeded with the seed) and its own '
        'fine-tuning order (Runner seed)',
        summary=seed_summary(runs, args.reference))
    result['wall_seconds'] = round(time.time() - start, 1)
    result['load_average_1min_start'] = load
    result['load_average_1min_end'] = os.getloadavg()[0] if load is not None \
        else None
    result['torch_threads'] = torch.get_num_threads()
    stem = osp.join(osp.abspath(args.work_dir), args.out_prefix)
    from mmifso.utils import save_json, save_text
    text = markdown_table(result)
    if 'summary' in result:
        text += '\n' + seed_markdown(result['summary'], result['metric'])
    save_json(result, stem + '.json')
    save_text(text, stem + '.md')
    (plot_seeds if 'summary' in result else plot)(result, stem + '.png')
    print_log(
        '\n' + text + f'wall time {result["wall_seconds"]}'
        f' s; wrote {stem}.json, {stem}.md, {stem}.png',
        logger='current', level=logging.INFO)
    return result


if __name__ == '__main__':
    main()
