"""Global channel selection under a FLOPs budget."""
import heapq
import logging
import math
import numbers
from typing import Callable, List, Optional, Tuple, Union

import torch
from mmengine.logging import print_log

from mmifso.utils import check_choice
from ..task_modules.latency import GRID_MULTIPLE, LatencyTable, latency_key
from .channel_mutator import ChannelMutator
from .latency import (latency_ratio, predict_latency_ms,
                      unit_latency_costs)

COSTS = ('acts', 'flops', 'none', 'latency')
METRICS = ('flops', 'latency')
#: ``cost='latency'``: share of the alive channels selected between two
#: updates of the units' marginal latencies.
LATENCY_REFRESH = 0.02


def normalised_scores(mutator: ChannelMutator,
                      scores: List[torch.Tensor],
                      cost: str = 'acts',
                      cost_power: float = 0.5,
                      costs: Optional[List[torch.Tensor]] = None
                      ) -> List[torch.Tensor]:
    """``score / cost ** p`` per channel; removed channels get ``+inf``.

    Args:
        mutator (ChannelMutator): Gives the units and their costs.
        scores (list[Tensor]): Per unit, shape ``(num_channels, )``; lower
            means less important.
        cost (str): ``'acts'``, ``'flops'`` or ``'none'``.
        cost_power (float): ``p``; 0.5 in IFSO, 1 in Group Fisher, 0 for none.
        costs (list[Tensor], optional): Per-channel costs computed by the
            caller (e.g. marginal latencies); ``cost`` is then unused.

    Returns:
        list[Tensor]: Normalised scores, float64 on the CPU.
    """
    if len(scores) != len(mutator.units):
        raise ValueError(f'{len(scores)} score tensors for '
                         f'{len(mutator.units)} units')
    if costs is None and cost_power:
        costs = mutator.channel_costs(cost)
    if not cost_power:
        costs = None
    out = []
    for i, (unit, s) in enumerate(zip(mutator.units, scores)):
        s = s.detach().double().cpu().clone()
        if s.shape != (unit.num_channels, ):
            raise ValueError(f'unit {unit.name}: scores of shape '
                             f'{tuple(s.shape)}, expected '
                             f'({unit.num_channels},)')
        if costs is not None:
            s = s / costs[i].double()**cost_power
        s[~unit.alive.cpu()] = float('inf')
        out.append(s)
    return out


