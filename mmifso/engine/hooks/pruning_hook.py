"""Interleaved pruning schedule: score while training, prune every interval."""
import copy
import logging
import numbers
from contextlib import nullcontext
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch
from mmengine.dist import broadcast, broadcast_object_list, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from mmifso.models.algorithms import (PruneStepResult, PruningAlgorithm,
                                      prune_step)
from mmifso.models.importance import (BaseImportance, ScoringContext,
                                      registered_criteria)
from mmifso.models.mutators import ChannelSelector
from mmifso.models.mutators.latency import (LatencyFeedback,
                                            measure_latency_ratio)
from mmifso.models.task_modules.latency import device_name
from mmifso.registry import HOOKS, TASK_UTILS
from mmifso.utils import ATOMIC_BACKEND_ARGS, check_checkpoint_fits_model
from .resume_hook import ensure_exact_resume_hook, preserved_rng_state

DEFAULT_THRESHOLDS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
#: State-dict key prefix of the unit masks of a PruningAlgorithm.
MUTATOR_KEY = 'mutator.units.'
EMPTY_LOADER = ('the scoring dataloader is empty: check the dataset of '
                'train_dataloader (or scoring_dataloader), its batch_size and '
                'drop_last')


def _check_int(name: str, value, minimum: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or value < minimum:
        raise ValueError(f'PruningHook: {name} must be an integer >= '
                         f'{minimum} ({what}), got {value!r}')


def _check_ratio(name: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not 0 < value < 1:
        raise ValueError(f'{name} must be in (0, 1), got {value!r}: {what}')
    return float(value)


def check_save_thresholds(save_thresholds) -> List[float]:
    """FLOPs ratios in (0, 1), strictly decreasing (the order in which
    pruning crosses them)."""
    if isinstance(save_thresholds, (str, bytes)) or not isinstance(
            save_thresholds, Sequence):
        raise TypeError(
            'save_thresholds must be a sequence of FLOPs ratios in (0, 1), '
            f'e.g. (0.9, 0.8, 0.7); got {save_thresholds!r}')
    what = ('each threshold is the FLOPs ratio at which a flops_XX.pth '
            'checkpoint is saved')
    values = [
        _check_ratio('save_thresholds', t, what) for t in save_thresholds
    ]
    for a, b in zip(values, values[1:]):
        if not b < a:
            raise ValueError(
                'save_thresholds must be strictly decreasing (pruning crosses '
                f'them from 1 down to the target), got {tuple(values)}: '
                f'{b} follows {a}')
    return values


def _unknown_criterion(importance: dict) -> Optional[str]:
    """A message if ``importance['type']`` is not a registered criterion."""
    name = importance.get('type')
    if not isinstance(name, str) or TASK_UTILS.get(name) is not None:
        return None
    known = [f'mmifso.{k}' for k in registered_criteria()]
    return (f'unknown pruning criterion importance.type={name!r}; the '
            f'registered criteria are {", ".join(known)} (custom criteria '
            'must be imported, e.g. with custom_imports)')


def threshold_checkpoint_name(ratio: float, metric: str = 'flops') -> str:
    """File name of the checkpoint a pruning hook saves when the ``metric``
    ratio (``'flops'`` or ``'latency'``) crosses ``ratio``: ``flops_50.pth``
    for 0.5."""
    return f'{metric}_{int(round(ratio * 100)):02d}.pth'


def progress_bar(done: float, width: int = 20) -> str:
    done = min(max(done, 0.0), 1.0)
    filled = int(round(done * width))
    return '[' + '#' * filled + '-' * (width - filled) + f'] {done:4.0%}'


@HOOKS.register_module()
class PruningHook(Hook):
    """Prune ``channels_per_step`` channels every ``interval`` iterations.

    The IFSO schedule: the weights keep training; in every iteration the
    criterion scores ``score_batches`` batches (drawn from a separate
    iterator over the training data, so the training stream is untouched)
    and accumulates; every ``interval`` iterations the globally least
    important channels (score / cost^p) are removed and the accumulator is
    reset. A checkpoint ``flops_{xx}.pth`` is saved whenever the FLOPs ratio
    falls below a threshold, and training stops once ``target_flops`` is
    reached. With ``target_latency`` (and ``selection=dict(latency_table=
    PATH)``) the ratio is the latency predicted by the table instead, and
    the checkpoints are ``latency_{xx}.pth``.

    Args:
        importance (dict): Criterion config, e.g.
            ``dict(type='mmifso.IFSOImportance')``.
        target_flops (float, optional): Final FLOPs ratio in (0, 1); 0.5
            when neither target is set.
        interval (int): Training iterations between pruning steps.
        channels_per_step (int): Channels removed per pruning step.
        score_batches (int): Batches scored per iteration.
        cost (str): ``'acts'``, ``'flops'`` or ``'none'``.
        cost_power (float): Exponent ``p`` of ``score / cost^p``.
        selection (dict, optional): Further knobs of the
            :class:`~mmifso.models.mutators.ChannelSelector`.
        save_thresholds (Sequence[float]): FLOPs ratios at which a checkpoint
            is saved (the target is always included).
        start_iter (int): First iteration that scores.
        stop_at_target (bool): Stop training when the target is reached.
            Epoch-based loops check this between epochs, so the current
            epoch finishes (training with the final masks); the
            ``flops_XX.pth`` checkpoint is saved at the crossing itself.
        scoring_dataloader (dict, optional): Dataloader config for scoring;
            defaults to the runner's ``train_dataloader`` config.
        backend_args (dict, optional): mmengine file backend of the
            ``flops_XX.pth`` checkpoints. Default: ``dict(backend=
            'mmifso_atomic')``, written to a temporary file and renamed, so a
            crash never leaves a partial checkpoint; None: mmengine's default.
        sync_scoring (bool): In a distributed run, average the gradients and
            Hessian-vector products of the criterion over the ranks before
            it combines them (:class:`ScoringContext` ``sync_ranks``), so the
            scores are those of the global batch; False scores each rank's
            batch on its own and averages the per-rank scores.
        check_checkpoint_shapes (bool): Before a checkpoint is loaded
            (``load_from``/resume), raise if it was saved from another
            architecture (mmengine would skip the mismatched tensors with a
            warning); see
            :func:`mmifso.utils.check_checkpoint_fits_model`.

    ``target_latency`` (float, optional, last argument): final predicted
    latency ratio in (0, 1) instead of ``target_flops`` (both: error); needs
    ``selection=dict(latency_table=PATH)``. A latency the structure cannot
    reach (every unit at its floor) stops at the best reachable point with a
    warning.

    ``score_window`` (int, optional, last argument): score only in the last
    ``score_window`` iterations before each pruning step, instead of in all
    ``interval`` of them (None, the default). Scoring is what the pruning
    phase costs (an exact IFSO batch costs about 5-6 training steps on a
    CPU, docs/benchmarks.md), so ``score_window=1, interval=12,
    score_batches=1`` costs about ``1 + 6 / 12 = 1.5`` plain iterations per
    iteration where scoring every iteration costs about 7. The scores then
    come from fewer batches (``score_window x score_batches`` per step),
    all taken from the weights just before the step.

    ``measure_latency`` (bool, last argument, default False): with a latency
    table, also time the exported structure against the unpruned model at
    every saved threshold (the table's input shape, backend and threads, on
    the machine that trains, rank 0, interleaved medians of 10) and log the
    measured next to the predicted latency.

    ``latency_feedback`` (bool | dict, last argument, default None): with
    ``target_latency``, meet the target on the *measured* latency of the
    exported structure on the machine that trains (the table's shape,
    backend and threads, rank 0): pruning stops short of the target, is
    measured, and goes on to a predicted goal corrected by each measurement
    (:class:`~mmifso.models.mutators.latency.LatencyFeedback`; a dict holds
    its ``tol``, ``approach``, ``max_measurements``, ``agree_z``);
    ``latency_{xx}.pth`` of the target is saved when the measured ratio is
    at most the target (each correction aims ``tol / 2`` below it). Train
    on the device you deploy to, or leave it off.

    A pruning step whose scores contain NaN or Inf (a diverging loss, a
    criterion failing numerically) is skipped with a warning: nothing is
    pruned on such scores, and the next step starts from fresh scores.

    **Averaged copies (EMA).** mmengine's ``EMAHook`` (YOLOX, RTMDet) keeps
    a deep copy of the masked model and averages its parameters, and with
    ``update_buffers=True`` its buffers too, the masks included: a removed
    channel's averaged mask would only decay towards 0 and stay alive in the
    copy, which replaces the model for validation and in every checkpoint's
    ``state_dict`` (so export would keep it). The hook therefore copies the
    masks into every averaged copy of the model (a hook's ``ema_model``
    whose ``module`` is the ``PruningAlgorithm``) after every training
    iteration, before validation and testing, and before a checkpoint is
    saved: the averaged model always has exactly the masks of the model.
    """

    priority = 'LOW'

    def __init__(self,
                 importance: dict = dict(type='mmifso.IFSOImportance'),
                 target_flops: Optional[float] = None,
                 interval: int = 10,
                 channels_per_step: int = 1,
                 score_batches: int = 2,
                 cost: str = 'acts',
                 cost_power: float = 0.5,
                 selection: Optional[dict] = None,
                 save_thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 start_iter: int = 0,
                 stop_at_target: bool = True,
                 scoring_dataloader: Optional[dict] = None,
                 backend_args: Optional[dict] = ATOMIC_BACKEND_ARGS,
                 check_checkpoint_shapes: bool = True,
                 sync_scoring: bool = True,
                 target_latency: Optional[float] = None,
                 measure_latency: bool = False,
                 score_window: Optional[int] = None,
                 latency_feedback: Union[bool, dict, None] = None) -> None:
        """Check and store the arguments (see the class docstring).

        Long on purpose: one check per argument, each raising the error that
        names the fix, before any state is set.
        """
        if target_flops is not None and target_latency is not None:
            raise ValueError(
                f'{type(self).__name__}: set target_flops or target_latency, '
                f'not both (got {target_flops!r} and {target_latency!r})')
        #: ``'flops'`` or ``'latency'``: what the target and thresholds
        #: measure (:meth:`ChannelSelector.ratio`).
        self.metric = 'flops' if target_latency is None else 'latency'
        self._what = 'FLOPs' if self.metric == 'flops' else 'latency'
        if target_latency is None:
            target = 0.5 if target_flops is None else target_flops
        else:
            target = target_latency
        target = _check_ratio(
            f'target_{self.metric}', target,
            f'it is the fraction of the {self._what} that remains after '
            'pruning')
        _check_int('interval', interval, 1,
                   'training iterations between two pruning steps')
        _check_int('channels_per_step', channels_per_step, 1,
                   'channels removed per pruning step')
        _check_int('score_batches', score_batches, 0,
                   'batches scored per iteration')
        _check_int('start_iter', start_iter, 0, 'first iteration that scores')
        if score_window is not None:
            _check_int('score_window', score_window, 1,
                       'iterations scored before each pruning step')
            if score_window > interval:
                raise ValueError(
                    f'{type(self).__name__}: score_window={score_window} is '
                    f'longer than interval={interval}; set score_window <= '
                    'interval, or None to score every iteration')
        self.selector = ChannelSelector(
            cost=cost, cost_power=cost_power, **(selection or {}))
        if self.metric == 'latency' and self.selector.latency_table is None:
            raise ValueError(
                f'{type(self).__name__}: target_latency needs selection='
                'dict(latency_table=PATH); build the table with tools/'
                'analysis/latency_table.py CONFIG --shape N C H W --out PATH')
        thresholds = check_save_thresholds(save_thresholds)
        if isinstance(importance, dict):
            unknown = _unknown_criterion(importance)
            if unknown:
                raise KeyError(unknown)
            importance = TASK_UTILS.build(importance)
        self.importance: BaseImportance = importance
        if not isinstance(self.importance, BaseImportance):
            raise TypeError(f'{importance} is not a pruning criterion')
        if self.importance.requires_data and score_batches < 1:
            raise ValueError(f'{type(self.importance).__name__} needs data: '
                             'set score_batches >= 1')
        self.target = target
        self.target_flops = target if self.metric == 'flops' else None
        self.target_latency = target if self.metric == 'latency' else None
        self.interval = interval
        self.channels_per_step = channels_per_step
        self.score_batches = score_batches
        self.score_window = score_window
        self.thresholds = sorted(
            {t
             for t in thresholds if target < t} | {target},
            reverse=True)
        self.start_iter = start_iter
        self.stop_at_target = stop_at_target
        self.scoring_dataloader = scoring_dataloader
        self.backend_args = copy.deepcopy(backend_args)
        self.check_checkpoint_shapes = check_checkpoint_shapes
        self.sync_scoring = sync_scoring
        if measure_latency and self.selector.latency_table is None:
            raise ValueError(
                f'{type(self).__name__}: measure_latency needs selection='
                'dict(latency_table=PATH) (its input shape, backend and '
                'threads are measured)')
        self.measure_latency = measure_latency
        self.feedback = LatencyFeedback.from_option(
            latency_feedback, self.metric, self.target, type(self).__name__)
        self._seed_base = 0
        self.crossed: List[float] = []
        self.done = False
        self._score_iter: Optional[Iterator] = None
        self._consumed = 0  # scoring batches drawn so far
        self._steps = 0
        self._pruned_total = 0
        self._skipped_nonfinite = 0

    # ------------------------------------------------------------------ #
    @staticmethod
    def _algorithm(runner) -> PruningAlgorithm:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        if not isinstance(model, PruningAlgorithm):
            raise TypeError(
                'PruningHook needs model=dict(type="mmifso.PruningAlgorithm", '
                f'architecture=...), got {type(model).__name__}')
        return model

    def before_run(self, runner) -> None:
        # Resuming continues the exact trajectory only with the random state
        # and data position in the checkpoints.
        ensure_exact_resume_hook(runner)

    def before_train(self, runner) -> None:
        algo = self._algorithm(runner)
        self.ctx = ScoringContext(
            algo.architecture, algo.mutator, sync_ranks=self.sync_scoring)
        self.importance.bind_optimizer(runner.optim_wrapper, self.ctx)
        # Per-batch seeds from rank 0's seed: with randomness.diff_rank_seed
        # the runner's seed differs per rank. Every rank then draws the same
        # seed sequence, so no per-rank random state decides anything that
        # is not reduced afterwards.
        seed = torch.tensor([int(runner.seed or 0)], dtype=torch.int64)
        broadcast(seed, src=0)
        self._seed_base = int(seed.item())
        self._log_state(runner, algo, 'start')
        self._sync_averaged_masks(runner)
        # With latency feedback a predicted ratio below the target says
        # nothing yet: the next step measures first (see _goal).
        if self.feedback is None and self._ratio(algo) <= self.target:
            self.done = True
            runner.logger.info(f'[mmifso] the model is already at the '
                               f'{self._what} target; nothing to prune')

    def _build_scoring_loader(self, runner):
        cfg = self.scoring_dataloader or runner.cfg.get('train_dataloader')
        if cfg is None:
            return runner.train_dataloader
        cfg = copy.deepcopy(cfg)
        cfg['persistent_workers'] = False
        try:
            return runner.build_dataloader(cfg, seed=runner.seed)
        except ValueError as e:
            # mmengine's BaseDataset cannot serialise an empty data list.
            if 'need at least one array to concatenate' in str(e):
                raise RuntimeError(EMPTY_LOADER +
                                   ' (its dataset has no samples)') from e
            raise

    def _next_scoring_batch(self, runner) -> dict:
        """Next batch of a separate, resumable pass over the scoring data.

        Position and epoch follow from the number of batches consumed, so a
        resumed run draws exactly the batches an uninterrupted one would.
        """
        if self._score_iter is None:
            # After a resume (batches consumed before) the uninterrupted run
            # built the loader and, unless an epoch starts now, the iterator
            # earlier: doing it here must not draw from the random state.
            resumed = self._consumed > 0
            with preserved_rng_state() if resumed else nullcontext():
                self._loader = self._build_scoring_loader(runner)
            if len(self._loader) == 0:
                raise RuntimeError(
                    EMPTY_LOADER + ' (it yields no batch: fewer samples than '
                    'batch_size with drop_last=True, or an empty dataset)')
            epoch, skip = divmod(self._consumed, len(self._loader))
            with preserved_rng_state() if skip else nullcontext():
                self._score_iter = self._start_epoch(epoch)
                for _ in range(skip):
                    next(self._score_iter)
        try:
            batch = next(self._score_iter)
        except StopIteration:
            self._score_iter = self._start_epoch(
                self._consumed // len(self._loader))
            batch = next(self._score_iter)
        self._consumed += 1
        return batch

    def _start_epoch(self, epoch: int) -> Iterator:
        sampler = getattr(self._loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
        return iter(self._loader)

    def _batch_seed(self, runner) -> int:
        return (self._seed_base * 1000003 + self._consumed) % (2**31 - 1)

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        if self.done or runner.iter < self.start_iter or \
                not self.importance.requires_data or \
                not self.scores_at(runner.iter):
            return
        for _ in range(self.score_batches):
            batch = self._next_scoring_batch(runner)
            self.importance.update(self.ctx, batch, self._batch_seed(runner))

    def scores_at(self, it: int) -> bool:
        """Whether iteration ``it`` (0-based, ``>= start_iter``) scores: it
        lies in the last ``score_window`` iterations before a pruning step
        (every iteration when ``score_window`` is None)."""
        if self.score_window is None:
            return True
        position = (it - self.start_iter) % self.interval  # step at last
        return position >= self.interval - self.score_window

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        self._prune_if_due(runner)
        # Every iteration, not only after a pruning step: an EMA hook may
        # average the masks again after any iteration.
        self._sync_averaged_masks(runner)

    def _prune_if_due(self, runner) -> None:
        """The pruning step of this iteration, if one is due."""
        if self.done or runner.iter < self.start_iter:
            return
        if (runner.iter + 1 - self.start_iter) % self.interval != 0:
            return
        algo = self._algorithm(runner)
        scores = self.importance.compute(self.ctx)
        self.importance.reset()
        goal = self._goal(runner, algo)
        if goal is None:  # met on measured latency before this step
            self._reached(runner, algo)
            return
        step = prune_step(self.ctx, self.importance, self.selector, scores,
                          self.channels_per_step, **self._targets(goal))
        if not self._step_done(runner, step):
            return
        removed = step.removed
        self._steps += 1
        self._pruned_total += len(removed)
        if not removed:
            runner.logger.warning(
                f'[mmifso] no channel could be removed (every unit is at '
                f'its floor: min_channels, max_prune_ratio, round_to); '
                f'stopping pruning at the best reachable {self.metric} ratio '
                f'{self._ratio(algo):.4f} (target {self.target})')
            self.done = True
            self._save_crossed_thresholds(
                runner, algo, force=self.metric == 'latency')
            return
        self._log_state(runner, algo, 'step', removed)
        if self._ratio(algo) <= goal and self._feedback_done(runner, algo):
            self._reached(runner, algo)
        else:
            self._save_crossed_thresholds(runner, algo)

    def _goal(self, runner, algo: PruningAlgorithm) -> Optional[float]:
        """The ratio this step prunes to: the target, or with latency
        feedback its current goal, measured first where the model is
        already there (a resumed run, a pruned ``load_from``); None: the
        target is met on measured latency."""
        if self.feedback is None:
            return self.target
        while self._ratio(algo) <= self.feedback.goal:
            if self._feedback_done(runner, algo):
                return None
        return self.feedback.goal

    def _reached(self, runner, algo: PruningAlgorithm) -> None:
        """The target is met: save its checkpoint, log, stop if asked."""
        self.done = True
        self._save_crossed_thresholds(runner, algo,
                                      force=self.feedback is not None)
        if self.feedback is None or self.feedback.reached:
            runner.logger.info(
                f'[mmifso] reached target {self.metric} {self.target} after '
                f'{self._steps} steps ({self._pruned_total} channels)')
        else:  # measurements spent: the warning above gave the figures
            runner.logger.warning(
                f'[mmifso] stopped pruning above target {self.metric} '
                f'{self.target} after {self._steps} steps '
                f'({self._pruned_total} channels): latency_feedback used its '
                f'{self.feedback.max_measurements} measurements; raise '
                'max_measurements or lower target_latency')
        if self.stop_at_target:
            runner.train_loop.stop_training = True

    def _feedback_done(self, runner, algo: PruningAlgorithm) -> bool:
        """At a goal of ``latency_feedback``: measure the exported structure
        (rank 0, broadcast so every rank decides alike) and move the goal;
        whether the target is met on measured latency. True without
        feedback."""
        if self.feedback is None:
            return True
        measured = [None]
        if is_main_process():
            with preserved_rng_state():
                measured[0] = measure_latency_ratio(
                    algo.architecture, algo.mutator,
                    self.selector.latency_table,
                    rounds=self.feedback.rounds)
        broadcast_object_list(measured, src=0)
        ratio, se = measured[0]['ratio'], measured[0]['ratio_se']
        done = self.feedback.update(self._ratio(algo), ratio, se)
        log = runner.logger.warning if done and not self.feedback.reached \
            else runner.logger.info
        log(f'[mmifso] latency feedback: predicted ratio '
            f'{self._ratio(algo):.4f}, measured {ratio:.4f} +- {se:.4f} '
            f'(target {self.target}); ' + (
                self.feedback.summary() if done else
                f'next goal {self.feedback.goal:.4f}'))
        return done

    def _step_done(self, runner, step: PruneStepResult) -> bool:
        """False (and a warning) if the step was skipped on NaN/Inf scores.
        The scores are all-reduced, so every rank decides alike."""
        bad = step.nonfinite_units
        if not bad:
            return True
        self._skipped_nonfinite += 1
        shown = ', '.join(bad[:3]) + (' ...' if len(bad) > 3 else '')
        runner.logger.warning(
            f'[mmifso] NaN/Inf in the {type(self.importance).__name__} '
            f'scores of {len(bad)} unit(s) ({shown}) at iter '
            f'{runner.iter + 1}: this pruning step is skipped, nothing is '
            f'pruned ({self._skipped_nonfinite} step(s) skipped so far). '
            'Check that the training loss is finite (lower the learning '
            'rate if it diverges) and the criterion\'s damping (lam).')
        return False

    def _save_checkpoint(self, runner, name: str) -> None:
        """Save ``work_dir/name`` (weights and masks, no optimizer) through
        ``backend_args`` (atomic by default)."""
        runner.save_checkpoint(
            runner.work_dir,
            name,
            save_optimizer=False,
            save_param_scheduler=False,
            backend_args=copy.deepcopy(self.backend_args))

    def _ratio(self, algo: PruningAlgorithm) -> float:
        """The ratio the target refers to (FLOPs or predicted latency)."""
        return self.selector.ratio(algo.mutator, self.metric)

    def _targets(self, value: float) -> Dict[str, float]:
        """``target_flops=value`` or ``target_latency=value``."""
        return {f'target_{self.metric}': value}

    def _save_crossed_thresholds(self, runner, algo: PruningAlgorithm,
                                 res: Optional[Dict] = None,
                                 force: bool = False) -> None:
        """Save ``flops_XX.pth`` (``latency_XX.pth``) for every threshold
        newly crossed; ``force``: the final target as well (unreachable
        target, best point reached)."""
        ratio = self._ratio(algo)
        for thr in self.thresholds:
            # With latency feedback the target is met when measured, not
            # when predicted.
            hit = (ratio <= thr and (self.feedback is None
                                     or thr != self.target)) or (
                                         force and thr == self.target)
            if hit and thr not in self.crossed:
                self.crossed.append(thr)
                name = threshold_checkpoint_name(thr, self.metric)
                self._save_checkpoint(runner, name)
                ms = self.selector.predicted_latency_ms(algo.mutator)
                lat = '' if ms is None else (
                    f', predicted latency {ms:.2f} ms (ratio '
                    f'{self.selector.ratio(algo.mutator, "latency"):.4f})')
                if self.measure_latency and is_main_process():
                    lat += self._measured_latency(algo)
                runner.logger.info(
                    f'[mmifso] {self.metric} ratio {ratio:.4f} <= {thr}'
                    f'{" (not reached)" if ratio > thr else ""}: saved '
                    f'{name}; FLOPs ratio '
                    f'{algo.mutator.resources()["flops_ratio"]:.4f}{lat}\n' +
                    self._unit_table(algo))

    def _measured_latency(self, algo: PruningAlgorithm) -> str:
        """Measured latency of the exported structure and of the unpruned
        model, for the log."""
        key = self.selector.latency_table.key
        with preserved_rng_state():
            ms = measure_latency_ratio(algo.architecture, algo.mutator,
                                       self.selector.latency_table)
        here = device_name()
        where = '' if here == key['device'] else (
            f' on {here}, not the table\'s {key["device"]}')
        return (f', measured {ms["pruned_ms"]:.2f} ms / unpruned '
                f'{ms["unpruned_ms"]:.2f} ms = {ms["ratio"]:.4f}'
                f' ({key["backend"]}, input {tuple(key["input_shape"])}, '
                f'{key["threads"]} threads{where})')

    def after_train(self, runner) -> None:
        if self.done:
            return
        algo = self._algorithm(runner)
        ratio = self._ratio(algo)
        nonfinite = (f'; {self._skipped_nonfinite} step(s) were skipped on '
                     'NaN/Inf scores' if self._skipped_nonfinite else '')
        runner.logger.warning(
            f'[mmifso] training ended before the {self._what} target '
            f'{self.target} was reached ({self._what} ratio {ratio:.4f} '
            f'after '
            f'{self._steps} pruning steps{nonfinite}); {self._advice}')

    @property
    def _advice(self) -> str:
        """How to reach the target in time."""
        if type(self) is PruningHook:
            return ('raise max_iters/max_epochs or channels_per_step, or '
                    'lower interval')
        return 'raise max_iters/max_epochs or end the schedule earlier'

    # ------------------------------------------------------------------ #
    def _log_state(self, runner, algo: PruningAlgorithm, when: str,
                   removed: Optional[list] = None) -> None:
        res = algo.mutator.resources()
        # With latency feedback the bar runs to the current predicted goal.
        goal = self.target if self.feedback is None else self.feedback.goal
        span = 1 - goal
        done = (1 - self._ratio(algo)) / span if span > 0 else 1.0
        ms = self.selector.predicted_latency_ms(algo.mutator)
        runner.message_hub.update_scalar('train/flops_ratio',
                                         res['flops_ratio'])
        runner.message_hub.update_scalar('train/params_ratio',
                                         res['params_ratio'])
        runner.visualizer.add_scalars(
            {
                'prune/flops_ratio': res['flops_ratio'],
                'prune/params_ratio': res['params_ratio'],
                'prune/flops': res['flops'],
                'prune/params': res['params'],
                **({} if ms is None else {
                    'prune/latency_ms': ms,
                    'prune/latency_ratio':
                    ms / self.selector.latency_table.full_ms
                }),
                **{
                    f'channels/{u.name}': u.num_alive
                    for u in algo.mutator.units
                }
            },
            step=runner.iter)
        msg = (f'[mmifso] {when} iter {runner.iter + 1}: FLOPs '
               f'{res["flops"] / 1e6:.2f}M ({res["flops_ratio"]:.4f}) | ' +
               ('' if ms is None else
                f'predicted latency {ms:.2f} ms '
                f'({ms / self.selector.latency_table.full_ms:.4f}) | ') +
               f'target {self.target} ({self.metric}'
               f'{"" if goal == self.target else f", goal {goal:.4f}"}) '
               f'{progress_bar(done)} '
               f'| params {res["params"] / 1e6:.3f}M '
               f'({res["params_ratio"]:.4f})')
        if removed:
            units: Dict[str, int] = {}
            for i, _ in removed:
                name = algo.mutator.units[i].name
                units[name] = units.get(name, 0) + 1
            alive = {u.name: u.num_alive for u in algo.mutator.units}
            msg += ' | removed ' + ', '.join(
                f'{n} -{k} ({alive[n]} left)' for n, k in units.items())
        runner.logger.info(msg)

    @staticmethod
    def _unit_table(algo: PruningAlgorithm) -> str:
        rows = [f'  {u.name:<48} {u.num_alive:>5}/{u.num_channels:<5}'
                for u in algo.mutator.units]
        return 'channels per unit:\n' + '\n'.join(rows)

    # ------------------------------------------------------------------ #
    # Averaged copies of the model (EMA): the masks follow the model's.
    def _averaged_models(self, runner) -> List[PruningAlgorithm]:
        """The averaged copies of the pruned model that hooks keep
        (``hook.ema_model.module``, mmengine's ``EMAHook`` and subclasses).
        """
        algo = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        if not isinstance(algo, PruningAlgorithm):
            return []  # before_train reports it
        copies = []
        for hook in runner.hooks:
            module = getattr(getattr(hook, 'ema_model', None), 'module', None)
            if isinstance(module, PruningAlgorithm) and module is not algo:
                names = [u.name for u in module.mutator.units]
                if names != [u.name for u in algo.mutator.units]:
                    raise RuntimeError(
                        f'{type(hook).__name__}.ema_model is not a copy of '
                        'the pruned model: its channel units differ')
                copies.append(module)
        return copies

    @torch.no_grad()
    def _sync_averaged_masks(self, runner) -> bool:
        """Copy the model's masks into its averaged copies.

        Returns:
            bool: Whether the model has averaged copies.
        """
        copies = self._averaged_models(runner)
        if not copies:
            return False
        algo = self._algorithm(runner)
        for copy_ in copies:
            for src, dst in zip(algo.mutator.units, copy_.mutator.units):
                dst.mask.copy_(src.mask.to(dst.mask.device))
        return True

    def before_val_epoch(self, runner) -> None:
        self._sync_averaged_masks(runner)

    def before_test_epoch(self, runner) -> None:
        self._sync_averaged_masks(runner)

    # ------------------------------------------------------------------ #
    # Resume: the schedule's own state travels in the checkpoint.
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self._sync_averaged_checkpoint_masks(runner, checkpoint)
        checkpoint.setdefault('meta', {})['mmifso_pruning_hook'] = dict(
            crossed=list(self.crossed),
            done=self.done,
            steps=self._steps,
            pruned_total=self._pruned_total,
            consumed=self._consumed,
            skipped_nonfinite=self._skipped_nonfinite,
            importance=self.importance.state_dict(),
            feedback=None if self.feedback is None else
            self.feedback.state_dict())

    def _sync_averaged_checkpoint_masks(self, runner,
                                        checkpoint: dict) -> None:
        """The model's masks in the averaged copies and in both state dicts
        of ``checkpoint``: EMAHook may already have put its copy's tensors
        into ``state_dict`` (and ``ema_state_dict``) when this hook runs."""
        if not self._sync_averaged_masks(runner):
            return
        masks = {
            f'{MUTATOR_KEY}{i}.mask': u.mask
            for i, u in enumerate(self._algorithm(runner).mutator.units)
        }
        for field, prefix in (('state_dict', ''), ('ema_state_dict',
                                                     'module.')):
            state = checkpoint.get(field)
            if not isinstance(state, dict):
                continue
            for key, mask in masks.items():
                old = state.get(prefix + key)
                if isinstance(old, torch.Tensor):
                    state[prefix + key] = mask.detach().clone().to(
                        old.device)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.check_checkpoint_shapes:
            self._check_checkpoint_shapes(runner, checkpoint)
        state = checkpoint.get('meta', {}).get('mmifso_pruning_hook')
        if not state:
            return
        self.crossed = list(state['crossed'])
        self.done = state['done']
        self._steps = state['steps']
        self._pruned_total = state['pruned_total']
        self._consumed = state.get('consumed', 0)
        self._skipped_nonfinite = state.get('skipped_nonfinite', 0)
        if self.feedback is not None and state.get('feedback'):
            self.feedback.load_state_dict(state['feedback'])
        self._score_iter = None
        self.importance.load_state_dict(state['importance'])
        print_log(
            f'[mmifso] resumed pruning state: {self._steps} steps, '
            f'thresholds crossed {self.crossed}',
            logger='current',
            level=logging.INFO)

    def _check_checkpoint_shapes(self, runner, checkpoint: dict) -> None:
        """Called before mmengine loads ``checkpoint`` (strict=False)."""
        algo = self._algorithm(runner)
        path = runner.cfg.get('load_from', None)
        tolerated = check_checkpoint_fits_model(
            algo, checkpoint, path if isinstance(path, str) else None,
            runner.cfg.get('model', None))
        if tolerated:
            runner.logger.warning(
                f'[mmifso] {len(tolerated)} head tensors of the checkpoint '
                'have other shapes than the model and are not loaded (e.g. '
                f'{tolerated[0][0]}: {list(tolerated[0][1])} vs '
                f'{list(tolerated[0][2])}); fine for a new classifier, '
                'otherwise use the config the checkpoint was trained with')
