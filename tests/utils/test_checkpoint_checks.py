"""Checkpoint kind / config kind checks (mmifso.utils.checkpoint_checks),
and the bad checkpoints they must reject (docs/reliability.md)."""
import copy
import hashlib
import os

import pytest
import torch
from mmengine.config import Config

from helpers import TINY_CLASSIFIER, build_algorithm, random_prune
from mmifso import apis
from mmifso.models.algorithms.pruning_algorithm import PruningAlgorithm
from mmifso.utils import UnsafeCheckpointError, load_checkpoint_file
from mmifso.utils.checkpoint_checks import (ArchitectureMismatch,
                                            CheckpointConfigMismatch,
                                            check_checkpoint_fits_model,
                                            check_checkpoint_matches_config,
                                            checkpoint_kind, model_kind,
                                            model_type_from_cfg_text)

MUTATOR = dict(
    type='mmifso.ChannelMutator',
    demo_input=dict(type='mmifso.DemoInput', input_shape=(1, 3, 32, 32)))
PLAIN_MODEL = copy.deepcopy(TINY_CLASSIFIER)
PRUNED_MODEL = dict(
    type='mmifso.PrunedModel',
    architecture=copy.deepcopy(TINY_CLASSIFIER),
    structure='x/structure.json')
MASKED_MODEL = dict(
    type='mmifso.PruningAlgorithm',
    architecture=copy.deepcopy(TINY_CLASSIFIER),
    mutator=MUTATOR)
# Pruning an exported model further.
MASKED_OF_PRUNED_MODEL = dict(
    type='mmifso.PruningAlgorithm',
    architecture=copy.deepcopy(PRUNED_MODEL),
    mutator=MUTATOR)
CONFIGS = dict(
    plain=PLAIN_MODEL,
    masked=MASKED_MODEL,
    pruned=PRUNED_MODEL,
    masked_of_pruned=MASKED_OF_PRUNED_MODEL)
DEPLOY = 'x/deploy_config.py'


