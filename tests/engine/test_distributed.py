"""Pruning with 2 real torchrun processes (gloo on CPU)."""
import os
import sys

import pytest
import torch

from engine.test_hooks.test_pruning_hook import runner_cfg
from helpers import ROOT, free_port, run_command


def _train(cfg, tmp_path, name, nproc):
    """Run tools/train.py on ``nproc`` processes (torchrun when > 1)."""
    cfg.custom_imports = dict(
        imports=['mmifso', 'dist_probe'], allow_failed_imports=False)
    cfg.default_scope = 'mmpretrain'
    path = str(tmp_path / f'{name}.py')
    cfg.dump(path)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [os.path.join(ROOT, 'tests', 'engine'), ROOT]),
        OMP_NUM_THREADS='1')
    train = os.path.join(ROOT, 'tools', 'train.py')
    if nproc > 1:
        cmd = [
            sys.executable, '-m', 'torch.distributed.run',
            f'--nproc_per_node={nproc}', f'--master_port={free_port()}',
            train, path, '--launcher', 'pytorch'
        ]
    else:
        cmd = [sys.executable, train, path]
    proc = run_command(cmd, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_masks_identical_across_ranks(tmp_path):
    cfg = runner_cfg(tmp_path / 'work', target=0.6, max_iters=12)
    cfg.custom_hooks[0].stop_at_target = False
    # Different random state per rank: the scoring seeds must not follow it.
    cfg.randomness = dict(seed=0, diff_rank_seed=True)
    cfg.custom_hooks.append(dict(type='MaskProbeHook'))
    log = _train(cfg, tmp_path, 'cfg', nproc=2)
    assert 'distributed run on CPU with gloo' in log
    r0 = torch.load(str(tmp_path / 'work' / 'masks_rank0.pt'))
    r1 = torch.load(str(tmp_path / 'work' / 'masks_rank1.pt'))
    assert r0.shape[0] == 12
    assert torch.equal(r0, r1)  # identical after every step
    seeds = [torch.load(str(tmp_path / 'work' / f'seeds_rank{r}.pt'))
             for r in range(2)]
    assert seeds[0]['runner'] != seeds[1]['runner']
    assert seeds[0]['scoring'] == seeds[1]['scoring'] == seeds[0]['runner']
    assert (r0[-1] == 0).sum() > (r0[2] == 0).sum() > 0  # pruning progressed


@pytest.mark.parametrize('criterion', [
    dict(type='mmifso.IFSOImportance'),
    dict(type='mmifso.TaylorImportance'),
])
def test_two_ranks_prune_like_one_process_with_the_whole_batch(
        tmp_path, criterion):
    """2 ranks x batch 8 with SyncBN vs 1 process x batch 16 (the union of
    the ranks' samples in every training and scoring batch, same seed):
    masks identical after every iteration, scores of every pruning step
    equal within float tolerance."""
    iters = 10
    runs = {}
    for name, nproc in (('dist', 2), ('single', 1)):
        cfg = runner_cfg(tmp_path / name, target=0.5, max_iters=iters,
                         criterion=dict(criterion))
        cfg.custom_hooks[0].stop_at_target = False
        cfg.custom_hooks.append(dict(type='MaskProbeHook',
                                     record_scores=True))
        if nproc > 1:
            cfg.train_dataloader.batch_size = 8
            cfg.sync_bn = 'torch'
        else:
            cfg.train_dataloader.batch_size = 16
            cfg.train_dataloader.sampler = dict(
                type='RankUnionSampler', world_size=2, rank_batch_size=8)
        log = _train(cfg, tmp_path, name, nproc)
        work = tmp_path / name
        runs[name] = [(torch.load(str(work / f'masks_rank{r}.pt')),
                       torch.load(str(work / f'scores_rank{r}.pt')))
                      for r in range(nproc)]
        if nproc > 1:
            assert 'distributed run on CPU with gloo' in log
    (m0, s0), (m1, s1) = runs['dist']
    (ms, ss), = runs['single']
    # A pruning step every 2 iterations until the target is reached.
    assert m0.shape[0] == iters and len(s0) == len(ss) >= 3
    assert torch.equal(m0, m1) and all(
        torch.equal(a, b) for a, b in zip(s0, s1))
    assert torch.equal(m0, ms)  # identical masks after every iteration
    assert (ms[-1] == 0).sum() > (ms[2] == 0).sum() > 0  # pruning went on
    diffs = [float((a - b).abs().max() / b.abs().max())
             for a, b in zip(s0, ss)]
    print(f'{criterion["type"]}: {len(diffs)} pruning steps, max relative '
          f'score difference {max(diffs):.2e}')
    assert max(diffs) < 1e-4


def test_latency_feedback_keeps_ranks_in_step(tmp_path, synthetic_path):
    """Rank 0 measures the exported structure and broadcasts the result:
    every rank moves the goal and stops alike (masks identical after every
    iteration, one log line per measurement)."""
    cfg = runner_cfg(tmp_path / 'work', max_iters=60)
    hook = cfg.custom_hooks[0]
    hook.pop('target_flops', None)
    hook.update(target_latency=0.8, cost='latency', save_thresholds=(),
                selection=dict(latency_table=synthetic_path),
                latency_feedback=dict(max_measurements=2))
    cfg.custom_hooks.append(dict(type='MaskProbeHook'))
    log = _train(cfg, tmp_path, 'cfg', nproc=2)
    r0 = torch.load(str(tmp_path / 'work' / 'masks_rank0.pt'))
    r1 = torch.load(str(tmp_path / 'work' / 'masks_rank1.pt'))
    assert torch.equal(r0, r1)
    measurements = log.count('latency feedback: predicted ratio')
    assert 1 <= measurements <= 2
    # Met, or the measurements spent (the tiny model's measured latency
    # barely follows its predicted one): either way every rank stops.
    assert ('reached target latency 0.8' in log
            or 'stopped pruning above target latency 0.8' in log)
    assert os.path.isfile(tmp_path / 'work' / 'latency_80.pth')
