"""tools/analysis/compare_hook_settings.py: two PruningHook settings from
one baseline, pruned, exported and fine-tuned through real Runners."""
import json
import os.path as osp

import pytest
import torch
from mmengine.registry import init_default_scope

from helpers import ROOT, TINY_CLASSIFIER, load_tool
from mmifso.registry import MODELS

DEMO = osp.join(ROOT, 'configs', 'demo')

#: The demo's prune config at toy size: 128 images, 2 channels per step.
PRUNE = f"""
_base_ = [{osp.join(DEMO, 'ifso_resnet20_prune_digits.py')!r}]
model = dict(architecture={TINY_CLASSIFIER!r})
train_dataloader = dict(batch_size=16, dataset=dict(indices=128))
test_dataloader = dict(dataset=dict(indices=64))
train_cfg = dict(max_epochs=4)
custom_hooks = [
    dict(type='mmifso.PruningHook',
         importance=dict(type='mmifso.IFSOImportance'), target_flops=0.7,
         interval=3, channels_per_step=2, score_batches=1,
         save_thresholds=())
]
"""

#: The demo's fine-tune config on the exported toy model (flat PrunedModel:
#: the classifier's own fields, its type as ``architecture_type``).
FINETUNE = f"""
_base_ = [{osp.join(DEMO, 'ifso_resnet20_finetune_digits.py')!r}]
model = dict(_delete_=True, type='mmifso.PrunedModel',
             architecture_type='ImageClassifier', structure='',
             **{ {k: v for k, v in TINY_CLASSIFIER.items() if k != 'type'}!r})
train_dataloader = dict(batch_size=16, dataset=dict(indices=64))
test_dataloader = dict(dataset=dict(indices=64))
train_cfg = dict(max_epochs=1, val_interval=1)
param_scheduler = []
default_hooks = dict(checkpoint=dict(interval=1))
"""


@pytest.fixture
def setup(tmp_path):
    """The toy prune/fine-tune configs, a baseline checkpoint and the tool."""
    init_default_scope('mmpretrain')
    (tmp_path / 'prune.py').write_text(PRUNE)
    (tmp_path / 'finetune.py').write_text(FINETUNE)
    torch.manual_seed(0)
    ckpt = str(tmp_path / 'baseline.pth')
    torch.save(dict(state_dict=MODELS.build(TINY_CLASSIFIER).state_dict(),
                    meta={}), ckpt)
    args = [str(tmp_path / 'prune.py'), str(tmp_path / 'finetune.py'), ckpt]
    return load_tool('analysis', 'compare_hook_settings.py'), args


def test_two_settings_side_by_side(setup, tmp_path):
    tool, args = setup
    work = tmp_path / 'work'
    result = tool.main([
        *args, '--variant', 'shipped', '--variant', 'window',
        'score_window=1', '--work-dir', str(work), '--out', 'ab'])
    runs = {r['variant']: r for r in result['runs']}
    assert runs['window']['hook_options'] == dict(score_window=1)
    for r in runs.values():
        assert r['flops_ratio'] <= 0.7
        assert 0 <= r['after_pruning'] <= 100
        assert 0 <= r['after_finetune'] <= 100
        assert r['pruning_steps'] >= 1
    # Every iteration scores one batch; the window only the step's own.
    steps = runs['window']['pruning_steps']
    assert runs['window']['scored_batches'] == steps
    assert runs['shipped']['scored_batches'] > runs['window'][
        'scored_batches']
    saved = json.load(open(work / 'ab.json'))
    assert set(saved['summary']) == {'shipped', 'window'}
    table = (work / 'ab.md').read_text()
    assert '| window | score_window=1 |' in table


def test_a_variant_short_of_its_target_stops_with_advice(setup, tmp_path):
    """A variant that prunes too rarely for the run's iterations ends the
    comparison naming it and the fix; the finished runs are kept."""
    tool, args = setup
    work = tmp_path / 'work'
    with pytest.raises(SystemExit) as err:
        tool.main([
            *args, '--variant', 'shipped', '--variant', 'rare',
            'interval=64', '--cfg-options', 'train_cfg.max_epochs=3',
            '--work-dir', str(work), '--out', 'ab'])
    assert str(err.value).startswith(
        "compare_hook_settings.py: variant 'rare' (seed 0) ended after 24 "
        'iterations and 0 pruning steps before its flops target 0.7')
    assert '--cfg-options train_cfg.max_epochs=N' in str(err.value)
    saved = json.load(open(work / 'ab.json'))
    assert [r['variant'] for r in saved['runs']] == ['shipped']
    assert saved['cfg_options'] == {'train_cfg.max_epochs': 3}


def test_an_override_that_would_change_nothing_stops_first(setup, tmp_path):
    """A --cfg-options override of a config-file variable ends the tool with
    the field to override, before any run trains."""
    tool, args = setup
    work = tmp_path / 'work'
    with pytest.raises(SystemExit) as err:
        tool.main([
            *args, '--variant', 'shipped', '--cfg-options',
            'dataset_type=Other', '--work-dir', str(work), '--out', 'ab'])
    assert str(err.value).startswith(
        'compare_hook_settings.py: ParseTimeVariableError: --cfg-options '
        'dataset_type=Other would change nothing')
    assert not (work / 'ab.json').exists()
