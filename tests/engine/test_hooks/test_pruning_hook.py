"""The pruning hook inside a real mmengine Runner, and the bad input it
must reject or handle (docs/reliability.md, section 1)."""
import copy
import glob
import logging
import os.path as osp
import random
import re

import numpy as np
import pytest
import torch
from mmengine.runner import Runner
from mmpretrain.registry import TRANSFORMS

from helpers import (OTHER_ARCH_MSG, TINY_CLASSIFIER, random_prune,
                     runner_cfg)
from mmifso.engine.hooks import PruningHook
from mmifso.models.importance import BaseImportance
from mmifso.models.mutators import ChannelSelector
from mmifso.registry import HOOKS, TASK_UTILS
from mmifso.utils import ArchitectureMismatch, CheckpointConfigMismatch


def test_hook_prunes_while_training(tmp_path):
    runner = Runner.from_cfg(runner_cfg(tmp_path))
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    algo = runner.model
    res = algo.mutator.resources()
    assert res['flops_ratio'] <= 0.7
    assert sum(u.num_alive for u in algo.mutator.units) < sum(
        u.num_channels for u in algo.mutator.units)
    # Training continued: weights changed and iterations ran past pruning
    # steps; the hook stopped training at the target.
    changed = [k for k, v in algo.state_dict().items()
               if 'mask' not in k and v.dtype.is_floating_point
               and not torch.equal(v, before[k])]
    assert changed
    assert 2 <= runner.iter <= 30
    # One checkpoint per FLOPs threshold crossed, masks inside.
    names = sorted(osp.basename(p) for p in glob.glob(str(tmp_path / 'flops_*')))
    assert names == ['flops_70.pth', 'flops_80.pth', 'flops_90.pth']
    ckpt = torch.load(str(tmp_path / 'flops_70.pth'), map_location='cpu')
    masks = [k for k in ckpt['state_dict'] if k.startswith('mutator.units')]
    assert masks
    assert ckpt['meta']['mmifso_pruning_hook']['done']
    log = open(glob.glob(str(tmp_path / '*' / '*.log'))[0]).read()
    assert 'FLOPs' in log and 'target 0.7' in log and '%]' not in log[:0]
    assert 'IFSO lambda = weight decay of the scored weights = 0.0001' in log


# --------------------------------------------------------------------------- #
# Bad input: configs of the hook
# --------------------------------------------------------------------------- #
def hook(**kwargs):
    """Build the hook as a config would."""
    return HOOKS.build(dict(type='mmifso.PruningHook', **kwargs))


