"""tools/analysis/benchmark.py runs and writes complete, sane JSON.

Only the structure of the results is checked, never a timing threshold: the
quick run's sizes are tiny and the machine may be busy.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, load_tool

SCRIPT = os.path.join(ROOT, 'tools', 'analysis', 'benchmark.py')


def positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(
        x, bool) and math.isfinite(x) and x > 0


def check_stats(s):
    assert set(s) >= {'min', 'median', 'max', 'times'}
    assert all(positive_finite(t) for t in s['times'])
    assert s['min'] <= s['median'] <= s['max']
    assert len(s['times']) == s['n'] >= 1


def test_interleaved_order_and_ratio():
    bench = load_tool('analysis', 'benchmark.py')
    calls = []
    res = bench.interleaved(
        dict(a=lambda: calls.append('a'), b=lambda: calls.append('b')),
        repeats=3, warmup=1)
    assert calls == ['a', 'b'] * 4
    assert res['a']['n'] == res['b']['n'] == 3
    r = bench.ratio(
        bench.stats([2.0, 4.0, 6.0]), bench.stats([1.0, 2.0, 3.0]))
    assert r['ratio'] == pytest.approx(2.0)
    assert r['ratio_paired_median'] == pytest.approx(2.0)


@pytest.fixture(scope='module')
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'bench.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, SCRIPT, '--quick', '--out', str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out) as f:
        result = json.load(f)
    return result, proc.stdout


def test_quick_run_keys(quick_result):
    result, stdout = quick_result
    assert set(result) >= {
        'quick', 'command', 'settings', 'machine', 'goals', 'gate_overhead',
        'ifso_scoring', 'latency', 'summary', 'total_time_s'
    }
    assert result['quick'] is True
    machine = result['machine']
    for key in ('cpu_model', 'torch', 'torch_threads', 'logical_cpus'):
        assert key in machine
    assert machine['torch_threads'] >= 1
    assert 'Gate overhead' in stdout and 'efficiency' in stdout


def test_quick_run_gate_and_scoring(quick_result):
    result, _ = quick_result
    models = [e['model'] for e in result['gate_overhead']]
    assert 'cifar_resnet20' in models and len(models) == 2
    for e in result['gate_overhead']:
        check_stats(e['plain_s'])
        check_stats(e['gated_s'])
        check_stats(e['gated_input_s'])  # the same model, gate='input'
        assert e['gate'] == 'weight'
        assert positive_finite(e['input_gate_ratio'])
        assert positive_finite(e['ratio'])
        assert positive_finite(e['ratio_paired_median'])
        assert positive_finite(e['ratio_of_mins'])
        assert isinstance(e['goal_met'], bool)
        assert e['units'] > 0
        assert {'foreign_share', 'cpu_per_wall'} <= set(e['cpu'])
    assert len(result['ifso_scoring']) == 2
    for e in result['ifso_scoring']:
        for key in ('train_step_s', 'exact_s', 'finite_diff_s'):
            check_stats(e[key])
        for key in ('exact_ratio', 'finite_diff_ratio',
                    'exact_ratio_paired_median', 'exact_ratio_of_mins',
                    'finite_diff_ratio_of_mins'):
            assert positive_finite(e[key])
        assert isinstance(e['goal_met'], bool)


def test_quick_run_latency(quick_result):
    result, _ = quick_result
    lat = result['latency']
    assert lat['target_flops'] == 0.5
    names = [s['structure'] for s in lat['structures']]
    assert names == ['global_l1', 'uniform_x8']
    for s in lat['structures']:
        assert 0 < s['flops_ratio'] <= 0.5 + 1e-3
        assert s['params_exported'] > 0
        assert positive_finite(s['flops_speedup'])
        assert 0 < s['activations_ratio'] < 1
        assert s['stage_channels'] and s['conv_shapes']['convs'] > 0
        assert [b['batch'] for b in s['batches']] == \
            result['settings']['latency_batches']
        for b in s['batches']:
            check_stats(b['latency_unpruned_s'])
            check_stats(b['latency_pruned_s'])
            for key in ('speedup', 'speedup_of_mins', 'flops_speedup',
                        'efficiency'):
                assert positive_finite(b[key])
            assert b['efficiency'] == pytest.approx(
                b['speedup'] / b['flops_speedup'])
            assert isinstance(b['goal_met'], bool)
    assert all(positive_finite(c['value']) and isinstance(c['met'], bool)
               for c in result['summary'])


def test_speed_section_on_a_tiny_model(tmp_path):
    """Section 4 (``--speed``) end to end on CIFAR ResNet-8 (16-64 channels)
    at 16x16, torch only, one round: the FLOPs structures hit their target,
    the latency ones run (what they reach depends on a table timed on this
    machine), every measurement is there; no timing is judged."""
    from mmengine.registry import init_default_scope

    from helpers import TINY_CLASSIFIER
    init_default_scope('mmpretrain')
    bench = load_tool('analysis', 'benchmark.py')
    arch = dict(TINY_CLASSIFIER,
                backbone=dict(TINY_CLASSIFIER['backbone'], base_channels=16),
                head=dict(TINY_CLASSIFIER['head'], in_channels=64))
    # The table times with torch's own pool: one thread, as the call says
    # (whatever OMP_NUM_THREADS and earlier tests left).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = bench.bench_speed('tiny', arch, 16, [1, 2], 1, 1, 1,
                                ['torch'], str(tmp_path), round_to=4)
    finally:
        torch.set_num_threads(threads)
    assert os.path.isfile(tmp_path / 'latency_torch.json')
    (entry, ) = res['backends']
    info = entry['structures']
    assert set(info) == {'flops50', 'flops50_x4', 'latency50',
                         'latency50_x4', 'latency50_x4_measured'}
    # Pruned to each corrected goal (the last may stop at the floor), then
    # measured; the outcome depends on timings taken here.
    feedback = info['latency50_x4_measured']['feedback']
    assert 1 <= len(feedback) <= 6
    assert all(f['predicted'] <= f['goal'] + 1e-9 for f in feedback[:-1])
    assert all(positive_finite(f['measured']) for f in feedback)
    for label, i in info.items():
        if label.startswith('flops'):
            assert i['flops_ratio'] <= 0.5
        else:  # what the table predicts depends on timings taken here
            assert positive_finite(i['predicted_ratio'])
            assert 0 < i['flops_ratio'] <= 1
        assert 'round_to=4' in i['selector'] or not label.endswith('_x4')
    assert [b['batch'] for b in entry['batches']] == [1, 2]
    for b in entry['batches']:
        assert positive_finite(b['unpruned_ms'])
        for r in b['structures'].values():
            assert positive_finite(r['ms']) and positive_finite(r['speedup'])


def test_prune_iterations_of_the_digits_config():
    """Section 5's count: the hook's selector removes channels until the
    target, in ceil(channels / channels_per_step) steps of ``interval``."""
    bench = load_tool('analysis', 'benchmark.py')
    cfg = os.path.join(ROOT, bench.PRUNE_RUN_CONFIGS['digits'])
    e = bench.prune_iterations(cfg)
    assert e['reached_flops'] <= e['target_flops'] == 0.5
    assert 0 < e['channels_to_remove'] < e['channels']
    assert e['steps'] == math.ceil(e['channels_to_remove'] /
                                   e['channels_per_step'])
    assert e['iterations'] == e['start_iter'] + e['steps'] * e['interval']


def test_prune_run_configs_differ_only_by_the_hook(tmp_path):
    """The A/B pair of section 5: same model, data, seed and length; only
    the pruned run has the PruningHook, and neither saves checkpoints."""
    bench = load_tool('analysis', 'benchmark.py')
    cfg = os.path.join(ROOT, bench.PRUNE_RUN_CONFIGS['digits'])
    a = bench.prune_run_cfg(cfg, True, 7, str(tmp_path / 'a'), None)
    b = bench.prune_run_cfg(cfg, False, 7, str(tmp_path / 'b'), None)
    hooks = [h['type'] for h in a.custom_hooks]
    assert 'mmifso.PruningHook' in hooks
    assert [h['type'] for h in b.custom_hooks] == [
        t for t in hooks if t != 'mmifso.PruningHook']
    for key in ('model', 'train_dataloader', 'optim_wrapper', 'randomness',
                'train_cfg', 'default_hooks'):
        assert a[key] == b[key], key
    assert a.train_cfg.max_iters == 7 and a.load_from is None
    assert a.default_hooks.checkpoint.interval == -1
    assert not a.default_hooks.checkpoint.save_last


def test_prune_run_variant_arm(tmp_path):
    """A third arm with other hook settings: its config carries them,
    and the section reports its own ratio (3 iterations, real Runners)."""
    bench = load_tool('analysis', 'benchmark.py')
    cfg = os.path.join(ROOT, bench.PRUNE_RUN_CONFIGS['digits'])
    variant = dict(interval=3, score_window=1)
    c = bench.prune_run_cfg(cfg, True, 3, str(tmp_path / 'c'), None, variant)
    (hook, ) = [h for h in c.custom_hooks if h['type'] == 'mmifso.PruningHook']
    assert hook['interval'] == 3 and hook['score_window'] == 1
    res = bench.bench_prune_run('digits', cfg, 2, 1, 1, str(tmp_path),
                                variant=variant)
    v = res['variant']
    assert v['hook_options'] == variant
    assert positive_finite(v['ratio']) and len(v['variant_s']['times']) == 1


def test_coco_projection_scales_with_scored_batches():
    bench = load_tool('analysis', 'benchmark.py')
    run = dict(ratio=3.0, hook=dict(score_batches=1))
    coco = dict(config='c.py', iterations=7393 * 2, score_batches=2)
    p = bench.coco_projection(run, coco)
    assert p['iterations_per_epoch'] == 7393
    assert p['pruning_phase_epochs'] == pytest.approx(2.0)
    # One scored batch costs 2 plain iterations; 2 per iteration: 4 x 2.
    assert p['extra_cost_epochs'] == pytest.approx(8.0)
    # A scoring window: 1 batch in the last of every 4 iterations of the
    # run (one scored batch then costs 8 plain iterations), 2 in the last 2
    # of every 10 of the COCO config (0.4 per iteration): 2 x 8 x 0.4.
    run = dict(ratio=3.0, hook=dict(score_batches=1, interval=4,
                                    score_window=1))
    coco = dict(config='c.py', iterations=7393 * 2, score_batches=2,
                interval=10, score_window=2)
    p = bench.coco_projection(run, coco)
    assert p['extra_per_scored_batch'] == pytest.approx(8.0)
    assert p['extra_cost_epochs'] == pytest.approx(6.4)


def test_speed_round_to_must_be_positive(capsys):
    bench = load_tool('analysis', 'benchmark.py')
    assert bench.parse_args(['--speed', '--speed-round-to', '16']
                            ).speed_round_to == 16
    with pytest.raises(SystemExit) as err:
        bench.parse_args(['--speed', '--speed-round-to', '0'])
    assert err.value.code == 2
    assert '--speed-round-to must be >= 1' in capsys.readouterr().err
