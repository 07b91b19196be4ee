"""A prune run killed with SIGKILL and resumed ends bit-identical to the
uninterrupted run (tools/train.py in subprocesses, real checkpoints).

The config is a tiny variant of configs/demo/ifso_resnet20_prune_digits.py
with random data augmentation (RandomCrop with padding, RandomFlip): the
augmentation draws from the numpy random state of the process that loads
the data, which mmengine's resume does not restore (the state that was lost
before mmifso.ExactResumeHook). The kills come from
tools/analysis/resume_fuzz.py's ResumeFuzzKillHook (MMIFSO_KILL_AT).
"""
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import ROOT, load_tool

CONFIG = os.path.join(ROOT, 'configs', 'demo',
                      'ifso_resnet20_prune_digits.py')

ITERS = 16  # 10 batches per epoch: the iteration-based run wraps once


@pytest.fixture(scope='module')
def fuzz():
    return load_tool('analysis', 'resume_fuzz.py')


def tiny_options(num_workers: int, samples: int = 160) -> dict:
    """The demo prune config at toy size (ResNet-8 x 4 channels, 16x16
    digits, batch 16), pruning from random weights."""
    pipeline = [
        dict(type='RandomCrop', crop_size=16, padding=2),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='PackInputs'),
    ]
    return {
        'load_from': None,
        'model.architecture.backbone.depth': 8,
        'model.architecture.backbone.base_channels': 4,
        'model.architecture.head.in_channels': 16,
        'model.mutator.demo_input.input_shape': (1, 3, 16, 16),
        'train_dataloader.batch_size': 16,
        'train_dataloader.num_workers': num_workers,
        'train_dataloader.dataset.image_size': 16,
        'train_dataloader.dataset.indices': samples,
        'train_dataloader.dataset.pipeline': pipeline,
        'val_dataloader.dataset.image_size': 16,
        'val_dataloader.dataset.indices': 64,
        'test_dataloader.dataset.image_size': 16,
        'test_dataloader.dataset.indices': 64,
        'custom_hooks.0.target_flops': 0.5,
        'custom_hooks.0.channels_per_step': 2,
        # Prune every 2 iterations from scores accumulated over both, so
        # kills land between scoring and pruning (score state to restore).
        'custom_hooks.0.interval': 2,
        'custom_hooks.0.score_window': None,
        'custom_hooks.0.save_thresholds': (0.9, 0.8, 0.7),
        'default_hooks.logger.interval': 4,
    }


def _full_and_killed(fuzz, cfg_path, tmp_path, kills, iters):
    """Run the uninterrupted run and the killed-and-resumed one side by side
    (two processes at a time), compare their ends bitwise; return the last
    resumed run's log."""
    work = str(tmp_path / 'killed')
    with ThreadPoolExecutor(1) as pool:
        full = pool.submit(fuzz.train, cfg_path, str(tmp_path / 'full'))
        fired, log = fuzz.kill_and_resume(cfg_path, work, kills)
        proc = full.result()
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert all(fired), f'kill points {kills}: fired {fired}'
    assert 'resume is not exact' not in log, log[-3000:]
    assert 'exact resume: random state of iteration' in log, log[-3000:]
    expected = fuzz.final_state(str(tmp_path / 'full'), iters)
    assert 'flops_70.pth' in expected  # pruning went on during the run
    diffs = fuzz.differences(expected, fuzz.final_state(work, iters))
    assert not diffs, '\n'.join(diffs[:20])
    return log


def test_iteration_loop_killed_at_four_points(fuzz, tmp_path):
    """One run killed four times, each resume from the latest checkpoint
    (every 4 iterations): during the write of iter_8.pth (resumes from
    iter_4), inside the pruning step of iteration 10, right after iter_12.pth
    was written, and at the start of iteration 15 (resumes from iter_12,
    across the epoch wrap). Validation after iteration 6 must not shift the
    training stream either. Final weights, masks, optimizer state and every
    flops_XX.pth equal the uninterrupted run's bitwise."""
    cfg_path = fuzz.fuzz_config(
        CONFIG, str(tmp_path), ITERS, 4, tiny_options(0), val_interval=6)
    _full_and_killed(
        fuzz, cfg_path, tmp_path,
        ['ckpt_write@8', 'prune@10', 'after_ckpt@12', 'between@15'], ITERS)


def test_epoch_loop_with_persistent_workers(fuzz, tmp_path):
    """Epoch-based loop (2 epochs of 8 batches), 2 persistent dataloader
    workers (tools/train.py's default for num_workers > 0), killed at the
    start of iteration 15: the resume from iter_12.pth (4 batches into epoch
    2) loads epoch 1 again for the workers' random state and skips the 4
    batches instead of training them again (mmengine restarts the epoch)."""
    cfg_path = fuzz.fuzz_config(
        CONFIG, str(tmp_path), 16, 4, tiny_options(2, samples=128),
        train_cfg=dict(by_epoch=True, max_epochs=2, val_interval=100))
    log = _full_and_killed(fuzz, cfg_path, tmp_path, ['between@15'], 16)
    assert 'loading 1 earlier epoch(s)' in log
    assert 'skipping the 4 batch(es) of epoch 2' in log
