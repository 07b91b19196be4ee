"""Pruning with 2 real torchrun processes (gloo on CPU)."""
import os
import socket
import subprocess
import sys

import torch
from mmengine.config import Config

from engine.test_hooks.test_pruning_hook import runner_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_masks_identical_across_ranks(tmp_path):
    cfg = runner_cfg(tmp_path / 'work', target=0.6, max_iters=12)
    cfg.custom_hooks[0].stop_at_target = False
    cfg.custom_hooks.append(dict(type='MaskProbeHook'))
    cfg.custom_imports = dict(
        imports=['mmifso', 'dist_probe'], allow_failed_imports=False)
    cfg.default_scope = 'mmpretrain'
    path = str(tmp_path / 'cfg.py')
    cfg.dump(path)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [os.path.join(ROOT, 'tests', 'engine'), ROOT]),
        OMP_NUM_THREADS='1')
    proc = subprocess.run([
        sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
        f'--master_port={free_port()}',
        os.path.join(ROOT, 'tools', 'train.py'), path, '--launcher',
        'pytorch'
    ],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'distributed run on CPU with gloo' in proc.stdout + proc.stderr
    r0 = torch.load(str(tmp_path / 'work' / 'masks_rank0.pt'))
    r1 = torch.load(str(tmp_path / 'work' / 'masks_rank1.pt'))
    assert r0.shape[0] == 12
    assert torch.equal(r0, r1)  # identical after every step
    assert (r0[-1] == 0).sum() > (r0[2] == 0).sum() > 0  # pruning progressed
