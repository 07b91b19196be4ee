"""The pruning hook inside a real mmengine Runner."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from helpers import TINY_CLASSIFIER


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
                mutator=dict(
                    type='mmifso.ChannelMutator',
                    demo_input=dict(
                        type='mmifso.DemoInput', input_shape=(1, 3, 16, 16)))),
            train_dataloader=dict(
                batch_size=16,
                num_workers=0,
                dataset=dict(
                    type='mmifso.DigitsDataset',
                    split='train',
                    image_size=16,
                    indices=128,
                    pipeline=[dict(type='PackInputs')]),
                sampler=dict(type='DefaultSampler', shuffle=True)),
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
    assert 'IFSO lambda = weight decay = 0.0001' in log


def test_lambda_needs_weight_decay(tmp_path):
    cfg = runner_cfg(tmp_path)
    cfg.optim_wrapper.optimizer.weight_decay = 0
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='weight decay'):
        runner.train()


@pytest.mark.parametrize('target', [0.0, 1.0, 1.5])
def test_target_out_of_range(tmp_path, target):
    from mmifso.engine.hooks import PruningHook
    with pytest.raises(ValueError, match=r'target_flops must be in \(0, 1\)'):
        PruningHook(target_flops=target)


def test_hook_rejects_plain_model(tmp_path):
    cfg = runner_cfg(tmp_path)
    cfg.model = TINY_CLASSIFIER
    runner = Runner.from_cfg(cfg)
    with pytest.raises(TypeError, match='mmifso.PruningAlgorithm'):
        runner.train()
