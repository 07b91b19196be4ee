"""Build mmengine's Runner the way mmifso's tools do.

``tools/train.py`` and ``tools/test.py`` (and any script that wants their
guarantees) call :func:`build_runner` on the merged config. It

1. trusts checkpoints completely only when asked (``trust_checkpoint``, the
   tools' ``--trust-checkpoint``), and otherwise makes the Runner's own
   loads (``load_from``, ``resume``) go through mmifso's restricted
   unpickler;
2. checks the checkpoint the Runner is about to load against the config
   (a masked, exported or plain checkpoint used with the wrong kind of
   config stops with what to use instead, where mmengine would only warn and
   train or test random layers);
3. prepares a distributed launch on a machine without GPUs (gloo and a
   CPU-capable DDP wrapper);
4. builds the Runner (``runner_type`` of the config when given).
"""
import argparse
import contextlib
import os
import os.path as osp
from typing import Dict, Iterator, Optional, Tuple, Type

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner, find_latest_checkpoint

from mmifso.engine import setup_distributed
from mmifso.engine.hooks.pruning_hook import threshold_checkpoint_name
from mmifso.models.importance import registered_criteria
from mmifso.utils.io import (TRUST_CHECKPOINT_HELP, TRUST_ENV,
                             install_safe_checkpoint_loader)
from mmifso.utils.options import add_cfg_options, merge_cfg_options
from .checks import CheckpointConfigMismatch, check_checkpoint_matches_config


