"""Faults: processes killed (SIGKILL) while they write exports and
checkpoints leave every file either as it was or complete, never partial.

* ``test_export_tool_killed_mid_write``: the real ``tools/export_pruned.py``
  in a subprocess, held between writing ``pruned.pth``'s temporary file and
  renaming it (``MMIFSO_ATOMIC_WRITE_DELAY``), is killed there.
* ``test_random_kills_during_writes``: writer processes run the writes of an
  export (``save_structure``, ``save_torch``, ``save_text``) and of a runner
  checkpoint (``AtomicLocalBackend.put`` / ``put_text``, what mmengine calls
  with ``backend_args=dict(backend='mmifso_atomic')``) in a loop and are
  killed at random times; a control loop writing with mmengine's plain
  ``LocalBackend`` shows that the same check catches partial files.

docs/reliability.md reports the figures.
"""
import glob
import hashlib
import io
import os
import os.path as osp
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.fileio import LocalBackend
from mmengine.logging import HistoryBuffer

from engine.test_hooks.test_pruning_hook import runner_cfg
from helpers import build_algorithm, random_prune
from mmifso.apis.checks import (CheckpointConfigMismatch,
                                check_checkpoint_matches_config)
from mmifso.apis.export import export_checkpoint
from mmifso.structures import save_structure
from mmifso.utils import (AtomicLocalBackend, load_checkpoint_file,
                          remove_stale_temp_files, save_text, save_torch)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
EXPORT_FILES = ('structure.json', 'pruned.pth', 'deploy_config.py')


def sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def temp_files(directory):
    return sorted(glob.glob(osp.join(str(directory), '.*.tmp')))


# --------------------------------------------------------------------------- #
# The export tool, killed between writing pruned.pth and renaming it
# --------------------------------------------------------------------------- #
@pytest.fixture
def two_masked_checkpoints(tmp_path):
    """A pruning config and two masked checkpoints of it (other masks)."""
    cfg = runner_cfg(tmp_path / 'work')
    cfg_path = str(tmp_path / 'prune.py')
    cfg.dump(cfg_path)
    paths = []
    for seed in (0, 1):
        algo = build_algorithm(input_shape=(1, 3, 16, 16))
        random_prune(algo.mutator, 0.25 + 0.1 * seed, seed=seed)
        paths.append(str(tmp_path / f'flops_{seed}.pth'))
        torch.save(dict(state_dict=algo.state_dict(), meta={}), paths[-1])
    return cfg_path, paths


