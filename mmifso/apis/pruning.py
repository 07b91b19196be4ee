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
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import torch
import torch.nn as nn

from mmifso.models.importance import BaseImportance, ScoringContext
from mmifso.models.mutators import ChannelMutator, select_channels
from mmifso.registry import TASK_UTILS
from mmifso.structures import export_pruned_model

Criterion = Union[str, dict, BaseImportance]


def analyse_model(model: nn.Module,
                  input_shape: Sequence[int] = (1, 3, 224, 224),
                  min_channels: int = 1,
                  frozen: str = 'error') -> ChannelMutator:
    """Find the channel units of ``model`` and gate them (in place).

    Args:
        model (nn.Module): An mmpretrain classifier, mmdet detector or any
            module whose ``forward(inputs, mode='tensor')`` (BaseModel) or
            ``forward(x)`` accepts an image batch.
        input_shape (Sequence[int]): Demo input ``(N, C, H, W)``.
        min_channels (int): Channels every unit keeps.
        frozen (str): ``'error'`` or ``'skip'`` for units with frozen weights.

    Returns:
        ChannelMutator: Holds one unit per prunable coupled group; skipped
        groups and reasons are in ``mutator.analysis.skipped``.
    """
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


def score_channels(model: nn.Module, mutator: ChannelMutator,
                   criterion: Criterion,
                   data_batches: Iterable[dict]) -> List[torch.Tensor]:
    """Mean criterion scores over ``data_batches``.

    Args:
        model (nn.Module): The gated model (a BaseModel with a ``loss`` mode
            for data-driven criteria).
        mutator (ChannelMutator): From :func:`analyse_model`.
        criterion: Registered name (``'mmifso.IFSOImportance'``), config dict
            or instance.
        data_batches (Iterable[dict]): Raw batches as a dataloader yields
            them (pre-processed by the model's data preprocessor).

    Returns:
        list[Tensor]: Per unit, shape ``(num_channels, )``; lower = prune
        first.
    """
    imp = build_criterion(criterion)
    return imp.score(ScoringContext(model, mutator), data_batches)


def prune_to_target(model: nn.Module,
                    mutator: ChannelMutator,
                    criterion: Criterion,
                    data_batches: Sequence[dict],
                    target_flops: float,
                    step_fraction: float = 0.05,
                    cost: str = 'acts',
                    cost_power: float = 0.5,
                    criterion_kwargs: Dict = None) -> Dict:
    """Iteratively re-score and prune until the FLOPs ratio hits the target.

    Each step removes ``step_fraction`` of the channels still alive (at least
    one), then scores again on the masked model, without any training.

    Returns:
        dict: ``mutator.resources()`` after pruning plus ``steps``.
    """
    if not 0 < target_flops < 1:
        raise ValueError(f'target_flops must be in (0, 1), got {target_flops}')
    imp = build_criterion(criterion, **(criterion_kwargs or {}))
    ctx = ScoringContext(model, mutator)
    steps = 0
    while mutator.resources()['flops_ratio'] > target_flops:
        scores = imp.score(ctx, data_batches)
        alive = sum(u.num_alive for u in mutator.units)
        k = max(1, int(alive * step_fraction))
        removed = select_channels(mutator, scores, k, cost, cost_power,
                                  target_flops)
        steps += 1
        if not removed:
            raise RuntimeError(
                'cannot reach the FLOPs target: every unit is at '
                f'min_channels (FLOPs ratio '
                f'{mutator.resources()["flops_ratio"]:.3f})')
    return dict(mutator.resources(), steps=steps)


def export_model(model: nn.Module,
                 mutator: ChannelMutator) -> Tuple[nn.Module, Dict]:
    """Physically pruned copy of ``model`` and its structure (JSON-able)."""
    return export_pruned_model(model, mutator, mutator.resources())
