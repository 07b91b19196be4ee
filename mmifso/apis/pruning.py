"""Python API: analyse, score, prune and export outside a runner.

Example:
    >>> mutator = analyse_model(model, input_shape=(1, 3, 32, 32))
    >>> scores = score_channels(model, mutator,
    ...                         dict(type='mmifso.IFSOImportance', lam=1e-4),
    ...                         batches)
    >>> prune_to_target(model, mutator, 'mmifso.IFSOImportance', batches,
    ...                 target_flops=0.5, criterion_kwargs=dict(lam=1e-4))
    >>> pruned, structure = export_model(model, mutator)
"""
import logging
from operator import itemgetter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log

from mmifso.models.algorithms import PruneStepResult, prune_step
from mmifso.models.importance import BaseImportance, ScoringContext
from mmifso.models.mutators import (ChannelMutator, ChannelSelector,
                                    export_pruned_model)
from mmifso.models.mutators.latency import (LatencyFeedback,
                                            measure_latency_ratio)
from mmifso.registry import TASK_UTILS
from mmifso.utils import pipeline_input_size

Criterion = Union[str, dict, BaseImportance]


def model_input_shape(model: nn.Module) -> Tuple[int, int, int, int]:
    """``(1, 3, H, W)`` of the test pipeline of the config attached to a
    model by mmdet's ``init_detector`` (``model.cfg``) or mmpretrain's
    ``get_model`` (``model._config``).

    Raises:
        ValueError: the model has no config, or its test pipeline sets no
            image size; the message says to pass ``input_shape``.
    """
    cfg = getattr(model, 'cfg', None)
    if cfg is None:
        cfg = getattr(model, '_config', None)
    size = pipeline_input_size(cfg) if hasattr(cfg, 'get') else None
    if size is None:
        where = ('its config (model.cfg / model._config) has no test '
                 'pipeline that sets an image size') if cfg is not None else \
            'it carries no config (mmdet init_detector / mmpretrain ' \
            'get_model attach one)'
        raise ValueError(
            f'analyse_model: no input_shape given and {where}; pass '
            'input_shape=(1, 3, H, W), the size the model is tested at')
    return (1, 3) + tuple(size)


def analyse_model(model: nn.Module,
                  input_shape: Optional[Sequence[int]] = None,
                  min_channels: int = 1,
                  frozen: str = 'error') -> ChannelMutator:
    """Find the channel units of ``model`` and gate them (in place).

    The demo input has the model's floating dtype (a float64 model is traced
    in float64).

    Args:
        model (nn.Module): An mmpretrain classifier, mmdet detector or any
            module whose ``forward(inputs, mode='tensor')`` (BaseModel) or
            ``forward(x)`` accepts an image batch.
        input_shape (Sequence[int], optional): Demo input ``(N, C, H, W)``;
            None: the test size of the model's config
            (:func:`model_input_shape`).
        min_channels (int): Channels every unit keeps.
        frozen (str): ``'error'`` or ``'skip'`` for units with frozen weights.

    Returns:
        ChannelMutator: Holds one unit per prunable coupled group; skipped
        groups and reasons are in ``mutator.analysis.skipped``.
    """
    if input_shape is None:
        input_shape = model_input_shape(model)
    mutator = ChannelMutator(
        demo_input=dict(type='mmifso.DemoInput', input_shape=input_shape),
        min_channels=min_channels,
        frozen=frozen)
    mutator.prepare_from_supernet(model)
    return mutator


def build_criterion(criterion: Criterion, **kwargs) -> BaseImportance:
    """A criterion from a registered name, a config dict or an instance."""
    if isinstance(criterion, BaseImportance):
        return criterion
    cfg = dict(type=criterion) if isinstance(criterion, str) else dict(
        criterion)
    cfg.update(kwargs)
    return TASK_UTILS.build(cfg)


