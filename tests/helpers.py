"""Builders shared by the tests (real mmpretrain models and data)."""
import contextlib
import copy
import faulthandler
import importlib.util
import logging
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import time
from types import ModuleType
from typing import Callable, Iterator, List, Sequence, Tuple

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmifso  # noqa: F401
from mmifso.models.importance import registered_criteria
from mmifso.registry import TASK_UTILS

#: The repository root (``tools/``, ``configs/``).
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: The demo's baseline config: ResNet-20 on 32 x 32 digits.
DEMO_BASELINE = osp.join(ROOT, 'configs', 'demo',
                         'resnet20_1xb64-30e_digits.py')


def _toy_demo_classifier() -> dict:
    """The classifier of :data:`DEMO_BASELINE` at toy size (ResNet-8 with 4
    base channels), the config's data preprocessor inside it (where the
    Runner puts it), so that a model built alone normalises alike."""
    demo = Config.fromfile(DEMO_BASELINE)
    model = demo.model.to_dict()
    model['backbone'].update(depth=8, base_channels=4)
    model['head'].update(in_channels=16)
    model['data_preprocessor'] = dict(
        type='ClsDataPreprocessor', **demo.data_preprocessor.to_dict())
    return model


TINY_CLASSIFIER = _toy_demo_classifier()
#: The mutator of a 16 x 16 demo input.
MUTATOR16 = dict(
    type='mmifso.ChannelMutator',
    demo_input=dict(type='mmifso.DemoInput', input_shape=(1, 3, 16, 16)))
#: Another architecture than TINY_CLASSIFIER (wider stem).
OTHER_ARCH = dict(
    copy.deepcopy(TINY_CLASSIFIER),
    backbone=dict(type='mmifso.CifarResNet', depth=8, base_channels=6),
    head=dict(TINY_CLASSIFIER['head'], in_channels=24))
#: The error of a checkpoint of OTHER_ARCH loaded into TINY_CLASSIFIER.
OTHER_ARCH_MSG = (
    r'checkpoint .*flops_70.pth was saved from another architecture: \d+ '
    r'tensors have other shapes than in the model built from the config '
    r'\(architecture\..*checkpoint \[6, .* vs model \[4, .*The run that saved '
    r'it built model=PruningAlgorithm\(architecture=ImageClassifier\(backbone='
    r"CifarResNet\(depth=8, base_channels=6\).*this config builds model="
    r'PruningAlgorithm\(architecture=ImageClassifier\(backbone=CifarResNet\('
    r'depth=8, base_channels=4\).*Use the config of the run that saved the '
    r'checkpoint \(next to it: .*prune_other.py\)')


#: Input shape and fast settings of the tiny classifier's latency tables
#: (the ``table_path`` fixture).
LATENCY_SHAPE = (2, 3, 16, 16)
LATENCY_FAST = dict(rounds=1, whole_rounds=1, warmup=0, min_sample_s=0.0,
                    log=lambda msg: None)


def build_algorithm(arch=None, input_shape=(1, 3, 32, 32), **mutator_kw):
    init_default_scope('mmpretrain')
    from mmifso.registry import MODELS
    return MODELS.build(
        dict(
            type='mmifso.PruningAlgorithm',
            architecture=copy.deepcopy(arch or TINY_CLASSIFIER),
            mutator=dict(
                type='mmifso.ChannelMutator',
                demo_input=dict(
                    type='mmifso.DemoInput', input_shape=input_shape),
                **mutator_kw)))


def digits_batch(n=32, seed=0, size=32):
    init_default_scope('mmpretrain')  # PackInputs is mmpretrain's
    from mmpretrain.structures import DataSample
    from mmifso.datasets import DigitsDataset
    ds = DigitsDataset(split='train', image_size=size, pipeline=[
        dict(type='PackInputs')
    ])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].tolist()
    items = [ds[i] for i in idx]
    return dict(
        inputs=[it['inputs'] for it in items],
        data_samples=[it['data_samples'] for it in items])


