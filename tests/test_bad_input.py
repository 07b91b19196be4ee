"""Catalogue of bad input: every case fails (or is handled) with a clear
message that says what to do. docs/reliability.md lists the cases, their
messages and these tests.

Grouped as: configs of the hook and the algorithm, models that cannot be
pruned, data and numerics (empty loader, NaN/Inf), checkpoints, structure
files and exports.
"""
import copy
import hashlib
import json
import logging
import os
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmpretrain.registry import TRANSFORMS

from engine.test_hooks.test_pruning_hook import runner_cfg
from helpers import TINY_CLASSIFIER, build_algorithm, random_prune
from mmifso.apis.checks import (ArchitectureMismatch,
                                CheckpointConfigMismatch,
                                check_checkpoint_fits_model,
                                check_checkpoint_matches_config,
                                checkpoint_kind)
from mmifso.apis.export import ExportError, export_checkpoint
from mmifso.engine.hooks import PruningHook
from mmifso.models.importance import BaseImportance
from mmifso.registry import HOOKS, MODELS, TASK_UTILS
from mmifso.utils import UnsafeCheckpointError, load_checkpoint_file

MUTATOR16 = dict(
    type='mmifso.ChannelMutator',
    demo_input=dict(type='mmifso.DemoInput', input_shape=(1, 3, 16, 16)))
OTHER_ARCH = dict(
    copy.deepcopy(TINY_CLASSIFIER),
    backbone=dict(type='mmifso.CifarResNet', depth=8, base_channels=6),
    head=dict(TINY_CLASSIFIER['head'], in_channels=24))


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


# --------------------------------------------------------------------------- #
# 1. Configs of the pruning hook
# --------------------------------------------------------------------------- #
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


@pytest.mark.parametrize('interval', [0, -1, 2.5])
def test_interval_must_be_positive_integer(interval):
    with pytest.raises(ValueError, match=r'interval must be an integer >= 1 '
                       r'\(training iterations between two pruning steps\)'):
        hook(interval=interval)


def test_channels_per_step_zero():
    with pytest.raises(ValueError, match=r'channels_per_step must be an '
                       r'integer >= 1 \(channels removed per pruning step\), '
                       'got 0'):
        hook(channels_per_step=0)


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


def test_bogus_cost():
    with pytest.raises(ValueError, match="cost must be 'acts', 'flops' or "
                       "'none', got 'bogus'"):
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


@pytest.mark.parametrize('kind', ['mmifso.NoSuchHook',
                                  'mmifso.CosinePruningHook'])
def test_unknown_hook_or_schedule_type(tmp_path, kind):
    cfg = runner_cfg(tmp_path)
    cfg.custom_hooks = [dict(type=kind)]
    with pytest.raises(KeyError, match=f'{kind} is not in the .*hook '
                       'registry. Please check whether the value'):
        Runner.from_cfg(cfg)


# --------------------------------------------------------------------------- #
# 2. Configs of the algorithm and models that cannot be pruned
# --------------------------------------------------------------------------- #
def test_pruning_algorithm_without_architecture():
    init_default_scope('mmpretrain')
    with pytest.raises(TypeError, match="missing 1 required positional "
                       "argument: 'architecture'"):
        MODELS.build(dict(type='mmifso.PruningAlgorithm', mutator=MUTATOR16))


def test_architecture_is_not_a_model():
    init_default_scope('mmpretrain')
    with pytest.raises(TypeError, match='architecture must build an mmengine '
                       'BaseModel.*got CifarResNet'):
        MODELS.build(
            dict(
                type='mmifso.PruningAlgorithm',
                architecture=dict(type='mmifso.CifarResNet', depth=8),
                mutator=MUTATOR16))


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
                       'set importance.lam explicitly'):
        runner.train()


def test_no_prunable_units():
    from mmifso.models.mutators.channel_mutator import NoPrunableUnitsError
    arch = dict(
        type='ImageClassifier',
        backbone=dict(type='mmifso.CifarResNet', depth=8, base_channels=1),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=4))
    with pytest.raises(NoPrunableUnitsError, match='has no prunable channel '
                       'units .*why they were skipped'):
        build_algorithm(arch, min_channels=4)


def test_demo_input_of_wrong_shape():
    from mmifso.models.task_modules.demo_input import DemoInputError
    with pytest.raises(DemoInputError, match='rejected the demo input of '
                       r'shape \(1, 1, 32, 32\).*Set mutator.demo_input.'
                       'input_shape'):
        build_algorithm(input_shape=(1, 1, 32, 32))
    with pytest.raises(DemoInputError, match='input_shape must be'):
        build_algorithm(input_shape=(1, 3, 0, 32))