class RunnerSetupError(RuntimeError):
    """The checkpoint a Runner would load does not fit its config, is
    missing or cannot be read; the message names the cause (its type first)
    and what to do."""


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options every Runner tool shares to ``parser``.

    ``--cfg-options`` (mmengine's ``key=value`` overrides; an item without
    ``=`` is a usage error, see :func:`~mmifso.utils.add_cfg_options`),
    ``--launcher``, ``--trust-checkpoint`` and ``--local-rank`` (passed by
    ``torch.distributed.launch``; see :func:`set_local_rank`).

    Args:
        parser (argparse.ArgumentParser): The tool's parser.
    """
    add_cfg_options(parser)
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument(
        '--trust-checkpoint', action='store_true', help=TRUST_CHECKPOINT_HELP)
    # With PyTorch >= 2.0, `torch.distributed.launch` passes `--local-rank`
    # (older versions `--local_rank`).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def set_local_rank(args: argparse.Namespace) -> None:
    """Export ``--local-rank`` as ``LOCAL_RANK`` unless the launcher did.

    Args:
        args (argparse.Namespace): Parsed by a parser given
            :func:`add_runner_arguments`.
    """
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """A tool's config: a file, or ``pkg::rel/path.py`` of an installed
    OpenMMLab package (its ``.mim/configs``), with the ``--cfg-options``
    overrides merged.

    Args:
        path (str): A file, or ``mmdet::...`` / ``mmpretrain::...``.
        cfg_options (dict, optional): ``key=value`` overrides (mmengine's
            ``DictAction``), merged by :func:`~mmifso.utils.merge_cfg_options`
            (an override of a variable substituted at parse time is an
            error).

    Returns:
        Config: The loaded config.

    Raises:
        FileNotFoundError: the package has no such config.
        ParseTimeVariableError: an override that would change nothing.
    """
    if '::' in path:
        from mmengine.utils import get_installed_path
        package, rel = path.split('::', 1)
        full = osp.join(get_installed_path(package), '.mim', 'configs', rel)
        if not osp.isfile(full):
            raise FileNotFoundError(f'{path}: no such config ({full})')
        path = full
    cfg = Config.fromfile(path)
    merge_cfg_options(cfg, cfg_options)
    return cfg


def default_work_dir(cfg: Config, work_dir: Optional[str],
                     config_path: str) -> None:
    """Set ``cfg.work_dir``: ``work_dir`` (the command line) first, then the
    config's own, then ``./work_dirs/<config name>``.

    Args:
        cfg (Config): The config, changed in place.
        work_dir (str, optional): ``--work-dir`` of the tool.
        config_path (str): The config file.
    """
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def checkpoint_to_load(cfg: Config) -> Optional[str]:
    """The checkpoint the Runner built from ``cfg`` will load, if any.

    Args:
        cfg (Config): A merged config (``resume``, ``load_from`` and
            ``work_dir`` already final).

    Returns:
        str | None: ``load_from``; when resuming without one, the latest
        checkpoint in ``work_dir`` (None if there is none yet).
    """
    if cfg.get('resume', False) and not cfg.get('load_from', None):
        work_dir = cfg.get('work_dir', None)
        return find_latest_checkpoint(work_dir) if work_dir and osp.isdir(
            work_dir) else None
    return cfg.get('load_from', None)


def build_runner(cfg: Config, trust_checkpoint: bool = False) -> Runner:
    """Check the checkpoint of ``cfg``, then build its Runner.

    Args:
        cfg (Config): The merged config (command-line options applied).
        trust_checkpoint (bool): Unpickle checkpoints completely (they may
            then run code they contain): only for trusted files holding
            custom classes. Sets ``MMIFSO_TRUST_CHECKPOINTS=1`` for this
            process. Default: False (an allow-list of types).

    Returns:
        Runner: ``Runner.from_cfg(cfg)``, or the config's ``runner_type``.

    Raises:
        RunnerSetupError: the checkpoint does not fit the config, does not
            exist or cannot be read (nothing has been built then).
    """
    if trust_checkpoint:
        os.environ[TRUST_ENV] = '1'
    install_safe_checkpoint_loader()
    checkpoint = checkpoint_to_load(cfg)
    if checkpoint:
        try:
            check_checkpoint_matches_config(cfg, checkpoint)
        except (CheckpointConfigMismatch, FileNotFoundError,
                RuntimeError) as e:
            raise RunnerSetupError(f'{type(e).__name__}: {e}') from e
    setup_distributed(cfg)  # torchrun on CPUs: gloo + CPU-capable DDP
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def run_config(cfg: Config,
               work_dir: str,
               train: bool = True) -> Tuple[Runner, Dict]:
    """Train (optionally) and test ``cfg`` with mmengine's Runner.

    What ``tools/train.py`` then ``tools/test.py`` do, in one process, for
    scripts that chain stages (the demos). The config is copied, not
    changed.

    Args:
        cfg (Config): The config (``load_from`` set where needed).
        work_dir (str): The run's work directory.
        train (bool): Train first. Default: True.

    Returns:
        tuple[Runner, dict]: The runner (its model trained) and the test
        metrics.
    """
    cfg = cfg.copy()
    cfg.work_dir = work_dir
    cfg.default_hooks.setdefault('logger', dict(type='LoggerHook'))
    runner = Runner.from_cfg(cfg)
    if train:
        runner.train()
    return runner, runner.test()


def pruning_hook_index(cfg: Config) -> int:
    """Index of the one pruning hook in ``cfg.custom_hooks``.

    Args:
        cfg (Config): A prune config.

    Returns:
        int: The index, so that dotted overrides
        (``custom_hooks.{i}.score_window``) and in-place edits reach it.

    Raises:
        ValueError: the config has no pruning hook, or several.
    """
    hooks = [i for i, h in enumerate(cfg.get('custom_hooks', None) or [])
             if str(h.get('type', '')).endswith('PruningHook')]
    if len(hooks) != 1:
        raise ValueError(f'{cfg.filename}: expected one PruningHook in '
                         f'custom_hooks, found {len(hooks)}')
    return hooks[0]


def flops_checkpoint(work_dir: str, flops_ratio: float) -> str:
    """The ``flops_XX.pth`` a pruning run saved at ``flops_ratio``.

    Args:
        work_dir (str): The pruning run's work directory.
        flops_ratio (float): A target or threshold of its ``PruningHook``.

    Returns:
        str: The path (``flops_50.pth`` for 0.5, as the hook names it).

    Raises:
        FileNotFoundError: the run did not reach ``flops_ratio``.
    """
    path = osp.join(work_dir, threshold_checkpoint_name(flops_ratio))
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'the pruning run did not reach FLOPs ratio {flops_ratio}: '
            f'{path} is missing (see the log in {work_dir})')
    return path


def build_tool_runner(cfg: Config, args: argparse.Namespace,
                      tool: str) -> Runner:
    """:func:`build_runner` for a command-line tool: a checkpoint that does
    not fit the config ends the process with ``'<tool>: <what to do>'``
    (exit status 1, no traceback).

    Args:
        cfg (Config): The merged config.
        args (argparse.Namespace): Parsed with :func:`add_runner_arguments`
            (``trust_checkpoint`` is read).
        tool (str): The tool's name in the message (``tools/train.py``).

    Returns:
        Runner: The runner.
    """
    try:
        return build_runner(cfg, trust_checkpoint=args.trust_checkpoint)
    except RunnerSetupError as e:
        raise SystemExit(f'{tool}: {e}') from e


@contextlib.contextmanager
def exit_on_errors(tool: str,
                   *errors: Type[BaseException]) -> Iterator[None]:
    """End a command-line tool with ``'<tool>: <Error>: <message>'`` (exit
    status 1, no traceback) when the block raises one of ``errors``.

    For the errors whose messages say what to do (a missing file, a
    checkpoint that does not fit, an export that fails its check); any other
    exception keeps its traceback.

    Args:
        tool (str): The tool's name in the message
            (``tools/export_pruned.py``).
        *errors (type): The exception types to turn into the message.
    """
    try:
        yield
    except errors as e:
        raise SystemExit(f'{tool}: {type(e).__name__}: {e}') from e


def add_pruning_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--criterion`` and ``--target-flops`` to a pipeline tool's
    parser, checked when parsed (before any training starts).

    ``--criterion``: the importance type of the pruning hook (default
    ``mmifso.IFSOImportance``), a registered criterion; ``--target-flops``:
    the FLOPs ratio to reach, in (0, 1) (default 0.5).

    Args:
        parser (argparse.ArgumentParser): The tool's parser.
    """
    parser.add_argument(
        '--criterion',
        type=_criterion,
        default='mmifso.IFSOImportance',
        help='importance type for the pruning hook')
    parser.add_argument(
        '--target-flops',
        type=_flops_ratio,
        default=0.5,
        help='FLOPs ratio')


def _criterion(name: str) -> str:
    """``name`` if it is a registered criterion (with or without scope)."""
    criteria = registered_criteria()
    if name.split('.')[-1] not in criteria:
        raise argparse.ArgumentTypeError(
            f'{name!r} is not a registered criterion: {", ".join(criteria)}')
    return name


def _flops_ratio(value: str) -> float:
    """``value`` as a float in (0, 1)."""
    ratio = float(value)
    if not 0 < ratio < 1:
        raise argparse.ArgumentTypeError(f'must be in (0, 1), got {ratio}')
    return ratio
