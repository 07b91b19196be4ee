"""Exact resume: the random state and data position travel in checkpoints.

mmengine's ``resume`` restores weights, optimizer, schedulers and the
iteration counter, but not the random number generators: the Runner seeds
them once at start, and the ``IterBasedTrainLoop`` then skips the trained
iterations by loading (and augmenting) their batches again, which draws from
the generators in another order than the interrupted run did. Random data
augmentation (``RandomCrop``, ``RandomFlip``, ... draw from the global
``numpy``/``random`` generators of the process that loads the data) then
differs after a resume, and so does everything after it. The
``EpochBasedTrainLoop`` restarts an interrupted epoch from its first batch.

:class:`ExactResumeHook` saves the Python, numpy, torch (and CUDA) random
states of every rank in ``meta['mmifso_resume']`` of each checkpoint and, on
resume, puts them back after the data position has been restored, right
before the next batch is loaded:

* ``IterBasedTrainLoop``: mmengine's skip of the trained batches runs as
  before (through the dataloader workers, so their random state advances as
  in the interrupted run), then the random state is restored;
* ``EpochBasedTrainLoop``: the batches of the interrupted epoch that were
  already trained are skipped (loaded and dropped) instead of trained again;
  with ``persistent_workers`` the previous epochs are loaded once more so the
  workers' random state advances as it did;
* validation during training leaves the random state as it found it, so a
  run resumed after an iteration with validation draws what the
  uninterrupted run draws.

Whatever cannot be restored is named in a WARNING when the resumed run
starts.
"""
import contextlib
import logging
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from mmifso.registry import HOOKS

#: Key of the hook's state in ``checkpoint['meta']``.
RESUME_STATE_KEY = 'mmifso_resume'
RESUME_STATE_VERSION = 1


