"""Kill a training run at random points, resume it, compare bit for bit.

Usage:
    python tools/analysis/resume_fuzz.py CONFIG [--kills 20] [--seed 0] \\
        [--max-iters 48] [--ckpt-interval 4] [--nproc 1] \\
        [--work-dir work_dirs/resume_fuzz] [--out result.json] \\
        [--cfg-options k=v ...]

1. ``CONFIG`` (with ``--cfg-options``) becomes an iteration-based run of
   ``--max-iters`` iterations with a ``CheckpointHook(by_epoch=False,
   interval=--ckpt-interval)`` that keeps every checkpoint; a
   ``PruningHook`` in it runs to the end (``stop_at_target=False``) so the
   last checkpoint holds the final state.
2. The uninterrupted run: ``tools/train.py`` once.
3. For each of ``--kills`` kill points (seeded): ``tools/train.py`` again in
   a fresh work dir, killed with SIGKILL by :class:`ResumeFuzzKillHook` at
   the point, then ``tools/train.py --resume`` in the same work dir to the
   end. The final checkpoint's weights and masks (``state_dict``), the
   optimizer state and every ``flops_XX.pth`` must equal the uninterrupted
   run's bitwise.

Kill points are ``PHASE@ITER`` (iterations counted from 1):

* ``after_ckpt``: right after the checkpoint of iteration ``ITER`` was
  written (end of the iteration);
* ``between``: at the start of iteration ``ITER`` (its batch loaded, not
  trained);
* ``prune``: inside the pruning step of iteration ``ITER``, after the
  criterion computed its scores and before any channel is removed;
* ``ckpt_write``: halfway through writing a checkpoint of iteration ``ITER``
  (half of its bytes on disk).

Points that never trigger (e.g. ``prune`` at an iteration without a pruning
step) are reported as such. With ``--nproc 2`` the runs use
``torch.distributed.run`` (gloo on CPU) and every rank kills itself at the
point (rank 0 alone writes checkpoints).

Importing this module registers :class:`ResumeFuzzKillHook`
(``custom_imports=dict(imports=['resume_fuzz'])`` with
``tools/analysis`` on ``PYTHONPATH``); the kill point comes from the
environment variable ``MMIFSO_KILL_AT``.
"""
import argparse
import contextlib
import glob
import os
import os.path as osp
import random
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402

from mmifso.apis import load_config  # noqa: E402
from mmifso.engine.hooks import (ExactResumeHook, get_rng_state,  # noqa: E402
                                 set_rng_state)
from mmifso.registry import HOOKS  # noqa: E402
from mmifso.utils import add_cfg_options  # noqa: E402

KILL_ENV = 'MMIFSO_KILL_AT'
PHASES = ('after_ckpt', 'between', 'prune', 'ckpt_write')
BISECT_ENV = 'MMIFSO_RESUME_BISECT'
BISECT_PARTS = ('python', 'numpy', 'torch', 'raw_scoring')
#: ``--bisect`` variants: what the resumed run restores.
BISECT_VARIANTS = ('raw_scoring', 'python,torch,raw_scoring',
                   'numpy,raw_scoring', 'python,numpy,torch,raw_scoring',
                   'numpy', 'python,numpy,torch')


