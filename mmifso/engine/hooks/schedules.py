"""Pruning schedules other than the interleaved one: one-shot, rounds, gradual.

Every schedule here prunes *to a FLOPs ratio* at scheduled iterations: it
scores ``score_batches`` fresh batches with the criterion, removes the
globally least important channels (``score / cost^p``, :func:`select_channels`)
until the ratio is reached, and lets training go on (fine-tuning) in between
and afterwards. They subclass :class:`PruningHook` for its scoring-data
stream, lambda set-up, logging, FLOPs-threshold checkpoints and resumable
state; only *when* and *how far* to prune differ.
"""
from typing import Optional, Sequence

from mmifso.models.algorithms import prune_step
from mmifso.registry import HOOKS
from .pruning_hook import PruningHook


class ScheduledPruningHook(PruningHook):
    """Base of the schedules: prune to :meth:`ratio_at` when it is not None.

    Pruning happens in ``before_train_iter`` of the scheduled iteration, so
    that iteration already trains the pruned model. The step itself is
    :func:`~mmifso.models.algorithms.prune_step` (e.g.
    :class:`WoodFisherImportance` with ``obs_update=True`` updates the
    remaining weights after the channels are removed).

    Args:
        importance (dict): Criterion config.
        target_flops (float, optional): Final FLOPs ratio in (0, 1); 0.5
            when neither target is set.
        target_latency (float, optional): Final predicted latency ratio
            instead (needs ``selection=dict(latency_table=PATH)``; the
            schedule's ratios are then latency ratios and the checkpoints
            ``latency_{xx}.pth``).
        score_batches (int): Batches scored at every pruning step.
        cost (str): ``'acts'``, ``'flops'`` or ``'none'``.
        cost_power (float): Exponent ``p`` of ``score / cost^p``.
        selection (dict, optional): Further
            :class:`~mmifso.models.mutators.ChannelSelector` knobs.
        save_thresholds (Sequence[float]): FLOPs ratios at which a checkpoint
            ``flops_{xx}.pth`` is saved; the final target always is.
        start_iter (int): First pruning iteration.
        stop_at_target (bool): Stop training once the final target is
            reached (default: go on fine-tuning until ``max_iters``).
        scoring_dataloader (dict, optional): Dataloader config for scoring.
        **kwargs: Other arguments of :class:`PruningHook` (``backend_args``,
            ``check_checkpoint_shapes``).
    """

    def __init__(self,
                 importance: dict = dict(type='mmifso.IFSOImportance'),
                 target_flops: Optional[float] = None,
                 score_batches: int = 4,
                 cost: str = 'acts',
                 cost_power: float = 0.5,
                 selection: Optional[dict] = None,
                 save_thresholds: Sequence[float] = (),
                 start_iter: int = 0,
                 stop_at_target: bool = False,
                 scoring_dataloader: Optional[dict] = None,
                 target_latency: Optional[float] = None,
                 **kwargs) -> None:
        if kwargs.get('score_window') is not None:
            raise ValueError(
                f'{type(self).__name__}: score_window is a PruningHook '
                'setting; a schedule scores score_batches batches at each '
                'of its pruning steps only, remove score_window')
        if kwargs.get('latency_feedback'):
            raise ValueError(
                f'{type(self).__name__}: latency_feedback is a PruningHook '
                'setting (a schedule prunes to the ratios of its own '
                'steps); use PruningHook or prune_to_target for a measured '
                'latency target')
        super().__init__(
            importance=importance,
            target_flops=target_flops,
            interval=1,
            channels_per_step=1,
            score_batches=score_batches,
            cost=cost,
            cost_power=cost_power,
            selection=selection,
            save_thresholds=save_thresholds,
            start_iter=start_iter,
            stop_at_target=stop_at_target,
            scoring_dataloader=scoring_dataloader,
            target_latency=target_latency,
            **kwargs)

    def ratio_at(self, it: int) -> Optional[float]:
        """FLOPs ratio to prune to before iteration ``it`` (or None)."""
        raise NotImplementedError

    def is_last(self, it: int) -> bool:
        """Whether iteration ``it`` is the last pruning step."""
        raise NotImplementedError

    # ------------------------------------------------------------------ #
    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        if self.done:
            return
        ratio = self.ratio_at(runner.iter)
        if ratio is None:
            return
        last = self.is_last(runner.iter)
        self.prune_to(runner, ratio, final=last)
        if last:
            self._finish(runner)

    def _prune_if_due(self, runner) -> None:
        """Nothing: scoring and pruning happen in ``before_train_iter``
        (``after_train_iter`` still keeps averaged copies' masks in sync)."""

    def prune_to(self, runner, ratio: float, final: bool = False) -> list:
        """Score fresh batches and remove channels until ``ratio``.

        Args:
            runner (Runner): The runner.
            ratio (float): FLOPs ratio to reach.
            final (bool): The last step of the schedule: the state saved
                with the threshold checkpoints says the schedule is done.

        Returns:
            list[tuple[int, int]]: The removed ``(unit, channel)`` pairs.
        """
        algo = self._algorithm(runner)
        ratio = max(float(ratio), self.target)
        if self._ratio(algo) <= ratio:
            return []
        imp = self.importance
        imp.reset()
        if imp.requires_data:
            for _ in range(self.score_batches):
                batch = self._next_scoring_batch(runner)
                imp.update(self.ctx, batch, self._batch_seed(runner))
        scores = imp.compute(self.ctx)
        imp.reset()
        step = prune_step(self.ctx, imp, self.selector, scores,
                          **self._targets(ratio))
        if not self._step_done(runner, step):
            return []
        removed = step.removed
        self._steps += 1
        self._pruned_total += len(removed)
        self.done = self.done or final
        res = algo.mutator.resources()
        reached = self._ratio(algo)
        if not removed:
            runner.logger.warning(
                '[mmifso] no channel could be removed (every unit is at its '
                'floor: min_channels, max_prune_ratio, round_to); best '
                f'reachable {self.metric} ratio {reached:.4f}')
            return removed
        self._log_state(runner, algo, f'prune to {ratio:.4f}', removed)
        if reached > ratio:
            runner.logger.warning(
                f'[mmifso] {self.metric} ratio {reached:.4f} is above the '
                f'step target {ratio:.4f}: every unit is at its floor '
                '(min_channels, max_prune_ratio, round_to); this is the best '
                'reachable point')
        self._save_crossed_thresholds(
            runner, algo, res, force=final and self.metric == 'latency')
        return removed

    def after_train(self, runner) -> None:
        if not self.done:
            ratio = self._ratio(self._algorithm(runner))
            runner.logger.warning(
                f'[mmifso] training ended before the last pruning step of '
                f'{type(self).__name__} ({self.metric} ratio {ratio:.4f}, '
                f'target {self.target}, {self._steps} steps done); raise '
                'max_iters or move the schedule earlier')

    def _finish(self, runner) -> None:
        self.done = True
        ratio = self._ratio(self._algorithm(runner))
        then = ('stopping training' if self.stop_at_target else
                'training continues as fine-tuning')
        runner.logger.info(
            f'[mmifso] pruning schedule finished at iter {runner.iter + 1}: '
            f'{self.metric} ratio {ratio:.4f} (target {self.target}) after '
            f'{self._steps} steps ({self._pruned_total} channels); {then}')
        if self.stop_at_target:
            runner.train_loop.stop_training = True