def test_export_tool_killed_mid_write(tmp_path, two_masked_checkpoints):
    cfg_path, (old_ckpt, new_ckpt) = two_masked_checkpoints
    out = tmp_path / 'export'
    export_checkpoint(cfg_path, old_ckpt, str(out))
    old = {name: sha(out / name) for name in EXPORT_FILES}

    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        OMP_NUM_THREADS='1',
        MMIFSO_ATOMIC_WRITE_DELAY='1.0')
    proc = subprocess.Popen([
        sys.executable,
        osp.join(ROOT, 'tools', 'export_pruned.py'), cfg_path, new_ckpt,
        '--out-dir',
        str(out)
    ],
                            env=env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    try:
        # Every write is held 1 s before its rename: structure.json is
        # replaced first, then pruned.pth's temporary file appears.
        while not glob.glob(str(out / '.pruned.pth.*.tmp')):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # The checkpoint and the config are the old ones, intact; the structure
    # is already the new one; the killed temporary file is left aside.
    assert sha(out / 'pruned.pth') == old['pruned.pth']
    assert sha(out / 'deploy_config.py') == old['deploy_config.py']
    killed_structure = sha(out / 'structure.json')
    assert killed_structure != old['structure.json']
    assert [osp.basename(p).split('.')[1] for p in temp_files(out)] == [
        'pruned']
    torch.load(str(out / 'pruned.pth'))  # loadable
    # Mixed files of two exports are detected before use.
    deploy = Config.fromfile(str(out / 'deploy_config.py'))
    with pytest.raises(CheckpointConfigMismatch,
                       match='an export was interrupted between its files'):
        check_checkpoint_matches_config(deploy, str(out / 'pruned.pth'))

    # Exporting again removes the leftover and gives a consistent set.
    export_checkpoint(cfg_path, new_ckpt, str(out))
    assert temp_files(out) == []
    assert sha(out / 'structure.json') == killed_structure  # was complete
    assert sha(out / 'pruned.pth') != old['pruned.pth']
    deploy = Config.fromfile(str(out / 'deploy_config.py'))
    assert check_checkpoint_matches_config(
        deploy, str(out / 'pruned.pth')) == 'pruned'
    from mmengine.registry import init_default_scope

    from mmifso.registry import MODELS
    init_default_scope('mmpretrain')
    model = MODELS.build(deploy.model)
    model.load_state_dict(
        load_checkpoint_file(str(out / 'pruned.pth'))['state_dict'],
        strict=True)


# --------------------------------------------------------------------------- #
# Writers killed at random times
# --------------------------------------------------------------------------- #
def _payloads(version):
    """Content of an export and of a runner checkpoint, ~10 MB together."""
    g = torch.Generator().manual_seed(version)
    structure = dict(
        format='mmifso.pruned_structure',
        version=1,
        units=[
            dict(name=f'layer{i}', num_channels=512,
                 pruned=list(range(version, 512, 2 + version)))
            for i in range(64)
        ])
    pruned = dict(
        state_dict={'w': torch.randn(1 << 20, generator=g)},
        meta=dict(mmifso=dict(kind='pruned', version=version)))
    hub = HistoryBuffer()
    hub.update(float(version))
    buffer = io.BytesIO()
    torch.save(  # as mmengine's save_checkpoint: torch.save, then put()
        dict(
            state_dict={'w': torch.randn(1 << 19, generator=g)},
            meta=dict(iter=version, arr=np.arange(3) + version),
            message_hub=dict(log_scalars={'train/loss': hub})), buffer)
    return dict(
        structure=structure,
        pruned=pruned,
        config=f"load_from = 'pruned_{version}.pth'\n" * 200,
        checkpoint=buffer.getvalue(),
        last=f'/work/iter_{version}.pth')


def _write_all(out, v):
    save_structure(v['structure'], osp.join(out, 'structure.json'))
    save_torch(v['pruned'], osp.join(out, 'pruned.pth'))
    save_text(v['config'], osp.join(out, 'deploy_config.py'))
    backend = AtomicLocalBackend()
    backend.put(v['checkpoint'], osp.join(out, 'iter.pth'))
    backend.put_text(v['last'], osp.join(out, 'last_checkpoint'))


ATOMIC_FILES = ('structure.json', 'pruned.pth', 'deploy_config.py',
                'iter.pth', 'last_checkpoint')


def _writer_child(write_once, out, versions):
    """Forked: write versions A, B, A, ... until killed."""
    try:
        i = 1
        while True:
            write_once(out, versions[i % 2])
            i += 1
    finally:
        os._exit(0)


def _kill_loop(write_once, out, versions, files, kills, seed):
    """Fork writers and kill each at a random time.

    Returns:
        dict: kills, kills that left a temporary file (mid-write), files
        found partial (neither complete version), and versions seen.
    """
    write_once(out, versions[0])  # the 'previous' files
    digests = [{} for _ in versions]
    for k, v in enumerate(versions):
        ref = str(out) + f'_ref{k}'
        os.makedirs(ref)
        write_once(ref, v)
        digests[k] = {name: sha(osp.join(ref, name)) for name in files}
    rng = random.Random(seed)
    stats = dict(kills=0, mid_write=0, partial=0, changed=0)
    previous = {name: sha(osp.join(out, name)) for name in files}
    for _ in range(kills):
        pid = os.fork()
        if pid == 0:
            _writer_child(write_once, str(out), versions)
        time.sleep(rng.uniform(0.002, 0.12))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        stats['kills'] += 1
        leftovers = temp_files(out)
        stats['mid_write'] += bool(leftovers)
        for name in files:
            path = osp.join(out, name)
            digest = sha(path) if osp.exists(path) else None
            if digest not in (digests[0][name], digests[1][name]):
                stats['partial'] += 1
            stats['changed'] += digest != previous[name]
            previous[name] = digest
        for name in files:
            remove_stale_temp_files(osp.join(out, name))
    return stats


def test_random_kills_during_writes(tmp_path):
    versions = [_payloads(0), _payloads(1)]
    out = tmp_path / 'atomic'
    out.mkdir()
    stats = _kill_loop(_write_all, str(out), versions, ATOMIC_FILES, 40,
                       seed=0)
    print(f'\natomic writers: {stats}')
    assert stats['partial'] == 0, stats
    assert stats['mid_write'] > 0 and stats['changed'] > 0, stats
    # What is left loads.
    assert load_checkpoint_file(str(out / 'pruned.pth'))['meta']['mmifso'][
        'kind'] == 'pruned'
    load_checkpoint_file(str(out / 'iter.pth'))

    # Control: mmengine's plain LocalBackend (what CheckpointHook uses
    # without backend_args) writes in place; the same kills leave partial
    # files, which this check sees.
    def plain_put(directory, v):
        LocalBackend().put(v['checkpoint'] * 4, osp.join(directory,
                                                         'iter.pth'))

    control = tmp_path / 'plain'
    control.mkdir()
    plain = _kill_loop(plain_put, str(control), versions, ('iter.pth', ), 20,
                       seed=1)
    print(f'plain LocalBackend: {plain}')
    assert plain['partial'] > 0, plain