def parse_kill_point(spec: str) -> Tuple[str, int]:
    """``'PHASE@ITER'`` -> ``(phase, iteration)``.

    Args:
        spec (str): e.g. ``'prune@8'``.

    Returns:
        tuple: The phase (one of :data:`PHASES`) and the 1-based iteration.
    """
    phase, _, it = spec.partition('@')
    if phase not in PHASES or not it.isdigit() or int(it) < 1:
        raise ValueError(f'kill point must be PHASE@ITER with PHASE one of '
                         f'{", ".join(PHASES)} and ITER >= 1, got {spec!r}')
    return phase, int(it)


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module(force=True)
class ResumeFuzzKillHook(Hook):
    """SIGKILL this process at the point given by ``MMIFSO_KILL_AT``.

    Registered last (``'LOWEST'``), so ``after_ckpt`` fires after the
    checkpoint hook and ``ckpt_write`` patches the file backends right
    before the checkpoint's bytes are written.
    """

    priority = 'LOWEST'

    def __init__(self) -> None:
        spec = os.environ.get(KILL_ENV)
        self.point = parse_kill_point(spec) if spec else None

    def _at(self, phase: str, runner) -> bool:
        return self.point == (phase, runner.iter + 1)

    def before_train(self, runner) -> None:
        if not self.point or self.point[0] != 'prune':
            return
        from mmifso.engine.hooks import PruningHook
        for hook in runner.hooks:
            if isinstance(hook, PruningHook):
                compute = hook.importance.compute

                def compute_then_die(*args, _compute=compute, **kwargs):
                    scores = _compute(*args, **kwargs)
                    if self._at('prune', runner):
                        _die()
                    return scores

                hook.importance.compute = compute_then_die

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        if self._at('between', runner):
            _die()

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if self._at('after_ckpt', runner):
            _die()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self._at('ckpt_write', runner):
            return
        from mmengine.fileio.backends import LocalBackend

        from mmifso.utils import AtomicLocalBackend
        from mmifso.utils.io import temp_prefix

        def put_half_then_die(backend, obj: bytes, filepath) -> None:
            # The atomic backend writes a temporary file and renames it; the
            # plain one writes in place. Either way the kill leaves half.
            path = str(filepath)
            if isinstance(backend, AtomicLocalBackend):
                path = os.path.join(
                    os.path.dirname(path),
                    temp_prefix(path) + 'killed.tmp')
            with open(path, 'wb') as f:
                f.write(obj[:len(obj) // 2])
                f.flush()
                os.fsync(f.fileno())
            _die()

        LocalBackend.put = put_half_then_die
        AtomicLocalBackend.put = put_half_then_die


@HOOKS.register_module(force=True)
class ResumeBisectHook(ExactResumeHook):
    """:class:`~mmifso.engine.hooks.ExactResumeHook` that restores only the
    parts of the random state named in ``MMIFSO_RESUME_BISECT``
    (comma-separated: ``python``, ``numpy``, ``torch``; empty: none), to find
    which lost state makes a resumed run diverge. With ``raw_scoring`` in the
    list the PruningHook re-positions its scoring iterator drawing from the
    random state, as before the fix."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        parts = [
            p for p in os.environ.get(BISECT_ENV, '').split(',') if p
        ]
        unknown = set(parts) - set(BISECT_PARTS)
        if unknown:
            raise ValueError(f'{BISECT_ENV}: unknown parts {sorted(unknown)}; '
                             f'use {", ".join(BISECT_PARTS)}')
        self.parts = parts
        if 'raw_scoring' in parts:
            from mmifso.engine.hooks import pruning_hook
            pruning_hook.preserved_rng_state = contextlib.nullcontext

    def restore_rng_state(self, state: dict) -> None:
        mixed = get_rng_state()
        for part in ('python', 'numpy', 'torch'):
            if part in self.parts:
                mixed[part] = state[part]
        set_rng_state(mixed)


# ---------------------------------------------------------------------- #
# Runs
def free_port() -> int:
    """A free TCP port on localhost."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def fuzz_config(config: str,
                work_dir: str,
                max_iters: int,
                ckpt_interval: int,
                cfg_options: Optional[dict] = None,
                val_interval: Optional[int] = None,
                train_cfg: Optional[dict] = None,
                bisect: bool = False) -> str:
    """Write the run's config (see the module docstring) into ``work_dir``.

    Args:
        config (str): Path of the config to run.
        work_dir (str): Where the config file is written.
        max_iters (int): Training iterations.
        ckpt_interval (int): Iterations between checkpoints.
        cfg_options (dict, optional): Overrides merged first.
        val_interval (int, optional): Validate every ``val_interval``
            iterations (and at the end); None: only at the end.
        train_cfg (dict, optional): Another ``train_cfg`` (e.g. an
            epoch-based one of ``max_iters`` iterations in all).
        bisect (bool): Use :class:`ResumeBisectHook` (the parts restored
            come from ``MMIFSO_RESUME_BISECT`` of each run).

    Returns:
        str: Path of the written config.
    """
    cfg = load_config(config, cfg_options)
    cfg.train_cfg = train_cfg or dict(
        by_epoch=False,
        max_iters=max_iters,
        val_interval=val_interval or max_iters)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', by_epoch=False, interval=ckpt_interval)
    hooks = list(cfg.get('custom_hooks', []))
    for hook in hooks:
        if 'PruningHook' in str(hook.get('type')):
            hook['stop_at_target'] = False
    if bisect:
        hooks.append(dict(type='mmifso.ResumeBisectHook'))
    hooks.append(dict(type='mmifso.ResumeFuzzKillHook'))
    cfg.custom_hooks = hooks
    imports = list(cfg.get('custom_imports', {}).get('imports', []))
    cfg.custom_imports = dict(
        imports=imports + ['resume_fuzz'], allow_failed_imports=False)
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, 'fuzz_config.py')
    cfg.dump(path)
    return path