@HOOKS.register_module()
class OneShotPruningHook(ScheduledPruningHook):
    """Score once, prune straight to the target, then fine-tune.

    At iteration ``start_iter`` the criterion scores ``score_batches``
    batches and channels are removed until ``target_flops``; the following
    iterations fine-tune the pruned model (SOSP, SNIP-style one-shot
    pruning). A checkpoint ``flops_{target}.pth`` of the pruned, not yet
    fine-tuned model is saved.

    Args: see :class:`ScheduledPruningHook`.
    """

    def ratio_at(self, it: int) -> Optional[float]:
        return self.target if it == self.start_iter else None

    def is_last(self, it: int) -> bool:
        return it == self.start_iter


@HOOKS.register_module()
class IterativePruningHook(ScheduledPruningHook):
    """``num_rounds`` rounds of prune -> train (Lubana & Dick's schedule).

    Round ``k = 1 .. n`` happens at iteration ``start_iter + (k - 1) *
    interval`` and prunes to the FLOPs ratio ``target ** (k / n)``: every
    round removes the same fraction ``1 - target ** (1 / n)`` of the FLOPs
    that remain (geometric), and the model trains for ``interval``
    iterations between rounds. Lubana & Dick count filters rather than FLOPs
    (``p_k = p / (k p + n (1 - p))`` of the remaining filters with the
    percentage ``p``); here the budget is FLOPs, like the other schedules.

    Args:
        num_rounds (int): Number of pruning rounds ``n``.
        interval (int): Training iterations between rounds.
        Others: see :class:`ScheduledPruningHook`.
    """

    def __init__(self,
                 num_rounds: int = 5,
                 interval: int = 100,
                 **kwargs) -> None:
        if num_rounds < 1 or interval < 1:
            raise ValueError('num_rounds >= 1 and interval >= 1 required')
        super().__init__(**kwargs)
        self.num_rounds = num_rounds
        self.interval = interval

    def round_of(self, it: int) -> Optional[int]:
        offset = it - self.start_iter
        if offset < 0 or offset % self.interval:
            return None
        k = offset // self.interval + 1
        return k if k <= self.num_rounds else None

    def ratio_at(self, it: int) -> Optional[float]:
        k = self.round_of(it)
        if k is None:
            return None
        return self.target**(k / self.num_rounds)

    def is_last(self, it: int) -> bool:
        return self.round_of(it) == self.num_rounds