def full_config(model):
    return Config(
        dict(
            default_scope='mmpretrain',
            custom_imports=dict(imports=['mmifso']),
            model=copy.deepcopy(model)))


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """One checkpoint file of every kind."""
    root = tmp_path_factory.mktemp('ckpts')
    algo = build_algorithm()
    random_prune(algo.mutator, 0.3)
    masked = dict(state_dict=algo.state_dict(), meta={})
    plain_state = {
        k[len('architecture.'):]: v
        for k, v in algo.state_dict().items()
        if k.startswith('architecture.')
    }
    pruned_state = {
        k: v[:max(1, v.shape[0] // 2)] if v.dim() else v
        for k, v in plain_state.items()
    }
    pruned = dict(
        state_dict=pruned_state,
        meta=dict(
            mmifso=dict(
                kind='pruned',
                structure='x/structure.json',
                deploy_config=DEPLOY,
                source_checkpoint='x/flops_50.pth')))
    # A checkpoint saved by the runner while fine-tuning the deploy config:
    # no mmifso meta, but the config text says PrunedModel.
    finetuned = dict(
        state_dict=pruned_state,
        meta=dict(cfg=full_config(PRUNED_MODEL).pretty_text, epoch=3))
    paths = {}
    for name, ckpt in dict(
            masked=masked,
            plain=dict(state_dict=plain_state, meta={}),
            pruned=pruned,
            finetuned=finetuned,
            bare_masked=algo.state_dict()).items():
        paths[name] = str(root / f'{name}.pth')
        torch.save(ckpt, paths[name])
    return paths


def test_checkpoint_kind(checkpoints):
    assert checkpoint_kind(checkpoints['masked']) == 'masked'
    assert checkpoint_kind(checkpoints['bare_masked']) == 'masked'
    assert checkpoint_kind(checkpoints['plain']) == 'plain'
    assert checkpoint_kind(checkpoints['pruned']) == 'pruned'
    assert checkpoint_kind(checkpoints['finetuned']) == 'pruned'
    # Loaded dicts work too.
    loaded = torch.load(checkpoints['masked'])
    assert checkpoint_kind(loaded) == 'masked'
    assert checkpoint_kind(
        dict(state_dict={'backbone.conv1.weight': torch.ones(1)})) == 'plain'
    assert checkpoint_kind({'backbone.conv1.weight': torch.ones(1)}) == 'plain'
    # A runner checkpoint of a plain config stays plain.
    assert checkpoint_kind(
        dict(
            state_dict={'a': torch.ones(1)},
            meta=dict(cfg=full_config(PLAIN_MODEL).pretty_text))) == 'plain'


def test_model_kind():
    assert model_kind(PLAIN_MODEL) == 'plain'
    assert model_kind(MASKED_MODEL) == 'masked'
    assert model_kind(PRUNED_MODEL) == 'pruned'
    assert model_kind(MASKED_OF_PRUNED_MODEL) == 'masked'
    # Full configs, scope prefixes, classes and TTA wrappers.
    assert model_kind(full_config(PRUNED_MODEL)) == 'pruned'
    assert model_kind(dict(model=MASKED_MODEL)) == 'masked'
    assert model_kind(dict(type='PruningAlgorithm')) == 'masked'
    assert model_kind(dict(type='mmifso.PrunedModel')) == 'pruned'
    assert model_kind(dict(type=PruningAlgorithm)) == 'masked'
    assert model_kind(dict(type='mmdet.RetinaNet')) == 'plain'
    assert model_kind(
        dict(type='AverageClsScoreTTA', module=PRUNED_MODEL)) == 'pruned'


def test_model_type_from_cfg_text():
    for model in CONFIGS.values():
        text = full_config(model).pretty_text
        assert model_type_from_cfg_text(text) == model['type']
    assert model_type_from_cfg_text("model = {'type': 'X'}\n") == 'X'
    assert model_type_from_cfg_text('not python (') is None
    assert model_type_from_cfg_text('a = 1\n') is None


OK = None
MASKED_MSG = (r'is a masked pruning checkpoint; evaluate it with the pruning '
              r"config that produced it \(model.type='mmifso.PruningAlgorithm'"
              r'\) or export it with `python tools/export_pruned.py CONFIG '
              r'CKPT --out-dir DIR` and use DIR/deploy_config.py')
DEPLOY_MSG = 'use the deploy config written next to it: x/deploy_config.py'
FINETUNED_MSG = "use the config it was trained with.*mmifso.PrunedModel"
UNPRUNED_MSG = (r"unpruned \(plain\) checkpoint.*PrunedModel.*model.type is "
                r"the unpruned 'ImageClassifier'")
EXPORT_FIRST_MSG = (r'masked pruning checkpoint.*export it first with '
                    r'`python tools/export_pruned.py CONFIG CKPT --out-dir '
                    r'DIR`')


@pytest.mark.parametrize(
    'config,ckpt,expected',
    [
        # matching kinds
        ('plain', 'plain', OK),
        ('masked', 'masked', OK),
        ('masked', 'bare_masked', OK),
        ('masked', 'plain', OK),  # load_from a trained model to prune it
        ('pruned', 'pruned', OK),
        ('pruned', 'finetuned', OK),
        ('masked_of_pruned', 'pruned', OK),
        ('masked_of_pruned', 'finetuned', OK),
        ('masked_of_pruned', 'masked', OK),
        # mismatches
        ('plain', 'masked', MASKED_MSG),
        ('plain', 'bare_masked', MASKED_MSG),
        ('plain', 'pruned', DEPLOY_MSG),
        ('plain', 'finetuned', FINETUNED_MSG),
        ('masked', 'pruned', DEPLOY_MSG + r'\..*To prune it further'),
        ('pruned', 'plain', UNPRUNED_MSG),
        ('pruned', 'masked', EXPORT_FIRST_MSG),
        ('masked_of_pruned', 'plain', UNPRUNED_MSG),
    ])
def test_check_matrix(checkpoints, config, ckpt, expected):
    cfg = full_config(CONFIGS[config])
    path = checkpoints[ckpt]
    if expected is OK:
        assert check_checkpoint_matches_config(cfg, path) == (
            'pruned' if ckpt == 'finetuned' else
            'masked' if ckpt == 'bare_masked' else ckpt)
        # the model config alone works the same
        check_checkpoint_matches_config(CONFIGS[config], path)
    else:
        with pytest.raises(CheckpointConfigMismatch, match=expected) as info:
            check_checkpoint_matches_config(cfg, path)
        assert path in str(info.value)
        assert isinstance(info.value, ValueError)


def test_missing_and_corrupted_files(checkpoints, tmp_path):
    cfg = full_config(PLAIN_MODEL)
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        check_checkpoint_matches_config(cfg, missing)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        checkpoint_kind(missing)
    data = open(checkpoints['masked'], 'rb').read()
    truncated = str(tmp_path / 'truncated.pth')
    with open(truncated, 'wb') as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(RuntimeError, match='corrupted or truncated'):
        check_checkpoint_matches_config(cfg, truncated)
    garbage = str(tmp_path / 'garbage.pth')
    with open(garbage, 'wb') as f:
        f.write(os.urandom(64))
    with pytest.raises(RuntimeError, match='garbage.pth'):
        checkpoint_kind(garbage)
    # A file holding something other than a dict is not a checkpoint.
    not_dict = str(tmp_path / 'list.pth')
    torch.save([1, 2], not_dict)
    with pytest.raises(RuntimeError, match='not a checkpoint'):
        checkpoint_kind(not_dict)


def test_remote_paths_are_not_checked():
    cfg = full_config(PRUNED_MODEL)
    url = 'https://download.openmmlab.com/mmclassification/v0/x.pth'
    assert check_checkpoint_matches_config(cfg, url) is None


def test_apis_reexports_the_checks():
    """``mmifso.apis`` and ``mmifso.apis.checks`` keep the public names."""
    assert apis.check_checkpoint_matches_config is \
        check_checkpoint_matches_config
    assert apis.checks.check_checkpoint_fits_model is \
        check_checkpoint_fits_model
    assert apis.checks.ArchitectureMismatch is ArchitectureMismatch


# --------------------------------------------------------------------------- #
# Bad input: checkpoints (the ckpts fixture is in tests/conftest.py)
# --------------------------------------------------------------------------- #
def pruned_model(structure='x/structure.json'):
    return dict(
        type='mmifso.PrunedModel',
        architecture=copy.deepcopy(TINY_CLASSIFIER),
        structure=structure)


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
