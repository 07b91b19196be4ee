"""tools/analysis/compare_criteria.py: a tiny end-to-end run and bad input.

The run uses a depth-8 ResNet with 4 base channels on 16x16 digits; the
accuracies in its table are checked against an evaluation written here
(masks from the saved structure, top-1 counted by hand).
"""
import json

import pytest
import torch

from helpers import TINY_CLASSIFIER, load_tool

SCRIPT = ('analysis', 'compare_criteria.py')

CONFIG = f"""
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmifso'], allow_failed_imports=False)
model = {TINY_CLASSIFIER!r}
dataset = dict(type='mmifso.DigitsDataset', image_size=16)
train_dataloader = dict(
    batch_size=32, num_workers=0,
    dataset=dict(dataset, split='train', pipeline=[
        dict(type='RandomCrop', crop_size=16, padding=1),
        dict(type='PackInputs')]),
    sampler=dict(type='DefaultSampler', shuffle=True))
test_dataloader = dict(
    batch_size=128, num_workers=0,
    dataset=dict(dataset, split='test', pipeline=[dict(type='PackInputs')]),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_evaluator = dict(type='Accuracy', topk=(1, ))
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9,
                                    weight_decay=5e-4))
param_scheduler = dict(type='CosineAnnealingLR', by_epoch=True, T_max=10)
train_cfg = dict(by_epoch=True, max_epochs=10)
test_cfg = dict()
default_hooks = dict(logger=dict(type='LoggerHook', interval=50))
"""


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from mmengine.registry import init_default_scope

    import mmifso  # noqa: F401
    from mmifso.models.algorithms.pruning_algorithm import build_architecture
    tmp = tmp_path_factory.mktemp('compare')
    cfg_path = tmp / 'tiny_digits.py'
    cfg_path.write_text(CONFIG)
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = build_architecture(dict(TINY_CLASSIFIER))
    ckpt = tmp / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    return tmp, str(cfg_path), str(ckpt)


@pytest.fixture(scope='module')
def result(setup):
    tmp, cfg, ckpt = setup
    out = load_tool(*SCRIPT).main([
        cfg, ckpt, '--targets', '0.6', '--criteria', 'tp_magnitude',
        'random', '--finetune-epochs', '1', '--score-batches', '1',
        '--work-dir', str(tmp / 'work'), '--out-prefix', 'tiny'
    ])
    return tmp, cfg, ckpt, out


def top1_by_hand(model) -> float:
    """Top-1 (%) of ``model`` on the digits test split, counted here."""
    from mmifso.datasets import DigitsDataset
    ds = DigitsDataset(split='test', image_size=16,
                       pipeline=[dict(type='PackInputs')])
    items = [ds[i] for i in range(len(ds))]
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(
            dict(inputs=[it['inputs'] for it in items],
                 data_samples=[it['data_samples'] for it in items]), False)
        pred = model(data['inputs'], mode='tensor').argmax(1)
    labels = torch.cat([s.gt_label for s in data['data_samples']])
    return float((pred == labels).float().mean() * 100)


def test_outputs_consistent(result):
    tmp, cfg, ckpt, out = result
    work = tmp / 'work'
    on_disk = json.loads((work / 'tiny.json').read_text())
    assert on_disk['rows'] == json.loads(json.dumps(out['rows']))
    assert (work / 'tiny.png').stat().st_size > 0
    table = (work / 'tiny.md').read_text()
    rows = out['rows']
    assert [(r['criterion'], r['target']) for r in rows] == [
        ('tp_magnitude', 0.6), ('random', 0.6)]
    assert out['metric'] == 'accuracy/top1'
    assert out['finetune_epochs'] == 1 and out['score_batches'] == 1
    for r in rows:
        assert r['reached'] and r['flops_ratio'] <= r['target']
        assert 0 < r['params_ratio'] < 1
        assert r['scoring_seconds'] >= 0
        assert 0 <= r['metric_before_finetune'] <= 100
        assert 0 <= r['metric_after_finetune'] <= 100
        assert f'| {r["criterion"]} | 0.60 | {r["flops_ratio"]:.3f} |' in \
            table
    # Different criteria choose different channels.
    structures = [
        json.loads((work / r['criterion'] / 'flops_0.60' /
                    'structure.json').read_text()) for r in rows
    ]
    assert structures[0]['units'] != structures[1]['units']


