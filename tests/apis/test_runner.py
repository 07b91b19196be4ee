"""mmifso.apis.runner: the Runner set-up shared by tools/train.py and
tools/test.py (checkpoint check first, then the Runner), and the stage
helpers of the demos."""
import argparse
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from helpers import DEMO_BASELINE, build_algorithm, random_prune, runner_cfg
from mmifso.apis import (RunnerSetupError, add_runner_arguments,
                         build_runner, checkpoint_to_load, default_work_dir,
                         exit_on_errors, flops_checkpoint, load_config,
                         pruning_hook_index)


def test_checkpoint_to_load(tmp_path):
    cfg = runner_cfg(tmp_path / 'work')
    assert checkpoint_to_load(cfg) is None
    cfg.load_from = 'a.pth'
    assert checkpoint_to_load(cfg) == 'a.pth'
    # Resuming without load_from: the latest checkpoint of the work dir.
    cfg.load_from, cfg.resume = None, True
    assert checkpoint_to_load(cfg) is None  # no work dir yet
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'iter_4.pth').write_bytes(b'')
    (work / 'last_checkpoint').write_text(str(work / 'iter_4.pth'))
    assert checkpoint_to_load(cfg) == str(work / 'iter_4.pth')


def test_build_runner_checks_the_checkpoint_first(tmp_path):
    cfg = runner_cfg(tmp_path / 'missing')
    cfg.load_from = str(tmp_path / 'nope.pth')
    with pytest.raises(RunnerSetupError, match='FileNotFoundError: .*nope'):
        build_runner(cfg)
    assert not (tmp_path / 'missing').exists()  # nothing was built

    # A masked checkpoint into a config of the plain classifier.
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.3)
    masked = tmp_path / 'flops_70.pth'
    torch.save(dict(state_dict=algo.state_dict(), meta={}), masked)
    plain = runner_cfg(tmp_path / 'plain')
    plain.model = plain.model['architecture']
    plain.custom_hooks = []
    plain.load_from = str(masked)
    with pytest.raises(RunnerSetupError,
                       match='^CheckpointConfigMismatch: .*masked'):
        build_runner(plain)

    # The masked checkpoint with its pruning config: a Runner.
    cfg = runner_cfg(tmp_path / 'ok')
    cfg.load_from = str(masked)
    assert isinstance(build_runner(cfg), Runner)


def test_trust_checkpoint_sets_the_environment(tmp_path, monkeypatch):
    from mmifso.utils.io import TRUST_ENV
    # setenv first: monkeypatch then restores the variable's absence after
    # build_runner sets it (delenv of an unset variable records nothing).
    monkeypatch.setenv(TRUST_ENV, '0')
    monkeypatch.delenv(TRUST_ENV)
    build_runner(runner_cfg(tmp_path / 'a'))
    assert TRUST_ENV not in os.environ
    build_runner(runner_cfg(tmp_path / 'b'), trust_checkpoint=True)
    assert os.environ[TRUST_ENV] == '1'


def test_runner_arguments_and_work_dir():
    parser = argparse.ArgumentParser()
    add_runner_arguments(parser)
    args = parser.parse_args(
        ['--cfg-options', 'a.b=1', '--launcher', 'pytorch', '--local-rank',
         '2', '--trust-checkpoint'])
    assert args.cfg_options == {'a.b': 1}
    assert (args.launcher, args.local_rank, args.trust_checkpoint) == (
        'pytorch', 2, True)
    cfg = runner_cfg('unused')
    default_work_dir(cfg, 'cli', 'configs/x/my_config.py')
    assert cfg.work_dir == 'cli'
    default_work_dir(cfg, None, 'configs/x/my_config.py')
    assert cfg.work_dir == 'cli'  # the config's own
    cfg.work_dir = None
    default_work_dir(cfg, None, 'configs/x/my_config.py')
    assert cfg.work_dir == os.path.join('./work_dirs', 'my_config')


def test_load_config_with_cfg_options():
    """A file or an installed package's config, ``--cfg-options`` merged."""
    cfg = load_config(DEMO_BASELINE, {'model.backbone.depth': 8})
    assert cfg.model.backbone.depth == 8
    assert cfg.model.head.in_channels == 64  # the rest as the file says
    cfg = load_config('mmpretrain::resnet/resnet18_8xb16_cifar10.py',
                      {'train_dataloader.batch_size': 4})
    assert cfg.model.backbone.type == 'ResNet_CIFAR'
    assert cfg.train_dataloader.batch_size == 4
    with pytest.raises(FileNotFoundError, match='mmpretrain::nope.py'):
        load_config('mmpretrain::nope.py')


def test_exit_on_errors():
    with pytest.raises(SystemExit) as err:
        with exit_on_errors('tools/x.py', FileNotFoundError, ValueError):
            load_config('mmdet::no/such_config.py')
    assert str(err.value).startswith(
        'tools/x.py: FileNotFoundError: mmdet::no/such_config.py: no such '
        'config')
    # Other errors keep their traceback; a clean block passes through.
    with pytest.raises(KeyError):
        with exit_on_errors('tools/x.py', ValueError):
            raise KeyError('k')
    with exit_on_errors('tools/x.py', ValueError):
        pass


def test_flops_checkpoint(tmp_path):
    (tmp_path / 'flops_50.pth').write_bytes(b'')
    assert flops_checkpoint(str(tmp_path), 0.5) == str(
        tmp_path / 'flops_50.pth')
    with pytest.raises(FileNotFoundError, match='did not reach .*0.3'):
        flops_checkpoint(str(tmp_path), 0.3)


def test_pruning_arguments_are_checked_when_parsed(capsys):
    from mmifso.apis import add_pruning_arguments
    parser = argparse.ArgumentParser()
    add_pruning_arguments(parser)
    args = parser.parse_args([])
    assert (args.criterion, args.target_flops) == ('mmifso.IFSOImportance',
                                                   0.5)
    args = parser.parse_args(
        ['--criterion', 'TaylorImportance', '--target-flops', '0.3'])
    assert (args.criterion, args.target_flops) == ('TaylorImportance', 0.3)
    for bad, message in ((['--criterion', 'mmifso.Nope'],
                          "'mmifso.Nope' is not a registered criterion: "),
                         (['--target-flops', '1.5'], 'must be in (0, 1)')):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
        assert message in capsys.readouterr().err


def test_pruning_hook_index():
    cfg = Config(dict(custom_hooks=[
        dict(type='EMAHook'), dict(type='mmifso.PruningHook')]))
    assert pruning_hook_index(cfg) == 1
    for hooks in ([], [dict(type='mmifso.PruningHook')] * 2):
        with pytest.raises(ValueError, match='expected one PruningHook in '
                           f'custom_hooks, found {len(hooks)}'):
            pruning_hook_index(Config(dict(custom_hooks=hooks)))