def random_prune(mutator, fraction=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for unit in mutator.units:
        k = min(int(unit.num_channels * fraction),
                unit.num_channels - unit.min_channels)
        if k > 0:
            unit.prune(
                torch.randperm(unit.num_channels, generator=g)[:k].tolist())


def digits_loader(split: str, batch_size: int, **dataset_kw) -> dict:
    """A dataloader config of the 16 x 16 digits ``split`` (no augmentation;
    shuffled for ``'train'``).

    Args:
        split (str): ``'train'`` or ``'test'``.
        batch_size (int): Samples per batch.
        **dataset_kw: More ``DigitsDataset`` arguments (``indices``).

    Returns:
        dict: The ``*_dataloader`` entry.
    """
    return dict(
        batch_size=batch_size,
        num_workers=0,
        dataset=dict(
            type='mmifso.DigitsDataset',
            split=split,
            image_size=16,
            pipeline=[dict(type='PackInputs')],
            **dataset_kw),
        sampler=dict(type='DefaultSampler', shuffle=split == 'train'))


def runner_cfg(work_dir, target=0.7, max_iters=30, criterion=None):
    return Config(
        dict(
            default_scope='mmpretrain',
            custom_imports=dict(imports=['mmifso'], allow_failed_imports=False),
            work_dir=str(work_dir),
            # mmengine names the logger after the experiment (the timestamp
            # for a config without a file): two Runners built in the same
            # second would share a logger and write into the first one's
            # log file.
            experiment_name=f'pruning_hook_{osp.basename(str(work_dir))}',
            model=dict(
                type='mmifso.PruningAlgorithm',
                architecture=TINY_CLASSIFIER,
                mutator=MUTATOR16),
            train_dataloader=digits_loader('train', 16, indices=128),
            optim_wrapper=dict(
                optimizer=dict(
                    type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4)),
            train_cfg=dict(by_epoch=False, max_iters=max_iters),
            default_hooks=dict(
                logger=dict(type='LoggerHook', interval=5),
                checkpoint=dict(type='CheckpointHook', interval=1000)),
            custom_hooks=[
                dict(
                    type='mmifso.PruningHook',
                    importance=criterion or dict(type='mmifso.IFSOImportance'),
                    target_flops=target,
                    interval=2,
                    channels_per_step=3,
                    score_batches=1,
                    save_thresholds=(0.9, 0.8))
            ],
            log_level='INFO',
            randomness=dict(seed=0)))


def criterion_examples() -> List[Tuple[str, dict]]:
    """``(id, config)`` of every ``example_kwargs`` entry of every criterion
    mmifso registers (criteria that tests register are left out), so tests
    parametrised with it cover a new criterion without a list to edit."""
    examples = []
    for name in registered_criteria():
        cls = TASK_UTILS.get(name)
        if not cls.__module__.startswith('mmifso.'):
            continue
        for kwargs in cls.example_kwargs:
            args = ','.join(f'{k}={v}' for k, v in kwargs.items())
            examples.append((f'{name}({args})',
                             dict(type=f'mmifso.{name}', **kwargs)))
    return examples


@contextlib.contextmanager
def messages_logged(level: int = logging.WARNING):
    """Collect the messages logged at ``level`` or above through mmengine's
    current logger (``print_log(..., logger='current')``) in the block."""
    from mmengine.logging import MMLogger
    messages: List[str] = []

    class _Handler(logging.Handler):

        def emit(self, record):
            messages.append(record.getMessage())

    logger = MMLogger.get_current_instance()
    handler = _Handler(level)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def warnings_logged():
    """:func:`messages_logged` at WARNING or above."""
    return messages_logged(logging.WARNING)


def prepared_mutator(model, input_shape=(1, 3, 8, 8)):
    """A ``ChannelMutator`` prepared on ``model`` (analysed with a
    ``DemoInput`` of ``input_shape``), for the hand-made test blocks."""
    from mmifso.models.mutators import ChannelMutator
    from mmifso.models.task_modules import DemoInput
    mutator = ChannelMutator(demo_input=DemoInput(input_shape))
    mutator.prepare_from_supernet(model)
    return mutator


def randomise_norms(model, seed: int = 0) -> None:
    """Random affine parameters (BN, GN, LayerNorm) and running statistics
    (BN) from ``seed``, so that channels differ and export checks can
    fail."""
    g = torch.Generator().manual_seed(seed)
    norms = (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, norms):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.3, 0.3, generator=g)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


def export_trials(build: Callable[[], torch.nn.Module],
                  trials: int) -> Iterator[tuple]:
    """Seeded trials of a masked-equals-exported check on a hand-made block.

    Trial ``t`` seeds torch with ``t``, builds the model, prepares a mutator
    on it (:func:`prepared_mutator`), then randomises its norms
    (:func:`randomise_norms` with seed ``t``) and sets it to eval mode.

    Args:
        build (callable): Builds a fresh model.
        trials (int): How many trials.

    Yields:
        tuple: ``(model, mutator, units, g)``: the model, its mutator, the
        mutator's units by name and a ``torch.Generator`` seeded with
        ``100 + t`` for the random pruning and input.
    """
    for trial in range(trials):
        torch.manual_seed(trial)
        model = build()
        mutator = prepared_mutator(model)
        randomise_norms(model, trial)
        model.eval()
        yield (model, mutator, {u.name: u for u in mutator.units},
               torch.Generator().manual_seed(100 + trial))