def train(cfg_path: str,
          work_dir: str,
          kill: Optional[str] = None,
          resume: bool = False,
          nproc: int = 1,
          timeout: float = 1800,
          bisect: Optional[str] = None) -> subprocess.CompletedProcess:
    """``tools/train.py`` in a subprocess (torchrun for ``nproc > 1``).

    Args:
        cfg_path (str): Config file.
        work_dir (str): ``--work-dir``.
        kill (str, optional): Kill point ``PHASE@ITER``.
        resume (bool): Pass ``--resume`` (the latest checkpoint of
            ``work_dir``).
        nproc (int): Processes.
        timeout (float): Seconds.
        bisect (str, optional): ``MMIFSO_RESUME_BISECT`` of the run.

    Returns:
        subprocess.CompletedProcess: With ``stdout`` + ``stderr`` in
        ``stdout``.
    """
    script = osp.join(ROOT, 'tools', 'train.py')
    args = [cfg_path, '--work-dir', work_dir]
    if resume:
        args.append('--resume')
    if nproc > 1:
        cmd = [
            sys.executable, '-m', 'torch.distributed.run',
            f'--nproc_per_node={nproc}', f'--master_port={free_port()}',
            script, *args, '--launcher', 'pytorch'
        ]
    else:
        cmd = [sys.executable, script, *args]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [osp.join(ROOT, 'tools', 'analysis'), ROOT,
             os.environ.get('PYTHONPATH', '')]),
        OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'),
        PYTHONHASHSEED='0')
    env.pop(KILL_ENV, None)
    env.pop(BISECT_ENV, None)
    if bisect is not None:
        env[BISECT_ENV] = bisect
    if kill:
        parse_kill_point(kill)
        env[KILL_ENV] = kill
    return subprocess.run(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout)


def final_state(work_dir: str, max_iters: int) -> Dict[str, dict]:
    """The tensors of the run's end: ``iter_{max_iters}.pth`` (state dict
    and optimizer) and every ``flops_XX.pth`` (state dict).

    Args:
        work_dir (str): The run's work dir.
        max_iters (int): Its last iteration.

    Returns:
        dict: File name -> ``{'state_dict': ..., 'optimizer': ...}``.
    """
    from mmifso.utils import load_checkpoint_file
    names = [f'iter_{max_iters}.pth'] + sorted(
        osp.basename(p) for p in glob.glob(osp.join(work_dir, 'flops_*.pth')))
    out = {}
    for name in names:
        path = osp.join(work_dir, name)
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path} was not written: the run did '
                                    'not reach its end')
        ckpt = load_checkpoint_file(path, map_location='cpu')
        out[name] = dict(
            state_dict=ckpt['state_dict'],
            optimizer=ckpt.get('optimizer', {}).get('state', {}))
    return out