def get_rng_state() -> Dict[str, Any]:
    """The random states of this process (Python, numpy, torch, CUDA).

    Returns:
        dict: Plain Python values and tensors (numpy's key as an int64
        tensor), so the state unpickles with mmifso's restricted loader.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=(kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
               int(has_gauss), float(cached)),
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore a state returned by :func:`get_rng_state`.

    Args:
        state (dict): Output of :func:`get_rng_state`.
    """
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state(
        (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block without changing the process's random state.

    For work that a resumed run does but the interrupted one did not (or did
    at another time), e.g. re-positioning a data iterator.
    """
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _set_sampler_epoch(loader, epoch: int) -> None:
    for sampler in (getattr(loader, 'sampler', None),
                    getattr(getattr(loader, 'batch_sampler', None), 'sampler',
                            None)):
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
            return


class _RestoreAfterSkip:
    """Stand-in for ``IterBasedTrainLoop.dataloader_iterator``: passes the
    loop's ``skip`` batches through, then calls ``restore`` and puts the
    loop's own iterator back before the first batch that is trained."""

    def __init__(self, loop, skip: int, restore: Callable[[], None]) -> None:
        self._loop = loop
        self._inner = loop.dataloader_iterator
        self._skip = skip
        self._restore = restore

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip > 0:
            self._skip -= 1
            return next(self._inner)
        self._loop.dataloader_iterator = self._inner
        self._restore()
        return next(self._inner)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class _ResumedEpoch:
    """Stand-in for ``EpochBasedTrainLoop.dataloader`` during the first
    resumed epoch: replays ``replay`` earlier epochs (persistent workers),
    drops the ``skip`` batches already trained, restores the random state
    and yields the rest of the epoch; the loop's dataloader is put back when
    the epoch starts."""

    def __init__(self, loop, epoch: int, skip: int, replay: int,
                 restore: Callable[[], None]) -> None:
        self._loop = loop
        self._loader = loop.dataloader
        self._epoch = epoch
        self._skip = skip
        self._replay = replay
        self._restore = restore

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def __iter__(self):
        loader = self._loader
        self._loop.dataloader = loader
        for epoch in range(self._epoch - self._replay, self._epoch):
            _set_sampler_epoch(loader, epoch)
            for _ in loader:
                pass
        _set_sampler_epoch(loader, self._epoch)
        if self._skip == 0:
            self._restore()  # the iterator of a new epoch is made after it
            yield from loader
            return
        batches = iter(loader)
        for _ in range(self._skip):
            next(batches)
        self._restore()
        yield from batches


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Make ``--resume`` continue the exact trajectory of the interrupted run.

    Saves every rank's random state with each checkpoint and restores it on
    resume once the data position is restored (see the module docstring).
    The :class:`~mmifso.PruningHook` adds this hook when a config does not
    have it; other runs (fine-tuning) add it to ``custom_hooks``::

        custom_hooks = [dict(type='mmifso.ExactResumeHook')]

    A resumed run logs a WARNING naming what it cannot restore: a checkpoint
    without the saved state (written without this hook), another number of
    processes, a loop other than mmengine's iteration- and epoch-based
    training loops, a rank whose state is missing, or (with
    ``replay_persistent_workers=False``) persistent dataloader workers.

    Args:
        replay_persistent_workers (bool): In an epoch-based loop whose
            training dataloader keeps its workers (``persistent_workers``
            with ``num_workers > 0``), load the epochs before the resumed one
            again (and drop them) so the workers' random state (data
            augmentation) is the interrupted run's. It costs one pass of
            data loading per earlier epoch. False: skip that and warn.
        neutral_validation (bool): Validation during training restores the
            random state it found (so it does not shift the training
            stream). Without it a run resumed from an iteration followed by
            validation is not exact.
    """

    # After the hooks at 'LOW' (the PruningHook's step), before the
    # checkpoint hook ('VERY_LOW' = 90): every rank's state is gathered at
    # the point where the checkpoint is written.
    priority = 85

    def __init__(self,
                 replay_persistent_workers: bool = True,
                 neutral_validation: bool = True) -> None:
        self.replay_persistent_workers = replay_persistent_workers
        self.neutral_validation = neutral_validation
        self._gathered: Optional[Tuple[Tuple[int, int], List[dict]]] = None
        self._loaded: Optional[dict] = None
        self._val_state: Optional[dict] = None

    # ------------------------------------------------------------------ #
    # Saving
    def _gather(self, runner) -> None:
        """All ranks' states at this point (collective; every rank)."""
        if get_dist_info()[1] > 1:
            self._gathered = ((runner.epoch, runner.iter),
                              all_gather_object(get_rng_state()))

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        self._gather(runner)

    def after_train_epoch(self, runner) -> None:
        self._gather(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # Called on rank 0 only (mmengine's save_checkpoint is master_only).
        world = get_dist_info()[1]
        if world == 1:
            states: List[Optional[dict]] = [get_rng_state()]
        elif self._gathered is not None and self._gathered[0] == (
                runner.epoch, runner.iter):
            states = list(self._gathered[1])
        else:
            # Written before this hook gathered the ranks' states at this
            # point (e.g. flops_XX.pth inside the pruning step).
            states = [get_rng_state()] + [None] * (world - 1)
        loader = runner.train_dataloader
        checkpoint.setdefault('meta', {})[RESUME_STATE_KEY] = dict(
            version=RESUME_STATE_VERSION,
            world_size=world,
            rng=states,
            loop=type(runner.train_loop).__name__,
            batches_per_epoch=len(loader),
            num_workers=int(getattr(loader, 'num_workers', 0)))

    # ------------------------------------------------------------------ #
    # Validation does not move the training stream
    def before_val(self, runner) -> None:
        if self.neutral_validation:
            self._val_state = get_rng_state()

    def after_val(self, runner) -> None:
        if self._val_state is not None:
            set_rng_state(self._val_state)
            self._val_state = None

    # ------------------------------------------------------------------ #
    # Resuming
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get('meta', {})
        self._loaded = dict(
            state=meta.get(RESUME_STATE_KEY),
            iter=meta.get('iter'),
            epoch=meta.get('epoch'))

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        loaded, self._loaded = self._loaded, None
        if loop.iter == 0:
            return  # a new run (load_from only sets the weights)
        if not loaded or loaded['iter'] != loop.iter:
            self._warn(runner, 'the checkpoint it resumes from was not '
                       'loaded through this hook, so its random state is not '
                       'known')
            return
        state = loaded['state']
        if not state:
            self._warn(
                runner, 'the checkpoint holds no random state (it was saved '
                'by a run without mmifso.ExactResumeHook or by mmifso < '
                'the exact-resume fix): data augmentation and every other '
                'random draw restart from the seed')
            return
        rank, world = get_dist_info()
        if state['world_size'] != world:
            self._warn(
                runner, f'the checkpoint was saved by {state["world_size"]} '
                f'process(es), this run has {world}: the per-rank random '
                'states and data shards differ')
            return
        rng = state['rng'][rank]
        if rng is None:
            self._warn(
                runner, f'rank {rank}\'s random state is not in this '
                'checkpoint (it was written before the ranks\' states were '
                'gathered, e.g. a flops_XX.pth checkpoint)')
            return
        loader = loop.dataloader
        if state['batches_per_epoch'] != len(loader):
            self._warn(
                runner, f'the training dataloader has {len(loader)} batches '
                f'per epoch, the checkpoint\'s run had '
                f'{state["batches_per_epoch"]}: the data position differs')

        def restore() -> None:
            self.restore_rng_state(rng)
            runner.logger.info(
                f'[mmifso] exact resume: random state of iteration '
                f'{loop.iter} restored (rank {rank})')

        if isinstance(loop, IterBasedTrainLoop):
            # mmengine skips the trained batches after before_train.
            loop.dataloader_iterator = _RestoreAfterSkip(
                loop, loop.iter, restore)
        elif isinstance(loop, EpochBasedTrainLoop):
            self._resume_epoch(runner, loop, state, restore)
        else:
            self._warn(
                runner, f'the training loop {type(loop).__name__} is not '
                'mmengine\'s IterBasedTrainLoop or EpochBasedTrainLoop: the '
                'random state is restored at the start, the data position '
                'is what the loop makes of it')
            restore()

    def _resume_epoch(self, runner, loop, state: dict,
                      restore: Callable[[], None]) -> None:
        loader = loop.dataloader
        skip = loop.iter - loop.epoch * len(loader)
        if not 0 <= skip <= len(loader):
            self._warn(
                runner, f'iteration {loop.iter} is not in epoch {loop.epoch} '
                f'of {len(loader)} batches (epochs of another length?): the '
                'interrupted epoch is trained from its start')
            skip = 0
        replay = 0
        persistent = bool(getattr(loader, 'persistent_workers', False)) and \
            getattr(loader, 'num_workers', 0) > 0
        if persistent and loop.epoch > 0:
            if self.replay_persistent_workers:
                replay = loop.epoch
                runner.logger.info(
                    f'[mmifso] exact resume: loading {replay} earlier '
                    'epoch(s) of training data again so the persistent '
                    'dataloader workers\' random state is the interrupted '
                    'run\'s')
            else:
                self._warn(
                    runner, 'the training dataloader keeps its workers '
                    '(persistent_workers) and replay_persistent_workers is '
                    'False: the workers\' random state (data augmentation) '
                    'restarts from the seed')
        if skip:
            runner.logger.info(
                f'[mmifso] exact resume: skipping the {skip} batch(es) of '
                f'epoch {loop.epoch + 1} trained before the checkpoint')
        loop.dataloader = _ResumedEpoch(loop, loop.epoch, skip, replay,
                                        restore)

    def restore_rng_state(self, state: Dict[str, Any]) -> None:
        """Put back a saved random state (:func:`set_rng_state`).

        Args:
            state (dict): This rank's state from the checkpoint.
        """
        set_rng_state(state)

    @staticmethod
    def _warn(runner, why: str) -> None:
        runner.logger.warning(
            f'[mmifso] resume is not exact: {why}. The resumed run may '
            'diverge from the uninterrupted one.')


def has_exact_resume_hook(runner) -> bool:
    """Whether ``runner`` has an :class:`ExactResumeHook`."""
    return any(isinstance(h, ExactResumeHook) for h in runner.hooks)


def ensure_exact_resume_hook(runner) -> Optional[ExactResumeHook]:
    """Register an :class:`ExactResumeHook` unless ``runner`` has one.

    Args:
        runner (Runner): The runner.

    Returns:
        ExactResumeHook or None: The hook added, or None if there was one.
    """
    if has_exact_resume_hook(runner):
        return None
    hook = ExactResumeHook()
    runner.register_hook(hook)
    print_log(
        '[mmifso] added mmifso.ExactResumeHook (random state and data '
        'position in checkpoints, for an exact --resume)',
        logger='current',
        level=logging.INFO)
    return hook