def unit_floor(unit, round_to: int = 1,
               max_prune_ratio: Optional[float] = None) -> int:
    """Fewest channels ``unit`` may keep under the selection constraints.

    Args:
        unit (MutableChannelUnit): The unit.
        round_to (int): The kept count must be a multiple of this.
        max_prune_ratio (float, optional): Largest share of the unit's
            channels that may be removed.

    Returns:
        int: ``max(min_channels, ceil((1 - max_prune_ratio) * num_channels))``
        rounded up to a multiple of ``round_to``; more than
        ``unit.num_channels`` when the unit cannot be pruned at all.
    """
    floor = unit.min_channels
    if max_prune_ratio is not None:
        # Small epsilon: (1 - 0.7) * 10 is 3.0000000000000004 in floats.
        floor = max(floor,
                    math.ceil((1 - max_prune_ratio) * unit.num_channels -
                              1e-9))
    return max(round_to, -(-floor // round_to) * round_to)


def _unit_chunks(unit, norm: torch.Tensor, offset: int,
                 round_to: int) -> List[Tuple[float, int, List[int]]]:
    """The removal order of one unit: ``(score, position, channels)`` chunks.

    Atoms are the unit's blocks (channels tied by GroupNorm groups or grouped
    convolutions) or single channels, alive ones in ascending order of their
    (mean) normalised score. Consecutive atoms are merged into chunks so that
    the alive count after every chunk is a multiple of ``round_to`` (the
    first chunk takes the remainder); a tail that cannot reach a multiple is
    dropped. A chunk's score is the mean over its channels.
    """
    alive = unit.alive.cpu()
    if unit.blocks is None:
        idx = alive.nonzero().flatten()
        atoms = [[c] for c in idx.tolist()]
        values = norm[idx]
    else:
        atoms = sorted((b for b in unit.blocks if bool(alive[b[0]])),
                       key=lambda b: b[0])
        values = torch.stack([norm[b].mean() for b in atoms]) if atoms \
            else norm[:0]
    order = torch.argsort(values, stable=True).tolist()
    values = values.tolist()
    left = int(alive.sum())
    chunks = []
    cur: List[int] = []
    total = 0.0
    for a in order:
        cur.extend(atoms[a])
        total += values[a] * len(atoms[a])
        if (left - len(cur)) % round_to == 0:
            left -= len(cur)
            chunks.append((total / len(cur), offset + min(cur), cur))
            cur, total = [], 0.0
    return chunks


def select_channels(mutator: ChannelMutator,
                    scores: List[torch.Tensor],
                    num_channels: int,
                    cost: str = 'acts',
                    cost_power: float = 0.5,
                    target_flops: Optional[float] = None,
                    round_to: int = 1,
                    max_prune_ratio: Optional[float] = None,
                    costs: Optional[List[torch.Tensor]] = None,
                    reached: Optional[Callable[[], bool]] = None
                    ) -> List[Tuple[int, int]]:
    """Prune the globally least important channels.

    Channels are taken in ascending order of normalised score; a unit is
    never brought below :func:`unit_floor` (``min_channels``,
    ``max_prune_ratio``, ``round_to``); with ``target_flops`` the selection
    stops as soon as the FLOPs ratio reaches the target.

    Units with blocks (``unit.blocks``: channels tied by GroupNorm groups or
    grouped convolutions) lose whole blocks, ranked by the block's mean
    normalised score. With ``round_to=k`` a unit loses *chunks*: its
    least important channels (or blocks) are taken together until its alive
    count is a multiple of ``k`` (the first chunk removes ``alive % k``
    channels, later ones ``k``, or ``lcm(k, block size)`` for block units),
    ranked by the chunk's mean normalised score. Taking a block or chunk may
    remove more than ``num_channels`` channels in the last step (a block or
    chunk is never split). A unit with fewer than ``k`` channels can keep no
    positive multiple of ``k`` and is kept whole.

    Args:
        mutator (ChannelMutator): Its masks are updated in place.
        scores (list[Tensor]): Raw per-unit scores (lower = prune first).
        num_channels (int): At most this many channels are removed (rounded
            up to whole blocks/chunks).
        cost (str): Cost used for normalisation.
        cost_power (float): Exponent ``p`` of the cost.
        target_flops (float, optional): FLOPs ratio in (0, 1) to stop at.
        round_to (int): Every unit the selection prunes keeps a multiple of
            this many channels (1: off).
        max_prune_ratio (float, optional): No unit loses more than this
            share of its channels.
        costs (list[Tensor], optional): Per-channel costs computed by the
            caller (e.g. marginal latencies); ``cost`` is then unused.
        reached (Callable[[], bool], optional): Another stopping rule,
            checked before every removal like ``target_flops``.

    Returns:
        list[tuple[int, int]]: ``(unit_index, channel)`` pairs removed.
    """
    if any(not torch.isfinite(s.detach()).all() for s in scores):
        raise FloatingPointError('scores contain NaN or Inf; nothing pruned')
    norm = normalised_scores(mutator, scores, cost, cost_power, costs)
    heap = []
    queues = []
    offset = 0
    for i, unit in enumerate(mutator.units):
        queues.append(_unit_chunks(unit, norm[i], offset, round_to))
        offset += unit.num_channels
        if queues[i]:
            score, pos, _ = queues[i][0]
            heapq.heappush(heap, (score, pos, i, 0))
    removed: List[Tuple[int, int]] = []
    while heap:
        score, _, i, k = heapq.heappop(heap)
        if len(removed) >= num_channels or score == float('inf'):
            break
        if target_flops is not None and \
                mutator.resources()['flops_ratio'] <= target_flops:
            break
        if reached is not None and reached():
            break
        unit = mutator.units[i]
        chunk = queues[i][k][2]
        if unit.num_alive - len(chunk) < unit_floor(unit, round_to,
                                                    max_prune_ratio):
            continue  # the unit is at its floor: its later chunks too
        unit.prune(chunk)
        removed.extend((i, c) for c in sorted(chunk))
        if k + 1 < len(queues[i]):
            score, pos, _ = queues[i][k + 1]
            heapq.heappush(heap, (score, pos, i, k + 1))
    return removed


class ChannelSelector:
    """How a pruning step chooses channels: the one place that holds the
    selection knobs (validated once) for hooks, schedules, the Python API
    and the analysis tools.

    Channels are ranked globally by ``score / cost ** cost_power``
    (:func:`select_channels`). New selection knobs are added here and reach
    every caller through the ``selection`` dict they accept, e.g.
    ``PruningHook(..., selection=dict(round_to=8, max_prune_ratio=0.7))``.

    Hardware-friendly widths: with ``round_to=k`` every unit the selection
    prunes keeps a multiple of ``k`` channels (channels go in chunks ranked
    by their mean normalised score, so this works for every criterion);
    units with blocks (GroupNorm groups, grouped convolutions) lose whole
    blocks *and* keep a multiple of ``k``. A unit with fewer than ``k``
    channels cannot keep a positive multiple of ``k`` and is kept whole
    (logged once at WARNING); if that is every unit, :meth:`select` raises.

    Args:
        cost (str): Per-channel cost of the normalisation: ``'acts'``
            (output activations), ``'flops'`` or ``'none'``.
        cost_power (float): ``p`` of ``score / cost ** p``; 0.5 in IFSO, 1
            in Group Fisher, 0 for raw scores.
        round_to (int): Every pruned unit keeps a multiple of this many
            channels; 1 (default) is off.
        max_prune_ratio (float, optional): In (0, 1): no unit loses more
            than this share of its channels (against layer collapse); None
            (default): only ``min_channels`` limits a unit.
        latency_table (str | LatencyTable, optional): A table of
            ``tools/analysis/latency_table.py`` for this model. Needed by
            ``cost='latency'`` (rank by ``score / marginal_latency ** p``,
            the marginal latency of one more channel of the unit at its
            current width, from the table) and by a ``target_latency``.

    Latency targets: :meth:`ratio` is the one definition of the pruned
    fraction the hooks and the API stop at: ``'flops'`` (conv/linear MACs)
    or ``'latency'`` (the table's predicted latency of the masked structure
    over its predicted unpruned latency).
    """

    def __init__(self,
                 cost: str = 'acts',
                 cost_power: float = 0.5,
                 round_to: int = 1,
                 max_prune_ratio: Optional[float] = None,
                 latency_table: Union[str, LatencyTable, None] = None
                 ) -> None:
        check_choice('cost', cost, COSTS)
        if isinstance(latency_table, str):
            latency_table = LatencyTable.load(latency_table)
        if latency_table is not None and not isinstance(
                latency_table, LatencyTable):
            raise TypeError('latency_table must be a path or a LatencyTable, '
                            f'got {type(latency_table).__name__}')
        if cost == 'latency' and latency_table is None:
            raise ValueError(
                "cost='latency' needs latency_table=PATH (build it with "
                'tools/analysis/latency_table.py CONFIG --shape N C H W '
                '--out PATH)')
        self.latency_table = latency_table
        if isinstance(cost_power, bool) or not isinstance(
                cost_power, numbers.Real) or not math.isfinite(
                    cost_power) or cost_power < 0:
            raise ValueError('cost_power must be a finite number >= 0 (the p '
                             f'of score / cost^p), got {cost_power!r}')
        if isinstance(round_to, bool) or not isinstance(
                round_to, numbers.Integral) or round_to < 1:
            raise ValueError(
                'round_to must be an integer >= 1 (every pruned unit keeps a '
                f'multiple of it; 1 is off, 8 suits most CPUs), got '
                f'{round_to!r}')
        if max_prune_ratio is not None and (
                isinstance(max_prune_ratio, bool)
                or not isinstance(max_prune_ratio, numbers.Real)
                or not 0 < max_prune_ratio < 1):
            raise ValueError(
                'max_prune_ratio must be in (0, 1) (the largest share of a '
                'unit\'s channels that may be removed, e.g. 0.7) or None, '
                f'got {max_prune_ratio!r}')
        self.cost = cost
        self.cost_power = float(cost_power)
        self.round_to = int(round_to)
        self.max_prune_ratio = None if max_prune_ratio is None else float(
            max_prune_ratio)
        self._checked: set = set()
        if cost == 'latency' and self.round_to % GRID_MULTIPLE:
            # The table's grid widths are multiples of 8; other widths run
            # off the blocked kernels (docs/benchmarks.md).
            print_log(
                f'[mmifso] cost=\'latency\' with round_to={self.round_to}: '
                f'the latency table is measured at multiples of '
                f'{GRID_MULTIPLE} channels, and other widths ran slower than '
                'it predicts (ResNet-50, batch 1: latency ratio under-'
                'predicted by 7-16 % with torch, 26-32 % with ONNX Runtime; '
                f'within 4 % at multiples of 8 or 16); set round_to='
                f'{GRID_MULTIPLE} (or 16) for a latency target',
                logger='current', level=logging.WARNING)

    def check_units(self, mutator: ChannelMutator) -> List[str]:
        """Units that ``round_to`` keeps whole (fewer channels than it).

        Logs them once per mutator at WARNING.

        Raises:
            ValueError: every unit has fewer than ``round_to`` channels, so
                nothing could ever be pruned.
        """
        small = [u.name for u in mutator.units
                 if u.num_channels < self.round_to]
        if id(mutator) in self._checked:
            return small
        if small and len(small) == len(mutator.units):
            big = max(mutator.units, key=lambda u: u.num_channels)
            raise ValueError(
                f'round_to={self.round_to} is larger than every unit (the '
                f'largest, {big.name}, has {big.num_channels} channels): '
                'nothing can be pruned; lower round_to')
        if small:
            print_log(
                f'[mmifso] round_to={self.round_to}: {len(small)} unit(s) '
                f'have fewer channels and are kept whole: '
                f'{", ".join(small[:8])}{" ..." if len(small) > 8 else ""}',
                logger='current',
                level=logging.WARNING)
        if self.latency_table is not None:
            key = self.latency_table.key
            # The table describes the deployment device (shape, device,
            # threads, backend), which need not be the machine that prunes;
            # the model must be this one.
            expected = latency_key(mutator, key['input_shape'])
            self.latency_table.check_key(dict(model=expected['model']))
        self._checked.add(id(mutator))
        return small

    def ratio(self, mutator: ChannelMutator, metric: str = 'flops') -> float:
        """The remaining fraction the targets refer to.

        Args:
            mutator (ChannelMutator): The masked model.
            metric (str): ``'flops'`` (conv/linear MACs) or ``'latency'``
                (predicted by the latency table).

        Returns:
            float: Pruned / unpruned, in (0, 1].
        """
        if metric == 'flops':
            return mutator.resources()['flops_ratio']
        check_choice('metric', metric, METRICS)
        if self.latency_table is None:
            raise ValueError(
                'a latency target needs selection=dict(latency_table=PATH) '
                '(build it with tools/analysis/latency_table.py)')
        return latency_ratio(self.latency_table, mutator)

    def predicted_latency_ms(self, mutator: ChannelMutator
                             ) -> Optional[float]:
        """Predicted ms per batch of the masked model (None without a
        table)."""
        if self.latency_table is None:
            return None
        return predict_latency_ms(self.latency_table, mutator)

    def select(self,
               mutator: ChannelMutator,
               scores: List[torch.Tensor],
               num_channels: Optional[int] = None,
               target_flops: Optional[float] = None,
               target_latency: Optional[float] = None
               ) -> List[Tuple[int, int]]:
        """Prune the globally least important channels (masks in place).

        Args:
            mutator (ChannelMutator): Its masks are updated.
            scores (list[Tensor]): Raw per-unit scores, shape
                ``(num_channels, )`` each; lower = prune first.
            num_channels (int, optional): At most this many channels
                (rounded up to whole blocks/chunks); None: as many as the
                target needs.
            target_flops (float, optional): FLOPs ratio to stop at.
            target_latency (float, optional): Predicted latency ratio to
                stop at (needs ``latency_table``); not with
                ``target_flops``.

        Returns:
            list[tuple[int, int]]: ``(unit_index, channel)`` pairs removed.
        """
        if target_flops is not None and target_latency is not None:
            raise ValueError('set target_flops or target_latency, not both')
        self.check_units(mutator)
        if num_channels is None:
            num_channels = sum(u.num_alive for u in mutator.units)
        reached = None
        if target_latency is not None:
            table = self.latency_table
            if table is None:
                self.ratio(mutator, 'latency')  # raises with the fix

            def reached() -> bool:
                return latency_ratio(table, mutator) <= target_latency

        kwargs = dict(round_to=self.round_to,
                      max_prune_ratio=self.max_prune_ratio, reached=reached)
        if self.cost != 'latency' or not self.cost_power:
            return select_channels(mutator, scores, num_channels, self.cost,
                                   self.cost_power, target_flops, **kwargs)
        # The marginal latency of a unit changes with its width: re-read it
        # from the table after every LATENCY_REFRESH share of the channels.
        removed: List[Tuple[int, int]] = []
        while len(removed) < num_channels:
            alive = sum(u.num_alive for u in mutator.units)
            batch = min(num_channels - len(removed),
                        max(1, int(alive * LATENCY_REFRESH)))
            costs = unit_latency_costs(self.latency_table, mutator,
                                       max(8, self.round_to))
            step = select_channels(mutator, scores, batch, self.cost,
                                   self.cost_power, target_flops,
                                   costs=costs, **kwargs)
            removed += step
            if not step or len(step) < batch:
                break  # target reached or every unit at its floor
        return removed

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(cost={self.cost!r}, '
                f'cost_power={self.cost_power}, round_to={self.round_to}, '
                f'max_prune_ratio={self.max_prune_ratio}, latency_table='
                f'{self._table_name()!r})')

    def _table_name(self) -> Optional[str]:
        if self.latency_table is None:
            return None
        return getattr(self.latency_table, 'source', '<in memory>')