def _flatten(prefix: str, obj, out: Dict[str, object]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f'{prefix}.{k}', v, out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(f'{prefix}.{i}', v, out)
    else:
        out[prefix] = obj


def differences(expected: Dict[str, dict],
                got: Dict[str, dict]) -> List[str]:
    """What differs between two :func:`final_state` results (bitwise).

    Args:
        expected (dict): The uninterrupted run's.
        got (dict): The resumed run's.

    Returns:
        list[str]: One line per file or tensor that differs; empty if equal.
    """
    if sorted(expected) != sorted(got):
        return [f'files differ: {sorted(expected)} vs {sorted(got)}']
    diffs = []
    for name in expected:
        a: Dict[str, object] = {}
        b: Dict[str, object] = {}
        _flatten('', expected[name], a)
        _flatten('', got[name], b)
        if sorted(a) != sorted(b):
            diffs.append(f'{name}: other keys')
            continue
        for key in a:
            x, y = a[key], b[key]
            if isinstance(x, torch.Tensor):
                same = isinstance(y, torch.Tensor) and x.dtype == y.dtype \
                    and x.shape == y.shape and torch.equal(x, y)
            else:
                same = x == y
            if not same:
                what = 'mask' if key.endswith('mask') else 'tensor'
                diffs.append(f'{name}: {what} {key.lstrip(".")} differs')
    return diffs


def kill_and_resume(cfg_path: str,
                    work_dir: str,
                    kills: Sequence[str],
                    nproc: int = 1,
                    bisect: Optional[str] = None) -> Tuple[List[bool], str]:
    """Run, kill at ``kills[0]``, resume (killed at ``kills[1]``, ...),
    resume to the end.

    Args:
        cfg_path (str): Config from :func:`fuzz_config`.
        work_dir (str): A fresh work dir.
        kills (Sequence[str]): Kill points, in the order they are reached.
        nproc (int): Processes.
        bisect (str, optional): ``MMIFSO_RESUME_BISECT`` of the runs.

    Returns:
        tuple: Per kill point whether it killed the run, and the output of
        the last (completing) run.
    """
    fired = []
    resume = False
    for point in kills:
        proc = train(cfg_path, work_dir, kill=point, resume=resume,
                     nproc=nproc, bisect=bisect)
        killed = proc.returncode != 0
        if killed and nproc == 1 and proc.returncode != -signal.SIGKILL:
            raise RuntimeError(f'run with kill point {point} failed '
                               f'(exit {proc.returncode}):\n'
                               f'{proc.stdout[-4000:]}')
        fired.append(killed)
        if not killed:
            return fired, proc.stdout  # it completed: nothing left to kill
        resume = True
    proc = train(cfg_path, work_dir, resume=resume, nproc=nproc,
                 bisect=bisect)
    if proc.returncode != 0:
        raise RuntimeError(f'resumed run failed (exit {proc.returncode}):\n'
                           f'{proc.stdout[-4000:]}')
    return fired, proc.stdout


def pruning_iterations(log: str) -> List[int]:
    """The iterations with a pruning step, from a run's log
    (``[mmifso] step iter N:`` lines of the PruningHook).

    Args:
        log (str): The run's output.

    Returns:
        list[int]: 1-based iterations, ascending.
    """
    return sorted({
        int(m.group(1))
        for m in re.finditer(r'\[mmifso\] step iter (\d+):', log)
    })


def random_kill_point(rng: random.Random, max_iters: int,
                      ckpt_interval: int, prune_iters: Sequence[int]) -> str:
    """A kill point whose phase fires at its iteration.

    Args:
        rng (random.Random): Seeded generator.
        max_iters (int): Iterations of the run.
        ckpt_interval (int): Iterations between checkpoints.
        prune_iters (Sequence[int]): Iterations with a pruning step (of the
            uninterrupted run; :func:`pruning_iterations`).

    Returns:
        str: ``PHASE@ITER``.
    """
    prune_iters = [i for i in prune_iters if i < max_iters]
    phase = rng.choice(PHASES if prune_iters else
                       tuple(p for p in PHASES if p != 'prune'))
    if phase in ('after_ckpt', 'ckpt_write'):
        it = ckpt_interval * rng.randint(1, (max_iters - 1) // ckpt_interval)
    elif phase == 'prune':
        it = rng.choice(prune_iters)
    else:
        it = rng.randint(2, max_iters)
    return f'{phase}@{it}'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Kill a run at random points, resume, compare bitwise')
    parser.add_argument('config')
    parser.add_argument('--kills', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-iters', type=int, default=48)
    parser.add_argument('--ckpt-interval', type=int, default=4)
    parser.add_argument('--val-interval', type=int, help='validate every N '
                        'iterations (default: only at the end)')
    parser.add_argument('--nproc', type=int, default=1)
    parser.add_argument('--points', nargs='+', help='kill points PHASE@ITER '
                        'instead of random ones (one run each)')
    parser.add_argument(
        '--bisect',
        action='store_true',
        help='resume each kill point once per variant of what is restored '
        f'({"; ".join(BISECT_VARIANTS)}) with ResumeBisectHook')
    parser.add_argument('--work-dir', default='work_dirs/resume_fuzz')
    parser.add_argument('--out', help='JSON result (default: '
                        'WORK_DIR/resume_fuzz.json)')
    add_cfg_options(parser)
    return parser.parse_args(argv)


def uninterrupted_run(cfg_path: str, work: str, max_iters: int,
                      nproc: int) -> Tuple[Dict[str, dict], List[int]]:
    """Train once without a kill: the reference every resumed run must
    match.

    Args:
        cfg_path (str): The fuzz config (:func:`fuzz_config`).
        work (str): Work folder; the run goes to ``WORK/full``.
        max_iters (int): Iterations of the run.
        nproc (int): Processes.

    Returns:
        tuple: The final state (:func:`final_state`) and the iterations of
        its pruning steps (:func:`pruning_iterations`).

    Raises:
        SystemExit: when the run fails (with the end of its output).
    """
    start = time.time()
    full_dir = osp.join(work, 'full')
    proc = train(cfg_path, full_dir, nproc=nproc)
    if proc.returncode != 0:
        raise SystemExit(f'uninterrupted run failed:\n{proc.stdout[-4000:]}')
    expected = final_state(full_dir, max_iters)
    prune_iters = pruning_iterations(proc.stdout)
    print(f'uninterrupted run: {time.time() - start:.0f} s, pruning steps at '
          f'iterations {prune_iters}', flush=True)
    return expected, prune_iters


def kill_points(args: argparse.Namespace,
                prune_iters: Sequence[int]) -> List[str]:
    """``--points`` as given, else ``--kills`` random ones (seeded with
    ``--seed``; :func:`random_kill_point`).

    Args:
        args (argparse.Namespace): The parsed arguments.
        prune_iters (Sequence[int]): Pruning iterations of the
            uninterrupted run.

    Returns:
        list[str]: Kill points ``PHASE@ITER``.
    """
    if args.points:
        return list(args.points)
    rng = random.Random(args.seed)
    return [
        random_kill_point(rng, args.max_iters, args.ckpt_interval,
                          prune_iters) for _ in range(args.kills)
    ]


def fuzz_one(cfg_path: str, run_dir: str, point: str, variant: Optional[str],
             expected: Dict[str, dict], args: argparse.Namespace) -> dict:
    """Kill a run at ``point``, resume it and compare its final state with
    the uninterrupted run's.

    Args:
        cfg_path (str): The fuzz config.
        run_dir (str): Work folder of this run.
        point (str): Kill point ``PHASE@ITER``.
        variant (str, optional): What the resume restores
            (``BISECT_VARIANTS``), None for everything (ExactResumeHook).
        expected (dict): The uninterrupted run's final state.
        args (argparse.Namespace): The parsed arguments.

    Returns:
        dict: The JSON entry of the run.
    """
    t0 = time.time()
    fired, log = kill_and_resume(cfg_path, run_dir, [point], args.nproc,
                                 bisect=variant)
    diffs = differences(expected, final_state(run_dir, args.max_iters))
    warned = [
        line.strip() for line in log.splitlines()
        if 'resume is not exact' in line
    ]
    return dict(
        point=point,
        restored=variant,
        killed=fired[0],
        identical=not diffs,
        num_differences=len(diffs),
        differences=diffs[:10],
        warnings=warned,
        seconds=round(time.time() - t0, 1))


def main(argv=None) -> int:
    """Run the fuzz: the uninterrupted reference, then one killed and
    resumed run per (kill point, restore variant); writes the JSON.

    Returns:
        int: 0 when every killed run resumed bit-identical (always with
        ``--bisect``, whose variants are expected to differ), else 1.
    """
    args = parse_args(argv)
    if args.max_iters <= args.ckpt_interval:
        raise SystemExit('--max-iters must exceed --ckpt-interval')
    work = osp.abspath(args.work_dir)
    cfg_path = fuzz_config(
        args.config,
        work,
        args.max_iters,
        args.ckpt_interval,
        args.cfg_options,
        val_interval=args.val_interval,
        bisect=args.bisect)
    for p in args.points or []:
        parse_kill_point(p)
    variants: List[Optional[str]] = list(
        BISECT_VARIANTS) if args.bisect else [None]
    start = time.time()
    expected, prune_iters = uninterrupted_run(cfg_path, work, args.max_iters,
                                              args.nproc)
    points = kill_points(args, prune_iters)
    results = []
    runs = [(v, p) for p in points for v in variants]
    for k, (variant, point) in enumerate(runs):
        t0 = time.time()
        r = fuzz_one(cfg_path, osp.join(work, f'kill_{k:02d}'), point,
                     variant, expected, args)
        results.append(r)
        shown = f' restored={variant or "all (ExactResumeHook)"}'
        print(f'{k + 1:2d}/{len(runs)} {point:<16}{shown} '
              f'killed={r["killed"]!s:<5} identical={r["identical"]!s:<5} '
              f'{r["num_differences"]} difference(s) '
              f'({time.time() - t0:.0f} s)', flush=True)
    n_same = sum(r['identical'] for r in results if r['killed'])
    n_killed = sum(r['killed'] for r in results)
    summary = dict(
        config=args.config,
        cfg_options=args.cfg_options,
        nproc=args.nproc,
        max_iters=args.max_iters,
        ckpt_interval=args.ckpt_interval,
        val_interval=args.val_interval,
        seed=args.seed,
        omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
        killed=n_killed,
        identical=n_same,
        wall_seconds=round(time.time() - start, 1),
        runs=results)
    from mmifso.utils import save_json
    out = args.out or osp.join(work, 'resume_fuzz.json')
    save_json(summary, out)
    print(f'{n_same}/{n_killed} killed runs resumed bit-identical '
          f'({len(runs) - n_killed} point(s) did not fire); '
          f'{summary["wall_seconds"]:.0f} s; written {out}')
    return 0 if n_same == n_killed or args.bisect else 1


if __name__ == '__main__':
    sys.exit(main())