def test_accuracies_are_real_evaluations(result):
    from mmengine.registry import init_default_scope

    from mmifso.apis import analyse_model
    from mmifso.models.algorithms.pruning_algorithm import build_architecture
    tmp, cfg, ckpt, out = result
    init_default_scope('mmpretrain')
    model = build_architecture(dict(TINY_CLASSIFIER))
    model.load_state_dict(torch.load(ckpt)['state_dict'])
    assert out['baseline']['metric'] == pytest.approx(
        top1_by_hand(model), abs=1e-6)
    mutator = analyse_model(model, input_shape=(1, 3, 16, 16))
    for r in out['rows']:
        structure = json.loads(
            (tmp / 'work' / r['criterion'] / 'flops_0.60' /
             'structure.json').read_text())
        for unit in mutator.units:
            unit.mask.fill_(1)
        pruned = {u['name']: u['pruned'] for u in structure['units']}
        for unit in mutator.units:
            if pruned[unit.name]:
                unit.prune(pruned[unit.name])
        assert mutator.resources()['flops_ratio'] == pytest.approx(
            r['flops_ratio'])
        assert r['metric_before_finetune'] == pytest.approx(
            top1_by_hand(model), abs=1e-6)


@pytest.mark.parametrize('targets', [['1.5'], ['0'], ['0.5', '0.5']])
def test_bad_targets(setup, targets):
    tmp, cfg, ckpt = setup
    with pytest.raises(ValueError, match='--targets'):
        load_tool(*SCRIPT).main([cfg, ckpt, '--targets', *targets,
                                 '--work-dir', str(tmp / 'bad')])


def test_unknown_criterion(setup):
    tmp, cfg, ckpt = setup
    with pytest.raises(ValueError, match="unknown criterion 'nope'"):
        load_tool(*SCRIPT).main([cfg, ckpt, '--criteria', 'random', 'nope',
                                 '--work-dir', str(tmp / 'bad')])
    with pytest.raises(ValueError, match='bad JSON'):
        load_tool(*SCRIPT).main([cfg, ckpt, '--criteria', 'x={type:',
                                 '--work-dir', str(tmp / 'bad')])


def test_schedule_scaling():
    mod = load_tool(*SCRIPT)
    scaled = mod.scale_schedulers([
        dict(type='LinearLR', by_epoch=False, begin=0, end=500),
        dict(type='MultiStepLR', by_epoch=True, milestones=[100, 150]),
        dict(type='CosineAnnealingLR', by_epoch=True, T_max=30),
    ], 0.1)
    assert scaled[0]['end'] == 50
    assert scaled[1]['milestones'] == [10, 15]
    assert scaled[2]['T_max'] == 3


def test_seeds_summary_and_bn_recalibration(setup):
    """--seeds: one run per seed (own scoring batches), mean +- std and the
    reference's paired differences computed from the per-seed rows;
    --bn-recalibrate: a second one-shot evaluation with re-estimated BN."""
    import numpy as np
    tmp, cfg, ckpt = setup
    out = load_tool(*SCRIPT).main([
        cfg, ckpt, '--targets', '0.6', '--criteria', 'tp_magnitude',
        'random', '--finetune-epochs', '0', '--score-batches', '1',
        '--seeds', '0', '1', '--reference', 'random', '--bn-recalibrate', '1',
        '--work-dir', str(tmp / 'seeds'), '--out-prefix', 'seeds'
    ])
    assert out['seeds'] == [0, 1] and len(out['rows']) == 4
    rows = {(r['criterion'], r['seed']): r for r in out['rows']}
    for r in out['rows']:
        assert r['metric_before_finetune_bn_recalibrated'] is not None
    key = 'metric_before_finetune_bn_recalibrated'
    table = {r['criterion']: r for r in out['summary']['table']}
    vals = [rows[('tp_magnitude', s)][key] for s in (0, 1)]
    assert table['tp_magnitude'][key]['mean'] == pytest.approx(
        np.mean(vals))
    assert table['tp_magnitude'][key]['std'] == pytest.approx(
        np.std(vals, ddof=1))
    diff = out['summary']['paired']['0.60']['tp_magnitude'][key]
    assert diff['mean'] == pytest.approx(np.mean(
        [rows[('random', s)][key] - rows[('tp_magnitude', s)][key]
         for s in (0, 1)]))
    assert diff['n'] == 2 and len(diff['ci']) == 2
    assert (tmp / 'seeds' / 'seeds.md').read_text().count('±') >= 2
    # The seeds plot (plot_seeds) was drawn from the same summary.
    assert (tmp / 'seeds' / 'seeds.png').stat().st_size > 10_000
