"""A prune run killed with SIGKILL and resumed ends bit-identical to the
uninterrupted run (tools/train.py in subprocesses, real checkpoints).

The config is a tiny variant of configs/demo/ifso_resnet20_prune_digits.py
with random data augmentation (RandomCrop with padding, RandomFlip): the
augmentation draws from the numpy random state of the process that loads
the data, which mmengine's resume does not restore (the state that was lost
before mmifso.ExactResumeHook). The kills come from
tools/analysis/resume_fuzz.py's ResumeFuzzKillHook (MMIFSO_KILL_AT).
"""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
CONFIG = os.path.join(ROOT, 'configs', 'demo',
                      'ifso_resnet20_prune_digits.py')
SCRIPT = os.path.join(ROOT, 'tools', 'analysis', 'resume_fuzz.py')

ITERS = 16  # 10 batches per epoch: the iteration-based run wraps once


@pytest.fixture(scope='module')
def fuzz():
    spec = importlib.util.spec_from_file_location('resume_fuzz', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        'custom_hooks.0.save_thresholds': (0.9, 0.8, 0.7),
        'default_hooks.logger.interval': 4,
    }


def _check_same(fuzz, cfg_path, tmp_path, kills, full=None):
    full = full or fuzz.final_state(_run_full(fuzz, cfg_path, tmp_path),
                                    ITERS)
    work = str(tmp_path / 'killed')
    fired, log = fuzz.kill_and_resume(cfg_path, work, kills)
    assert all(fired), f'kill points {kills}: fired {fired}'
    assert 'resume is not exact' not in log, log[-3000:]
    assert 'exact resume: random state of iteration' in log
    diffs = fuzz.differences(full, fuzz.final_state(work, ITERS))
    assert not diffs, '\n'.join(diffs[:20])
    return full


def _run_full(fuzz, cfg_path, tmp_path) -> str:
    work = str(tmp_path / 'full')
    proc = fuzz.train(cfg_path, work)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return work


def test_iteration_loop_killed_at_four_points(fuzz, tmp_path):
    """One run killed four times, each resume from the latest checkpoint
    (every 4 iterations): during the write of iter_8.pth (resumes from
    iter_4), inside the pruning step of iteration 10, right after iter_12.pth
    was written, and at the start of iteration 15 (resumes from iter_12,
    across the epoch wrap). Validation after iteration 6 must not shift the
    training stream either."""
    cfg_path = fuzz.fuzz_config(
        CONFIG, str(tmp_path), ITERS, 4, tiny_options(0), val_interval=6)
    _check_same(fuzz, cfg_path, tmp_path,
                ['ckpt_write@8', 'prune@10', 'after_ckpt@12', 'between@15'])


def test_epoch_loop_with_persistent_workers(fuzz, tmp_path):
    """Epoch-based loop, 2 persistent dataloader workers (tools/train.py's
    default for num_workers > 0), killed mid-epoch 2: resumes from iter_12.pth
    (2 batches into epoch 2), replays epoch 1 for the workers' random state
    and skips the 2 batches instead of training them again."""
    opts = tiny_options(2, samples=160)
    cfg_path = fuzz.fuzz_config(
        CONFIG, str(tmp_path), ITERS, 4, opts,
        train_cfg=dict(by_epoch=True, max_epochs=2, val_interval=100))
    # 160 samples / batch 16 = 10 batches per epoch, 20 iterations.
    full = fuzz.final_state(_run_full(fuzz, cfg_path, tmp_path), 20)
    work = str(tmp_path / 'killed')
    fired, log = fuzz.kill_and_resume(cfg_path, work, ['between@15'])
    assert fired == [True]
    assert 'resume is not exact' not in log, log[-3000:]
    assert 'loading 1 earlier epoch(s)' in log
    assert 'skipping the 2 batch(es) of epoch 2' in log
    diffs = fuzz.differences(full, fuzz.final_state(work, 20))
    assert not diffs, '\n'.join(diffs[:20])