@HOOKS.register_module()
class GradualPruningHook(ScheduledPruningHook):
    """WoodFisher's gradual polynomial schedule on the FLOPs reduction.

    Every ``frequency`` iterations from ``start_iter = t0`` to ``end_iter =
    t_end`` (which is always a pruning step) the model is pruned to the FLOPs
    reduction (Zhu & Gupta's cubic schedule, degree 3 in WoodFisher's
    configs)::

        s_t = s_f - (s_f - s_i) * (1 - (t - t0) / (t_end - t0)) ** 3

    with ``s_i = initial_sparsity`` and ``s_f = 1 - target_flops``, i.e. the
    FLOPs ratio ``1 - s_t``. Training continues between steps and after
    ``t_end``. With ``WoodFisherImportance(obs_update=True)`` the remaining
    weights receive the OBS update at every step (WoodFisher's pruning).

    Args:
        end_iter (int): ``t_end``, the last pruning step (> start_iter).
        frequency (int): Iterations between pruning steps.
        initial_sparsity (float): ``s_i``, the FLOPs reduction at ``t0``.
        degree (int): Exponent of the polynomial (3).
        Others: see :class:`ScheduledPruningHook`.
    """

    def __init__(self,
                 end_iter: int = 1000,
                 frequency: int = 100,
                 initial_sparsity: float = 0.05,
                 degree: int = 3,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if end_iter <= self.start_iter or frequency < 1 or degree < 1:
            raise ValueError('end_iter > start_iter, frequency >= 1 and '
                             'degree >= 1 are required')
        if not 0 <= initial_sparsity < 1 - self.target:
            raise ValueError(
                f'initial_sparsity must be in [0, {1 - self.target}) '
                '(below the final FLOPs reduction 1 - target_flops), got '
                f'{initial_sparsity}')
        self.end_iter = end_iter
        self.frequency = frequency
        self.initial_sparsity = initial_sparsity
        self.degree = degree

    def sparsity_at(self, it: int) -> float:
        """``s_t`` (clamped to ``[t0, t_end]``)."""
        t0, t1 = self.start_iter, self.end_iter
        frac = min(max((it - t0) / (t1 - t0), 0.0), 1.0)
        s_i, s_f = self.initial_sparsity, 1 - self.target
        return s_f - (s_f - s_i) * (1 - frac)**self.degree

    def ratio_at(self, it: int) -> Optional[float]:
        if it < self.start_iter or it > self.end_iter:
            return None
        if (it - self.start_iter) % self.frequency and it != self.end_iter:
            return None
        if it == self.end_iter:
            return self.target
        return 1 - self.sparsity_at(it)

    def is_last(self, it: int) -> bool:
        return it == self.end_iter

    @property
    def steps(self) -> list:
        """Iterations at which the schedule prunes."""
        its = list(range(self.start_iter, self.end_iter, self.frequency))
        return its + [self.end_iter]


__all__ = [
    'ScheduledPruningHook', 'OneShotPruningHook', 'IterativePruningHook',
    'GradualPruningHook'
]