def test_frozen_stage():
    from mmifso.models.task_modules.channel_analyzer import FrozenUnitError
    arch = dict(
        type='ImageClassifier',
        backbone=dict(type='ResNet', depth=18, frozen_stages=1),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=512))
    with pytest.raises(FrozenUnitError, match='frozen_stages'):
        build_algorithm(arch, input_shape=(1, 3, 32, 32))


def test_min_channels_below_one():
    with pytest.raises(ValueError, match='min_channels must be >= 1, got 0'):
        build_algorithm(input_shape=(1, 3, 16, 16), min_channels=0)


def test_pruning_a_unit_below_min_channels():
    algo = build_algorithm(input_shape=(1, 3, 16, 16), min_channels=2)
    unit = algo.mutator.units[0]
    with pytest.raises(ValueError, match=f'unit {unit.name}: pruning '
                       f'{unit.num_channels - 1} channels would leave fewer '
                       'than min_channels=2'):
        unit.prune(list(range(unit.num_channels - 1)))
    with pytest.raises(ValueError, match=f'unit {unit.name}: 1 channels kept, '
                       'fewer than min_channels=2'):
        algo.mutator.set_choices({unit.name: [0]})
    with pytest.raises(ValueError, match='channel index out of range'):
        algo.mutator.set_choices({unit.name: [0, unit.num_channels]})
    with pytest.raises(KeyError, match='unknown units'):
        algo.mutator.set_choices({'nope': [0]})
    assert unit.num_alive == unit.num_channels  # nothing changed


# --------------------------------------------------------------------------- #
# 3. Data and numerics
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
    import mmifso.engine.hooks.pruning_hook as module
    calls = []
    real = module.select_channels

    def spy(mutator, scores, *args, **kwargs):
        calls.append([s.clone() for s in scores])
        return real(mutator, scores, *args, **kwargs)

    monkeypatch.setattr(module, 'select_channels', spy)
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
# 4. Checkpoints
# --------------------------------------------------------------------------- #
def full_config(model):
    return Config(
        dict(
            default_scope='mmpretrain',
            custom_imports=dict(imports=['mmifso']),
            model=copy.deepcopy(model)))


MASKED_MODEL = dict(
    type='mmifso.PruningAlgorithm',
    architecture=copy.deepcopy(TINY_CLASSIFIER),
    mutator=MUTATOR16)


