"""One-shot, iterative and gradual schedules inside a real mmengine Runner
(tiny CIFAR ResNet, digits at 16x16)."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

from helpers import runner_cfg
from mmifso.engine.hooks import (GradualPruningHook, IterativePruningHook,
                                 OneShotPruningHook)
from mmifso.models.importance import ScoringContext, channel_slices
from schedule_helpers import run, schedule_cfg


def test_one_shot_prunes_once_then_fine_tunes(tmp_path):
    hook = dict(type='mmifso.OneShotPruningHook', target_flops=0.6,
                start_iter=2, score_batches=2)
    runner, ratios = run(schedule_cfg(tmp_path, hook, 6))
    assert ratios[:2] == [1.0, 1.0]
    assert all(r == ratios[2] for r in ratios[2:]) and ratios[2] <= 0.6
    assert runner.iter == 6
    pruned = torch.load(str(tmp_path / 'flops_60.pth'), map_location='cpu')
    meta = pruned['meta']['mmifso_pruning_hook']
    assert meta['done'] and meta['steps'] == 1 and meta['consumed'] == 2
    # Fine-tuning after the checkpoint changed the weights, not the masks.
    final = runner.model.state_dict()
    changed = [k for k, v in pruned['state_dict'].items()
               if k.startswith('architecture.') and v.dtype.is_floating_point
               and not torch.equal(v, final[k])]
    assert changed
    for k, v in pruned['state_dict'].items():
        if k.startswith('mutator.'):
            assert torch.equal(v, final[k])
    names = [osp.basename(p) for p in glob.glob(str(tmp_path / 'flops_*'))]
    assert names == ['flops_60.pth']
    log = open(glob.glob(str(tmp_path / '*' / '*.log'))[0]).read()
    assert 'training continues as fine-tuning' in log


def test_iterative_rounds_are_geometric(tmp_path):
    hook = dict(type='mmifso.IterativePruningHook', target_flops=0.5,
                num_rounds=3, interval=2, save_thresholds=(0.8, ))
    runner, ratios = run(schedule_cfg(tmp_path, hook, 6))
    # Rounds before iterations 0, 2, 4; training in between.
    assert ratios[0] == ratios[1] and ratios[2] == ratios[3]
    assert ratios[4] == ratios[5]
    for k, r in zip((1, 2, 3), (ratios[0], ratios[2], ratios[4])):
        assert r <= 0.5**(k / 3)
    assert 0.5**(1 / 3) - 0.15 < ratios[0] and ratios[0] > ratios[2]
    assert ratios[2] > ratios[4]
    assert sorted(osp.basename(p) for p in glob.glob(
        str(tmp_path / 'flops_*'))) == ['flops_50.pth', 'flops_80.pth']


def test_gradual_cubic_schedule_with_obs_updates(tmp_path):
    hook = dict(
        type='mmifso.GradualPruningHook',
        target_flops=0.5,
        start_iter=0,
        end_iter=6,
        frequency=2,
        initial_sparsity=0.1,
        importance=dict(type='mmifso.WoodFisherImportance', num_grads=4,
                        obs_update=True))
    cfg = schedule_cfg(tmp_path, hook, 8)
    # Without momentum a zeroed, gated weight gets no update at all (the
    # momentum buffer from before pruning would move it).
    cfg.optim_wrapper.optimizer.momentum = 0
    runner, ratios = run(cfg)
    targets = {0: 0.9, 2: 1 - (0.5 - 0.4 * (2 / 3)**3),
               4: 1 - (0.5 - 0.4 * (1 / 3)**3), 6: 0.5}
    for it, t in targets.items():
        assert ratios[it] <= t + 1e-12, (it, ratios[it], t)
        if it:
            assert ratios[it] < ratios[it - 1]
            assert ratios[it - 1] == ratios[it - 2]
    assert ratios[7] == ratios[6]
    # The OBS update zeroed the removed slices; they get no gradient after.
    algo = runner.model
    slices = channel_slices(ScoringContext(algo.architecture, algo.mutator))
    dead = 0
    for unit, unit_slices in zip(algo.mutator.units, slices.units):
        gone = (~unit.alive).nonzero().flatten()
        for c in gone.tolist():
            for s in unit_slices:
                p = slices.params[s.param]
                rows = p.detach().transpose(0, s.dim)[s.idxs[s.root == c]]
                assert (rows == 0).all()
                dead += 1
    assert dead > 0


def test_gradual_sparsity_formula():
    hook = GradualPruningHook(target_flops=0.25, start_iter=10, end_iter=40,
                              frequency=10, initial_sparsity=0.05)
    assert hook.steps == [10, 20, 30, 40]
    assert hook.sparsity_at(10) == pytest.approx(0.05)
    assert hook.sparsity_at(25) == pytest.approx(0.75 - 0.7 * 0.5**3)
    assert hook.sparsity_at(40) == pytest.approx(0.75)
    assert hook.ratio_at(15) is None and hook.ratio_at(50) is None
    assert hook.ratio_at(40) == 0.25


def test_gradual_resume_matches_uninterrupted(tmp_path):
    def cfg(work, max_iters):
        c = schedule_cfg(work, dict(
            type='mmifso.GradualPruningHook', target_flops=0.6,
            end_iter=2, frequency=1, initial_sparsity=0.1), max_iters)
        c.default_hooks.checkpoint = dict(
            type='CheckpointHook', interval=1, by_epoch=False)
        return c

    full, _ = run(cfg(tmp_path / 'full', 3))
    run(cfg(tmp_path / 'split', 1))
    resumed_cfg = cfg(tmp_path / 'split', 3)
    resumed_cfg.resume = True
    resumed_cfg.load_from = str(tmp_path / 'split' / 'iter_1.pth')
    resumed, ratios = run(resumed_cfg)
    assert len(ratios) == 2  # iterations 1 and 2 ran after the resume
    for a, b in zip(full.model.mutator.units, resumed.model.mutator.units):
        assert torch.equal(a.mask, b.mask)
    assert any((u.mask == 0).any() for u in full.model.mutator.units)


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match='initial_sparsity'):
        GradualPruningHook(target_flops=0.5, initial_sparsity=0.6)
    with pytest.raises(ValueError, match='end_iter'):
        GradualPruningHook(start_iter=5, end_iter=5)
    with pytest.raises(ValueError, match='num_rounds'):
        IterativePruningHook(num_rounds=0)
    with pytest.raises(ValueError, match='target_flops'):
        OneShotPruningHook(target_flops=1.0)


@pytest.mark.parametrize('kind', ['mmifso.NoSuchHook',
                                  'mmifso.CosinePruningHook'])
def test_unknown_hook_or_schedule_type(tmp_path, kind):
    cfg = runner_cfg(tmp_path)
    cfg.custom_hooks = [dict(type=kind)]
    with pytest.raises(KeyError, match=f'{kind} is not in the .*hook '
                       'registry. Please check whether the value'):
        Runner.from_cfg(cfg)