def prune_at_random(unit, g: torch.Generator) -> None:
    """Prune a random number (none up to all but one) of random channels
    of ``unit``, drawn from ``g``."""
    n = unit.num_channels
    drop = torch.randperm(n, generator=g)[:int(
        torch.randint(0, n, (1, ), generator=g))].tolist()
    if drop:
        unit.prune(drop)


def assert_masked_equals_exported(
        model: torch.nn.Module,
        mutator,
        g: torch.Generator,
        input_shape: Sequence[int] = (2, 3, 8, 8)) -> torch.nn.Module:
    """Export ``model`` as ``mutator`` masks it and check that the exported
    model gives the masked model's outputs (within 1e-5) on a random input.

    Args:
        model (nn.Module): The masked model, in eval mode.
        mutator (ChannelMutator): Its mutator.
        g (torch.Generator): Draws the input.
        input_shape (Sequence[int]): The input's shape.

    Returns:
        nn.Module: The exported model, in eval mode.
    """
    from mmifso.models.mutators import export_pruned_model
    x = torch.rand(*input_shape, generator=g)
    with torch.no_grad():
        masked = model(x)
    pruned, _ = export_pruned_model(model, mutator)
    pruned.eval()
    with torch.no_grad():
        exported = pruned(x)
    assert exported.shape == masked.shape
    assert (masked - exported).abs().max() <= 1e-5
    return pruned


def load_tool(*parts: str) -> ModuleType:
    """Import a script of ``tools/`` as a new module, to call its functions
    (``main(argv)`` and others) in-process.

    Args:
        *parts (str): Its path below ``tools/``, e.g.
            ``('analysis', 'coverage.py')``.

    Returns:
        ModuleType: The script, executed afresh on every call (as
        ``mmifso_tool_<name>``).
    """
    spec = importlib.util.spec_from_file_location(
        'mmifso_tool_' + osp.splitext(parts[-1])[0],
        osp.join(ROOT, 'tools', *parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Seconds a multi-process test may run before it fails (a rendezvous or
#: collective that never completes must fail the test, not stall CI).
PROCESS_TIMEOUT = 600


def free_port() -> int:
    """A TCP port that was free a moment ago (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_command(cmd: Sequence[str], env: dict,
                timeout: float = PROCESS_TIMEOUT
                ) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill the whole group
    (torchrun and its ranks) and fail the test with the output so far.

    Returns:
        subprocess.CompletedProcess: With ``returncode``, ``stdout`` and
        ``stderr`` (text).
    """
    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f'{cmd[:4]}... did not finish in {timeout:g} s (killed '
                    f'with its process group):\n{out[-2000:]}{err[-3000:]}')
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _rank_main(rank: int, fn: Callable, args: tuple, finished,
               dump_after: float) -> None:
    """One rank of :func:`run_ranks`: ``fn(rank, *args)``, then exit at once.

    If the rank is still running after ``dump_after`` seconds, the Python
    stack of each of its threads is written to stderr (the test's captured
    output), so a hang shows where it waits. After ``fn`` returns, the rank
    marks itself finished and leaves with ``os._exit(0)``: interpreter
    shutdown (atexit handlers, gloo and OpenMP threads) cannot hold it.
    """
    faulthandler.dump_traceback_later(dump_after)
    fn(rank, *args)
    faulthandler.cancel_dump_traceback_later()
    finished[rank] = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn: Callable, args: Callable[[], tuple], world: int,
              timeout: float = 300, attempts: int = 2) -> None:
    """``fn(rank, *args())`` in ``world`` spawned processes; a rank that
    raises fails the test. Ranks still running after ``timeout`` seconds are
    killed and the run is started again with fresh ``args()`` (a new port),
    ``attempts`` times in all, then the test fails (never a hang).

    A hung rank prints its stacks 10 s before it is killed
    (:func:`_rank_main`), and each retry is printed with the ranks that had
    returned from ``fn``. The retry is a safety net: the one hang seen (both
    gloo ranks alive after 600 s in two full ``make test`` runs) was rank 1
    waiting in ``destroy_process_group`` after rank 0 had returned, and ranks
    now end with a barrier instead (``tests/engine/test_distributed_scoring``).
    """
    spawn = mp.get_context('spawn')
    for attempt in range(1, attempts + 1):
        finished = spawn.Array('b', world)
        ctx = mp.start_processes(
            _rank_main, args=(fn, args(), finished, max(timeout - 10, 1)),
            nprocs=world, join=False, start_method='spawn')
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                break
        else:
            return
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
        done = [rank for rank in range(world) if finished[rank]]
        print(f'{world} ranks of {fn.__name__} did not finish in '
              f'{timeout:g} s (attempt {attempt}/{attempts}; ranks that had '
              f'returned from it: {done}); killed')
    pytest.fail(f'{world} ranks of {fn.__name__} did not finish in '
                f'{timeout:g} s, {attempts} attempts (killed)')