def pruned_model(structure='x/structure.json'):
    return dict(
        type='mmifso.PrunedModel',
        architecture=copy.deepcopy(TINY_CLASSIFIER),
        structure=structure)


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    """Checkpoints of every kind, and broken ones."""
    root = tmp_path_factory.mktemp('bad_ckpts')
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.3)
    plain = {
        k[len('architecture.'):]: v
        for k, v in algo.state_dict().items() if k.startswith('architecture.')
    }
    files = dict(
        masked=dict(state_dict=algo.state_dict(), meta={}),
        plain=dict(state_dict=plain, meta={}),
        pruned=dict(
            state_dict={k: v[:1] if v.dim() else v
                        for k, v in plain.items()},
            meta=dict(mmifso=dict(kind='pruned',
                                  deploy_config='x/deploy_config.py'))))
    paths = {}
    for name, ckpt in files.items():
        paths[name] = str(root / f'{name}.pth')
        torch.save(ckpt, paths[name])
    data = open(paths['masked'], 'rb').read()
    paths['truncated'] = str(root / 'truncated.pth')
    with open(paths['truncated'], 'wb') as f:
        f.write(data[:len(data) * 2 // 3])
    paths['random'] = str(root / 'random.pth')
    with open(paths['random'], 'wb') as f:
        f.write(random.Random(0).randbytes(4096))
    return paths


def test_missing_checkpoint(tmp_path):
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match=f'checkpoint {missing} does '
                       'not exist'):
        check_checkpoint_matches_config(full_config(MASKED_MODEL), missing)


@pytest.mark.parametrize('name', ['random', 'truncated'])
def test_corrupted_or_truncated_checkpoint(ckpts, name):
    with pytest.raises(RuntimeError, match=f'cannot read checkpoint '
                       f'{ckpts[name]} .*the file is corrupted or truncated: '
                       'use another checkpoint or write it again'):
        load_checkpoint_file(ckpts[name])
    with pytest.raises(RuntimeError, match='corrupted or truncated'):
        check_checkpoint_matches_config(full_config(MASKED_MODEL),
                                        ckpts[name])


class RunsCode:
    """Unpickling this would call os.system."""

    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null', ))


def test_checkpoint_with_pickled_code(tmp_path):
    path = str(tmp_path / 'evil.pth')
    torch.save(dict(state_dict={}, meta=dict(x=RunsCode())), path)
    with pytest.raises(UnsafeCheckpointError, match=f'checkpoint {path} '
                       r'refers to posix.system.*could run arbitrary code.*'
                       'trust_checkpoint=True.*MMIFSO_TRUST_CHECKPOINTS=1'):
        check_checkpoint_matches_config(full_config(MASKED_MODEL), path)
    assert issubclass(UnsafeCheckpointError, RuntimeError)  # tools exit


def test_masked_checkpoint_into_plain_config(ckpts):
    with pytest.raises(CheckpointConfigMismatch, match='is a masked pruning '
                       'checkpoint; evaluate it with the pruning config that '
                       'produced it .*or export it with'):
        check_checkpoint_matches_config(full_config(TINY_CLASSIFIER),
                                        ckpts['masked'])


def test_masked_checkpoint_into_pruned_config(ckpts):
    with pytest.raises(CheckpointConfigMismatch, match='export it first with '
                       '`python tools/export_pruned.py'):
        check_checkpoint_matches_config(full_config(pruned_model()),
                                        ckpts['masked'])


def test_plain_checkpoint_into_pruned_config(ckpts):
    with pytest.raises(CheckpointConfigMismatch, match=r'unpruned \(plain\) '
                       "checkpoint.*model.type is the unpruned "
                       "'ImageClassifier'"):
        check_checkpoint_matches_config(full_config(pruned_model()),
                                        ckpts['plain'])


def test_pruned_checkpoint_into_pruning_config(ckpts):
    with pytest.raises(CheckpointConfigMismatch, match='use the deploy config '
                       'written next to it: x/deploy_config.py.*To prune it '
                       'further'):
        check_checkpoint_matches_config(full_config(MASKED_MODEL),
                                        ckpts['pruned'])


@pytest.fixture(scope='module')
def other_arch_ckpt(tmp_path_factory):
    """A masked checkpoint of another architecture, saved as a runner
    would: config text in meta, config file next to it."""
    root = tmp_path_factory.mktemp('other_arch')
    other = build_algorithm(OTHER_ARCH, input_shape=(1, 3, 16, 16))
    random_prune(other.mutator, 0.3)
    cfg = runner_cfg(root)
    cfg.model.architecture = copy.deepcopy(OTHER_ARCH)
    cfg.dump(str(root / 'prune_other.py'))
    path = str(root / 'flops_70.pth')
    torch.save(
        dict(state_dict=other.state_dict(), meta=dict(cfg=cfg.pretty_text)),
        path)
    return path


OTHER_ARCH_MSG = (
    r'checkpoint .*flops_70.pth was saved from another architecture: \d+ '
    r'tensors have other shapes than in the model built from the config '
    r'\(architecture\..*checkpoint \[6, .* vs model \[4, .*The run that saved '
    r'it built model=PruningAlgorithm\(architecture=ImageClassifier\(backbone='
    r"CifarResNet\(depth=8, base_channels=6\).*this config builds model="
    r'PruningAlgorithm\(architecture=ImageClassifier\(backbone=CifarResNet\('
    r'depth=8, base_channels=4\).*Use the config of the run that saved the '
    r'checkpoint \(next to it: .*prune_other.py\)')


def test_checkpoint_of_another_architecture_into_runner(tmp_path,
                                                        other_arch_ckpt):
    cfg = small(runner_cfg(tmp_path))
    cfg.load_from = other_arch_ckpt
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ArchitectureMismatch, match=OTHER_ARCH_MSG):
        runner.train()
    assert isinstance(ArchitectureMismatch('x'), CheckpointConfigMismatch)