class Records(logging.Handler):
    """Collects what a runner logs."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelno, record.getMessage()))

    def warnings(self, text):
        return [m for lvl, m in self.messages
                if lvl >= logging.WARNING and text in m]


def runner_with_records(cfg):
    runner = Runner.from_cfg(cfg)
    records = Records()
    runner.logger.addHandler(records)
    return runner, records


def pruning_hook_of(runner):
    return next(h for h in runner.hooks if isinstance(h, PruningHook))


def small(cfg, max_iters=4, batch_size=8):
    cfg.train_cfg.max_iters = max_iters
    cfg.train_dataloader.batch_size = batch_size
    cfg.experiment_name = f'bad_input_{random.getrandbits(48):x}'
    return cfg


def test_unknown_criterion_lists_the_registered_ones():
    with pytest.raises(KeyError, match=r"unknown pruning criterion "
                       r"importance.type='mmifso.NoSuchImportance'.*"
                       r'mmifso.IFSOImportance.*custom_imports'):
        hook(importance=dict(type='mmifso.NoSuchImportance'))


@pytest.mark.parametrize('target', [0, 1, 1.5, -0.2, float('nan'), '0.5'])
def test_target_flops_out_of_range(target):
    with pytest.raises(ValueError, match=r'target_flops must be in \(0, 1\)'
                       '.*fraction of the FLOPs that remains'):
        hook(target_flops=target)


@pytest.mark.parametrize('value', [0, -1, 2.5])
@pytest.mark.parametrize('name,meaning', [
    ('interval', 'training iterations between two pruning steps'),
    ('channels_per_step', 'channels removed per pruning step'),
    ('score_window', 'iterations scored before each pruning step'),
])
def test_counts_must_be_positive_integers(name, meaning, value):
    with pytest.raises(ValueError, match=re.escape(
            f'{name} must be an integer >= 1 ({meaning}), got {value!r}')):
        hook(**{name: value})


def test_score_batches():
    with pytest.raises(ValueError, match='score_batches must be an integer '
                       '>= 0'):
        hook(score_batches=-1)
    # A data-driven criterion without data.
    with pytest.raises(ValueError, match='IFSOImportance needs data: set '
                       'score_batches >= 1'):
        hook(score_batches=0)
    # A data-free one is fine without.
    hook(importance=dict(type='mmifso.MagnitudeImportance'), score_batches=0)


def test_score_window_longer_than_interval():
    with pytest.raises(ValueError, match=r'score_window=5 is longer than '
                       r'interval=4; set score_window <= interval'):
        hook(interval=4, score_window=5)


def test_score_window_is_not_a_schedule_setting():
    with pytest.raises(ValueError, match='score_window is a PruningHook '
                       'setting'):
        HOOKS.build(dict(type='mmifso.OneShotPruningHook', score_window=1))


@pytest.mark.parametrize('window,scored', [(None, list(range(1, 10))),
                                           (1, [4, 8]), (2, [3, 4, 7, 8]),
                                           (4, list(range(1, 10)))])
def test_score_window_scores_before_each_step(tmp_path, window, scored):
    # start_iter=1, interval=4: pruning steps after iterations 4 and 8
    # (0-based), each scored by the last `window` iterations up to it.
    cfg = small(runner_cfg(tmp_path, target=0.3), max_iters=10)
    cfg.custom_hooks[0].update(interval=4, start_iter=1, score_window=window)
    runner = Runner.from_cfg(cfg)
    pruning = pruning_hook_of(runner)
    seen = []
    update = pruning.importance.update

    def spy(ctx, batch, seed):
        seen.append(runner.iter)
        return update(ctx, batch, seed)

    pruning.importance.update = spy
    runner.train()
    assert seen == scored
    assert pruning._steps == 2 and pruning._consumed == len(scored)


def test_bogus_cost():
    with pytest.raises(ValueError, match="cost must be 'acts', 'flops', "
                       "'none' or 'latency', got 'bogus'"):
        hook(cost='bogus')


@pytest.mark.parametrize('power', [-1, float('nan'), float('inf')])
def test_bad_cost_power(power):
    with pytest.raises(ValueError, match=r'cost_power must be a finite '
                       r'number >= 0 \(the p of score / cost\^p\)'):
        hook(cost_power=power)


@pytest.mark.parametrize('thresholds', [(0.9, 1.5), (0.9, 0.0), (1, ),
                                        (0.9, float('nan')), (0.9, '0.8')])
def test_save_thresholds_out_of_range(thresholds):
    with pytest.raises(ValueError, match=r'save_thresholds must be in '
                       r'\(0, 1\).*flops_XX.pth'):
        hook(save_thresholds=thresholds)


@pytest.mark.parametrize('thresholds', [(0.8, 0.9), (0.9, 0.9, 0.8),
                                        (0.9, 0.7, 0.8)])
def test_save_thresholds_not_decreasing(thresholds):
    with pytest.raises(ValueError, match='save_thresholds must be strictly '
                       'decreasing'):
        hook(save_thresholds=thresholds)


def test_save_thresholds_not_a_sequence():
    with pytest.raises(TypeError, match=r'save_thresholds must be a sequence '
                       r'of FLOPs ratios in \(0, 1\), e.g. \(0.9, 0.8, 0.7\)'):
        hook(save_thresholds=0.8)
    # Thresholds at or below the target are dropped, the target is added.
    assert hook(target_flops=0.5, save_thresholds=(0.9, 0.5, 0.3)
                ).thresholds == [0.9, 0.5]


def test_hook_on_a_plain_model(tmp_path):
    cfg = runner_cfg(tmp_path)
    cfg.model = copy.deepcopy(TINY_CLASSIFIER)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(TypeError, match='PruningHook needs model=dict\\('
                       'type="mmifso.PruningAlgorithm", architecture=...\\)'):
        runner.train()


def test_lam_from_zero_weight_decay(tmp_path):
    cfg = runner_cfg(tmp_path)
    cfg.optim_wrapper.optimizer.weight_decay = 0
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match="lam=None.*weight decay, which is 0: "
                       'set lam explicitly'):
        runner.train()


# --------------------------------------------------------------------------- #
# Bad input: data and numerics
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('loader', ['drop_last', 'empty_dataset'])
def test_empty_scoring_dataloader(tmp_path, loader):
    cfg = small(runner_cfg(tmp_path))
    scoring = copy.deepcopy(cfg.train_dataloader)
    if loader == 'drop_last':
        scoring.batch_size = 1000  # > 128 samples: zero full batches
        scoring.drop_last = True
    else:
        scoring.dataset.indices = 0
    cfg.custom_hooks[0].scoring_dataloader = scoring
    runner = Runner.from_cfg(cfg)
    with pytest.raises(RuntimeError, match='the scoring dataloader is empty: '
                       'check the dataset of train_dataloader'):
        runner.train()


@TASK_UTILS.register_module(force=True)
class NonFiniteTestImportance(BaseImportance):
    """Test criterion: the first ``bad_updates`` batches give one NaN (or
    Inf) score, later ones finite scores (channel index + 1)."""

    def __init__(self, bad_updates: int = 10**9, value: float = float('nan')):
        self.bad_updates = bad_updates
        self.value = value
        self.calls = 0
        super().__init__()

    def batch_scores(self, ctx, data):
        self.calls += 1
        out = [
            torch.arange(u.num_channels, dtype=torch.float64) + 1.0
            for u in ctx.units
        ]
        if self.calls <= self.bad_updates:
            out[-1][0] = self.value
        return out


@TRANSFORMS.register_module(force=True)
class NaNImageForTest:
    """Test transform: an image of NaNs (its loss is NaN)."""

    def __call__(self, results):
        results['img'] = np.full(results['img'].shape, np.nan, np.float32)
        return results


@pytest.fixture
def spy_selection(monkeypatch):
    """Records the scores every pruning step of the hook selects on."""
    calls = []
    real = ChannelSelector.select

    def spy(self, mutator, scores, *args, **kwargs):
        calls.append([s.clone() for s in scores])
        return real(self, mutator, scores, *args, **kwargs)

    monkeypatch.setattr(ChannelSelector, 'select', spy)
    return calls


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_nonfinite_scores_skip_the_step(tmp_path, spy_selection, value):
    cfg = small(
        runner_cfg(
            tmp_path,
            target=0.2,
            criterion=dict(
                type='mmifso.NonFiniteTestImportance',
                bad_updates=2,
                value=value)),
        max_iters=6)
    cfg.custom_hooks[0].stop_at_target = False
    runner, records = runner_with_records(cfg)
    runner.train()
    hook_ = pruning_hook_of(runner)
    # Steps at iterations 2, 4, 6: the first saw the bad batches (skipped),
    # the other two pruned 3 channels each.
    assert hook_._skipped_nonfinite == 1 and hook_._steps == 2
    assert len(spy_selection) == 2
    assert all(bool(torch.isfinite(s).all()) for c in spy_selection
               for s in c)  # never selected on NaN/Inf
    alive = sum(u.num_alive for u in runner.model.mutator.units)
    total = sum(u.num_channels for u in runner.model.mutator.units)
    assert total - alive == 6
    warned = records.warnings('NaN/Inf in the NonFiniteTestImportance scores')
    assert len(warned) == 1 and 'at iter 2' in warned[0]
    assert 'this pruning step is skipped, nothing is pruned' in warned[0]


def test_only_nonfinite_scores_never_prune(tmp_path, spy_selection):
    cfg = small(
        runner_cfg(tmp_path,
                   criterion=dict(type='mmifso.NonFiniteTestImportance')),
        max_iters=4)
    runner, records = runner_with_records(cfg)
    runner.train()
    assert not spy_selection
    assert all(bool(u.mask.all()) for u in runner.model.mutator.units)
    assert not list(tmp_path.glob('flops_*.pth'))
    assert len(records.warnings('NaN/Inf')) >= 2
    assert records.warnings('training ended before the FLOPs target')[0]\
        .endswith('raise max_iters/max_epochs or channels_per_step, or lower '
                  'interval')


def test_nan_loss_skips_the_step(tmp_path, spy_selection):
    """IFSO on scoring batches whose loss is NaN: no channel is pruned."""
    cfg = small(runner_cfg(tmp_path), max_iters=4)
    scoring = copy.deepcopy(cfg.train_dataloader)
    scoring.dataset.pipeline = [
        dict(type='NaNImageForTest'),
        dict(type='PackInputs')
    ]
    cfg.custom_hooks[0].scoring_dataloader = scoring
    runner, records = runner_with_records(cfg)
    runner.train()
    assert runner.iter == 4  # training went on with the clean data
    assert not spy_selection
    assert all(bool(u.mask.all()) for u in runner.model.mutator.units)
    assert len(records.warnings('NaN/Inf in the IFSOImportance scores')) == 2
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


def test_target_already_reached(tmp_path, spy_selection):
    cfg = small(runner_cfg(tmp_path, target=0.7), max_iters=2)
    runner, records = runner_with_records(cfg)
    random_prune(runner.model.mutator, 0.6)
    before = [u.mask.clone() for u in runner.model.mutator.units]
    assert runner.model.mutator.resources()['flops_ratio'] <= 0.7
    runner.train()
    assert any('already at the FLOPs target; nothing to prune' in m
               for _, m in records.messages)
    assert not spy_selection
    assert all(torch.equal(a, u.mask)
               for a, u in zip(before, runner.model.mutator.units))


# --------------------------------------------------------------------------- #
# Bad input: checkpoints loaded by the Runner
# --------------------------------------------------------------------------- #
def test_checkpoint_of_another_architecture_into_runner(tmp_path,
                                                        other_arch_ckpt):
    cfg = small(runner_cfg(tmp_path))
    cfg.load_from = other_arch_ckpt
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ArchitectureMismatch, match=OTHER_ARCH_MSG):
        runner.train()
    assert isinstance(ArchitectureMismatch('x'), CheckpointConfigMismatch)