def score_channels(model: nn.Module,
                   mutator: ChannelMutator,
                   criterion: Criterion,
                   data_batches: Iterable[dict],
                   optimizer=None) -> List[torch.Tensor]:
    """Mean criterion scores over ``data_batches``.

    Args:
        model (nn.Module): The gated model (a BaseModel with a ``loss`` mode
            for data-driven criteria).
        mutator (ChannelMutator): From :func:`analyse_model`.
        criterion: Registered name (``'mmifso.IFSOImportance'``), config dict
            or instance.
        data_batches (Iterable[dict]): Raw batches as a dataloader yields
            them (pre-processed by the model's data preprocessor).
        optimizer (optional): The training optimizer (or OptimWrapper); the
            criterion takes what it needs from it (IFSO's ``lam=None``: the
            weight decay of the scored weights).

    Returns:
        list[Tensor]: Per unit, shape ``(num_channels, )``; lower = prune
        first.
    """
    imp = build_criterion(criterion)
    ctx = ScoringContext(model, mutator)
    if optimizer is not None:
        imp.bind_optimizer(optimizer, ctx)
    return imp.score(ctx, data_batches)


def _checked_target(target_flops: Optional[float],
                    target_latency: Optional[float]) -> Tuple[str, float]:
    """``(metric, target)`` of :func:`prune_to_target`: ``'flops'`` or
    ``'latency'`` and its ratio, exactly one of the two set, in (0, 1)."""
    if (target_flops is None) == (target_latency is None):
        raise ValueError(
            'set exactly one of target_flops and target_latency, got '
            f'target_flops={target_flops!r}, '
            f'target_latency={target_latency!r}')
    metric = 'flops' if target_latency is None else 'latency'
    target = target_flops if metric == 'flops' else target_latency
    if isinstance(target, bool) or not isinstance(
            target, (int, float)) or not 0 < target < 1:
        raise ValueError(f'target_{metric} must be in (0, 1), got {target!r}')
    return metric, target


def _step_pruned(step: PruneStepResult, imp: BaseImportance,
                 mutator: ChannelMutator, selector: ChannelSelector,
                 metric: str, target: float) -> bool:
    """Whether a step of :func:`prune_to_target` removed channels.

    Raises on NaN/Inf scores, and when a FLOPs target cannot be reached;
    an unreachable latency target is logged as a warning and gives False
    (pruning stops at the best reachable latency).
    """
    if step.skipped:
        raise FloatingPointError(
            f'{type(imp).__name__} gave NaN/Inf scores for units '
            f'{step.nonfinite_units}: nothing pruned; check the loss of '
            'the batches and the criterion\'s damping')
    if step.removed:
        return True
    if metric == 'flops':
        raise RuntimeError(
            'cannot reach the FLOPs target: every unit is at its floor '
            '(min_channels, max_prune_ratio, round_to; FLOPs ratio '
            f'{mutator.resources()["flops_ratio"]:.3f})')
    print_log(
        f'[mmifso] target_latency={target} cannot be reached: every '
        'unit is at its floor (min_channels, max_prune_ratio, '
        'round_to); stopped at the best reachable predicted latency '
        f'ratio {selector.ratio(mutator, "latency"):.4f}',
        logger='current',
        level=logging.WARNING)
    return False