def test_checkpoint_of_another_architecture_into_export(
        tmp_path, other_arch_ckpt):
    with pytest.raises(ExportError, match=OTHER_ARCH_MSG):
        export_checkpoint(runner_cfg(tmp_path), other_arch_ckpt,
                          str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


def test_plain_checkpoint_with_another_head_is_tolerated():
    """Another number of classes (a new classifier) is not an error for a
    plain checkpoint: only the head is skipped, with a warning."""
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    other = build_algorithm(
        dict(TINY_CLASSIFIER, head=dict(TINY_CLASSIFIER['head'],
                                        num_classes=5)),
        input_shape=(1, 3, 16, 16))
    plain = {
        k[len('architecture.'):]: v
        for k, v in other.state_dict().items()
        if k.startswith('architecture.')
    }
    tolerated = check_checkpoint_fits_model(algo, dict(state_dict=plain))
    assert {k for k, _, _ in tolerated} == {
        'architecture.head.fc.weight', 'architecture.head.fc.bias'}
    # ... but not for a masked checkpoint, nor when asked to be strict.
    with pytest.raises(ArchitectureMismatch, match='head.fc.weight'):
        check_checkpoint_fits_model(algo, dict(state_dict=other.state_dict()))
    with pytest.raises(ArchitectureMismatch):
        check_checkpoint_fits_model(
            algo, dict(state_dict=plain), allow_head_mismatch=False)


# --------------------------------------------------------------------------- #
# 5. Structure files and exports
# --------------------------------------------------------------------------- #
@pytest.fixture(scope='module')
def structure_file(tmp_path_factory):
    from mmifso.structures import make_structure, save_structure
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.3)
    path = str(tmp_path_factory.mktemp('structure') / 'structure.json')
    save_structure(make_structure(algo.mutator), path)
    return path


def test_structure_of_another_architecture(structure_file):
    from mmifso.models.algorithms import PrunedModel
    from mmifso.structures import StructureMismatchError
    init_default_scope('mmpretrain')
    with pytest.raises(StructureMismatchError, match='channels in the '
                       'structure file but .* in the model: the structure '
                       'file belongs to another architecture'):
        PrunedModel(OTHER_ARCH, structure_file)
    PrunedModel(TINY_CLASSIFIER, structure_file)  # its own one builds


@pytest.mark.parametrize('broken', ['truncated', 'format', 'version',
                                    'missing'])
def test_broken_structure_file(tmp_path, structure_file, broken):
    from mmifso.structures import StructureMismatchError, load_structure
    text = open(structure_file).read()
    path = tmp_path / 'structure.json'
    if broken == 'truncated':
        path.write_text(text[:len(text) // 2])
        error = StructureMismatchError
        match = 'is not valid JSON .*corrupted or truncated: export it again'
    elif broken == 'format':
        path.write_text(json.dumps(dict(units=[])))
        error, match = StructureMismatchError, 'is not an mmifso structure'
    elif broken == 'version':
        path.write_text(text.replace('"version": 1', '"version": 99'))
        error, match = StructureMismatchError, 'structure version 99'
    else:
        error, match = FileNotFoundError, 'create it with tools/export_pruned'
    with pytest.raises(error, match=match):
        load_structure(str(path))


def test_structure_and_checkpoint_of_two_exports(tmp_path, ckpts):
    """The checkpoint records the SHA-256 of the structure exported with it
    (an export killed between its files leaves them mixed)."""
    structure = tmp_path / 'structure.json'
    structure.write_text('{"format": "mmifso.pruned_structure"}')
    ckpt = torch.load(ckpts['pruned'])
    ckpt['meta']['mmifso'].update(
        structure_sha256=hashlib.sha256(b'another export').hexdigest(),
        source_checkpoint='work/flops_50.pth')
    path = str(tmp_path / 'pruned.pth')
    torch.save(ckpt, path)
    cfg = full_config(pruned_model(str(structure)))
    with pytest.raises(CheckpointConfigMismatch, match='was exported together '
                       'with another structure file .*an export was '
                       'interrupted between its files.*Run the export again: '
                       '`python tools/export_pruned.py CONFIG CKPT --out-dir '
                       r'DIR` \(CKPT = work/flops_50.pth\)'):
        check_checkpoint_matches_config(cfg, path)
    ckpt['meta']['mmifso']['structure_sha256'] = hashlib.sha256(
        structure.read_bytes()).hexdigest()
    torch.save(ckpt, path)
    assert check_checkpoint_matches_config(cfg, path) == 'pruned'


def test_export_needs_a_masked_checkpoint_and_a_pruning_config(
        tmp_path, ckpts):
    cfg = runner_cfg(tmp_path)
    with pytest.raises(ExportError, match='holds no channel masks: it is not '
                       'a checkpoint of a pruning run.*Export the '
                       'flops_XX.pth'):
        export_checkpoint(cfg, ckpts['plain'], str(tmp_path / 'out'))
    plain_cfg = copy.deepcopy(cfg)
    plain_cfg.model = copy.deepcopy(TINY_CLASSIFIER)
    with pytest.raises(ExportError, match='export needs the pruning config '
                       r'\(model.type="mmifso.PruningAlgorithm"\)'):
        export_checkpoint(plain_cfg, ckpts['masked'], str(tmp_path / 'out'))
    assert checkpoint_kind(ckpts['masked']) == 'masked'