def prune_to_target(model: nn.Module,
                    mutator: ChannelMutator,
                    criterion: Criterion,
                    data_batches: Sequence[dict],
                    target_flops: Optional[float] = None,
                    step_fraction: float = 0.05,
                    cost: str = 'acts',
                    cost_power: float = 0.5,
                    criterion_kwargs: Optional[Dict] = None,
                    selection: Optional[Dict] = None,
                    optimizer=None,
                    seed: Optional[int] = None,
                    target_latency: Optional[float] = None,
                    latency_feedback: Union[bool, Dict, None] = None
                    ) -> Dict:
    """Iteratively re-score and prune until the FLOPs (or predicted
    latency) ratio hits the target.

    Each step removes ``step_fraction`` of the channels still alive (at least
    one) with :func:`~mmifso.models.algorithms.prune_step` (so a criterion's
    ``after_prune``, e.g. WoodFisher's OBS update, runs as in the hooks),
    then scores again on the masked model, without any training.

    Args:
        model (nn.Module): The gated model.
        mutator (ChannelMutator): From :func:`analyse_model`.
        criterion: Registered name, config dict or instance.
        data_batches (Sequence[dict]): Raw batches scored at every step.
        target_flops (float, optional): FLOPs ratio in (0, 1) to reach.
        step_fraction (float): Share of the alive channels removed per step.
        cost (str): ``'acts'``, ``'flops'`` or ``'none'``.
        cost_power (float): ``p`` of ``score / cost ** p``.
        criterion_kwargs (dict, optional): Added to the criterion config.
        selection (dict, optional): Further
            :class:`~mmifso.models.mutators.ChannelSelector` knobs.
        optimizer (optional): See :func:`score_channels`.
        seed (int, optional): Batch ``b`` of every step is prepared with
            seed ``seed + b`` (dropout, batch augmentation).
        target_latency (float, optional): Predicted latency ratio in (0, 1)
            to reach instead of ``target_flops`` (exactly one of the two);
            needs ``selection=dict(latency_table=PATH)``. If every unit
            reaches its floor first, pruning stops there with a warning
            (``reached=False`` in the result).
        latency_feedback (bool | dict, optional): With ``target_latency``:
            hit the target on the *measured* latency of the exported model
            on this machine (the table's input shape, backend and threads),
            not only the predicted one: pruning stops short of the target,
            measures, and corrects the predicted goal
            (:class:`~mmifso.models.mutators.latency.LatencyFeedback`; a
            dict holds its ``tol``, ``approach``, ``max_measurements``,
            ``agree_z``).
            Run it on the device the table was measured on.

    Returns:
        dict: ``mutator.resources()`` after pruning plus ``steps``,
        ``reached``, and with a latency table ``latency_ratio`` and
        ``latency_ms`` (predicted); with ``latency_feedback`` also
        ``measured_latency_ratio`` and ``latency_feedback`` (one entry per
        measurement: predicted, measured, goal).
    """
    metric, target = _checked_target(target_flops, target_latency)
    imp = build_criterion(criterion, **(criterion_kwargs or {}))
    selector = ChannelSelector(cost, cost_power, **(selection or {}))
    if metric == 'latency' and selector.latency_table is None:
        raise ValueError(
            'target_latency needs selection=dict(latency_table=PATH); build '
            'the table with tools/analysis/latency_table.py')
    feedback = LatencyFeedback.from_option(latency_feedback, metric, target,
                                           'prune_to_target')
    ctx = ScoringContext(model, mutator)
    if optimizer is not None:
        imp.bind_optimizer(optimizer, ctx)
    steps = 0

    def prune_to(goal: float) -> Tuple[float, bool]:
        nonlocal steps
        floor = False
        while not floor and selector.ratio(mutator, metric) > goal:
            scores = imp.score(ctx, data_batches, seed)
            alive = sum(u.num_alive for u in mutator.units)
            k = max(1, int(alive * step_fraction))
            step = prune_step(ctx, imp, selector, scores, k,
                              **{f'target_{metric}': goal})
            steps += 1
            floor = not _step_pruned(step, imp, mutator, selector, metric,
                                     target)
        return selector.ratio(mutator, metric), floor

    if feedback is None:
        reached = not prune_to(target)[1]
    else:
        feedback.run(prune_to, lambda: itemgetter('ratio', 'ratio_se')(
            measure_latency_ratio(model, mutator, selector.latency_table,
                                  rounds=feedback.rounds)))
        reached = feedback.reached
    out = dict(mutator.resources(), steps=steps, reached=reached)
    if selector.latency_table is not None:
        out.update(latency_ratio=selector.ratio(mutator, 'latency'),
                   latency_ms=selector.predicted_latency_ms(mutator))
    if feedback is not None:
        print_log(f'[mmifso] {feedback.summary()}', logger='current',
                  level=logging.INFO if feedback.reached else logging.WARNING)
        out.update(measured_latency_ratio=feedback.history[-1]['measured'],
                   latency_feedback=feedback.history)
    return out


def export_model(model: nn.Module,
                 mutator: ChannelMutator) -> Tuple[nn.Module, Dict]:
    """Physically pruned copy of ``model`` and its structure (JSON-able)."""
    return export_pruned_model(model, mutator, mutator.resources())
