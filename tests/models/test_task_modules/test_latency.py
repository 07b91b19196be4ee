"""The latency table (build, key, cache, prediction) and selection by
latency, on a tiny classifier. No timed assertions: the timings are real
but only their bookkeeping is checked."""
import copy
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

from helpers import (LATENCY_FAST, LATENCY_SHAPE, TINY_CLASSIFIER,
                     build_algorithm, digits_batch, runner_cfg,
                     warnings_logged)
from mmifso.apis import prune_to_target
from mmifso.models.mutators import ChannelSelector
from mmifso.models.mutators.export import export_pruned_model
from mmifso.models.mutators.latency import (build_model_latency_table,
                                            latency_ratio,
                                            predict_latency_ms,
                                            uniform_masks)
from mmifso.models.task_modules.latency import (ORT_TIMING_CONFIG,
                                                TABLE_VERSION, LatencyTable,
                                                LatencyTableMismatch,
                                                TensorModeWrapper,
                                                block_samples, calibrate,
                                                latency_key,
                                                runner_for,
                                                script_for_inference)

SHAPE, FAST = LATENCY_SHAPE, LATENCY_FAST


def test_table_contents_and_calibration(table_path):
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    table = LatencyTable.load(table_path,
                              latency_key(algo.mutator, SHAPE))
    data = json.load(open(table_path))
    assert data['key']['input_shape'] == list(SHAPE)
    assert data['key']['backend'] == 'torch'
    # Every gated conv/linear is in the table with its measured grid.
    gated = set(algo.mutator._sites['in']) | set(algo.mutator._sites['out'])
    assert set(table.layers) == {
        n for n in gated if algo.mutator.layer_records[n].spatial}
    for lay in table.layers.values():
        assert len(lay['ms']) == len(lay['in_widths'])
        assert all(len(r) == len(lay['out_widths']) for r in lay['ms'])
        assert lay['in_widths'] == sorted(lay['in_widths'])
    # Calibration: the prediction equals the two measured whole models.
    cal = table.calibration
    assert table.full_ms == pytest.approx(cal['whole_full_ms'], rel=1e-9)
    for u, m in zip(algo.mutator.units, uniform_masks(algo.mutator, 0.5)):
        u.mask.copy_(m)
    # Both measured points are fitted (rest slope >= 0: additive rest;
    # otherwise scaled layers), unless noise made the fitted scale <= 0.
    if cal['b_raw_ms'] >= 0 or cal['whole_full_ms'] > cal['whole_half_ms']:
        assert predict_latency_ms(table, algo.mutator) == pytest.approx(
            cal['whole_half_ms'], rel=1e-9)
    assert cal['scale'] > 0 and (cal['b_raw_ms'] < 0 or cal['scale'] == 1)
    assert set(data['unit_curves']) == {u.name for u in algo.mutator.units}


def test_calibration_forms():
    # Rest growing with the activations (torch eager): additive rest.
    cal = calibrate(t_full=110, t_half=40, layers_full=100, layers_half=35,
                    acts_half=0.5)
    assert cal['scale'] == 1 and cal['b_ms'] == pytest.approx(10)
    assert 100 + cal['a_ms'] + cal['b_ms'] == pytest.approx(110)
    assert 35 + cal['a_ms'] + 0.5 * cal['b_ms'] == pytest.approx(40)
    # Isolated layers over-counting (ONNX Runtime): the layers are scaled,
    # both points fitted, marginal costs stay positive.
    cal = calibrate(t_full=58, t_half=16, layers_full=78, layers_half=24,
                    acts_half=0.5)
    assert cal['b_raw_ms'] < 0 and cal['b_ms'] == 0
    assert cal['scale'] == pytest.approx(42 / 54)
    assert cal['scale'] * 78 + cal['a_ms'] == pytest.approx(58)
    assert cal['scale'] * 24 + cal['a_ms'] == pytest.approx(16)
    # Noise making the half-width model the slower one: one scale through
    # the unpruned model.
    cal = calibrate(t_full=50, t_half=52, layers_full=78, layers_half=24,
                    acts_half=0.5)
    assert cal['scale'] == pytest.approx(50 / 78)
    assert cal['a_ms'] == pytest.approx(0, abs=1e-9)


def test_table_of_another_setting_is_refused(table_path):
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    key = latency_key(algo.mutator, SHAPE)
    for field, value in [('input_shape', [1, 3, 16, 16]),
                         ('backend', 'onnxruntime'), ('threads', 99),
                         ('device', 'another CPU')]:
        with pytest.raises(LatencyTableMismatch, match=f'{field}: table'):
            LatencyTable.load(table_path, dict(key, **{field: value}))
    other = copy.deepcopy(TINY_CLASSIFIER)
    other['backbone']['base_channels'] = 8
    other['head']['in_channels'] = 32
    wide = build_algorithm(other, input_shape=(1, 3, 16, 16))
    sel = ChannelSelector(cost='latency', latency_table=table_path)
    zeros = [torch.zeros(u.num_channels) for u in wide.mutator.units]
    with pytest.raises(LatencyTableMismatch,
                       match='model: table.*latency_table.py'):
        sel.select(wide.mutator, zeros, target_latency=0.5)


def test_table_of_an_older_version_is_refused(table_path, tmp_path):
    data = json.load(open(table_path))
    old = str(tmp_path / 'old.json')
    json.dump(dict(data, version=TABLE_VERSION - 1), open(old, 'w'))
    with pytest.raises(LatencyTableMismatch, match='rebuild it'):
        LatencyTable.load(old)


def test_onnxruntime_sessions_do_not_spin(monkeypatch):
    """Every ONNX Runtime session the table builds (one per layer, grid
    point and call; the two whole models of the calibration) disables the
    spinning of its worker threads: spinning threads of the sessions called
    just before steal the cores of the one timed."""
    import onnxruntime as ort
    created = []
    real = ort.InferenceSession

    def session(*args, **kwargs):
        created.append(kwargs['sess_options'])
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, 'InferenceSession', session)
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    table = build_model_latency_table(
        algo.architecture, algo.mutator, SHAPE, backend='onnxruntime',
        threads=1, fractions=(0.5, 1.0), **FAST)
    grid = sum(
        len(lay['in_widths']) * len(lay['out_widths']) * lay['calls']
        for lay in table.layers.values())
    assert table.key['backend'] == 'onnxruntime'
    assert len(created) == grid + 2  # + the whole model, full and half
    assert ORT_TIMING_CONFIG['session.intra_op.allow_spinning'] == '0'
    for opts in created:
        assert opts.intra_op_num_threads == 1
        for key, value in ORT_TIMING_CONFIG.items():
            assert opts.get_session_config_entry(key) == value


def test_torchscript_backend(tmp_path):
    """The TorchScript module of an exported model computes what the eager
    one does, with every BatchNorm folded into its convolution; a table of
    that backend is built and keyed as such, and refuses a thread count
    torch does not run."""
    from helpers import random_prune, randomise_norms
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    randomise_norms(algo)
    random_prune(algo.mutator, 0.4)
    pruned, _ = export_pruned_model(algo.architecture, algo.mutator)
    for u in algo.mutator.units:
        u.mask.fill_(1)
    wrapper = TensorModeWrapper(pruned).eval()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    scripted = script_for_inference(wrapper, x)
    kinds = {n.kind() for n in scripted.graph.nodes()}
    assert 'aten::batch_norm' not in kinds
    assert any('conv' in k for k in kinds)
    with torch.no_grad():
        ref, got = wrapper(x)[0], scripted(x)[0]
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max())
    runner_for(wrapper, x, 'torchscript', torch.get_num_threads())()
    # The README's deployment: save the frozen trace, optimise after load.
    with torch.no_grad():
        torch.jit.save(torch.jit.freeze(torch.jit.trace(wrapper, x)),
                       str(tmp_path / 'model.pt'))
        loaded = torch.jit.optimize_for_inference(
            torch.jit.load(str(tmp_path / 'model.pt')))
        assert torch.allclose(loaded(x)[0], ref, rtol=1e-4,
                              atol=1e-5 * ref.abs().max())
    table = build_model_latency_table(
        algo.architecture, algo.mutator, SHAPE, backend='torchscript',
        fractions=(0.5, 1.0), **FAST)
    assert table.key['backend'] == 'torchscript'
    assert table.key == latency_key(algo.mutator, SHAPE, 'torchscript')
    assert table.full_ms > 0 and all(
        min(min(r) for r in lay['ms']) > 0 for lay in table.layers.values())
    path = str(tmp_path / 'ts.json')
    table.save(path)
    with pytest.raises(LatencyTableMismatch, match='backend: table'):
        LatencyTable.load(path, latency_key(algo.mutator, SHAPE))
    with pytest.raises(ValueError, match='torch.set_num_threads'):
        latency_key(algo.mutator, SHAPE, 'torchscript',
                    threads=torch.get_num_threads() + 1)


def test_block_samples_runs_each_function_in_blocks():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in 'abc'}
    samples = block_samples(fns, blocks=4, calls=2, seed=1)
    assert {k: len(v) for k, v in samples.items()} == dict(a=8, b=8, c=8)
    # Each block: one untimed call, then the timed ones, back to back.
    runs = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert len(runs) == 12 and all(len(set(r)) == 1 for r in runs)
    assert all(sorted(r[0] for r in runs[i:i + 3]) == list('abc')
               for i in range(0, 12, 3))


@pytest.mark.parametrize('round_to, target', [(1, 0.6), (4, 0.85)])
def test_select_to_a_latency_target(synthetic_path, round_to, target):
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    sel = ChannelSelector(cost='latency', latency_table=synthetic_path,
                          round_to=round_to)
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(u.num_channels, generator=g)
              for u in algo.mutator.units]
    sel.select(algo.mutator, scores, target_latency=target)
    assert target - 0.1 < sel.ratio(algo.mutator, 'latency') <= target
    if round_to > 1:
        assert all(u.num_alive % round_to == 0 or u.num_channels < round_to
                   for u in algo.mutator.units)


def test_both_targets_and_missing_table():
    with pytest.raises(ValueError, match='not both'):
        ChannelSelector().select(None, [], target_flops=0.5,
                                 target_latency=0.5)
    with pytest.raises(ValueError, match='latency_table.py'):
        ChannelSelector(cost='latency')
    from mmifso.engine.hooks import OneShotPruningHook, PruningHook
    for hook in (PruningHook, OneShotPruningHook):
        with pytest.raises(ValueError, match='not both'):
            hook(target_flops=0.5, target_latency=0.5)
        with pytest.raises(ValueError, match='latency_table=PATH'):
            hook(target_latency=0.5)
        with pytest.raises(ValueError, match='measure_latency needs'):
            hook(measure_latency=True)
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    with pytest.raises(ValueError, match='exactly one'):
        prune_to_target(algo.architecture, algo.mutator,
                        'mmifso.MagnitudeImportance', [], target_flops=0.5,
                        target_latency=0.5)


@pytest.mark.parametrize('feedback', [None, dict(max_measurements=2)])
def test_unreachable_latency_target_stops_at_best_point(
        synthetic_path, feedback):
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    with warnings_logged() as out:
        res = prune_to_target(
            algo.architecture, algo.mutator, 'mmifso.MagnitudeImportance',
            [digits_batch(4, size=16)], target_latency=0.01,
            step_fraction=0.2,
            selection=dict(latency_table=synthetic_path,
                           max_prune_ratio=0.5),
            latency_feedback=feedback)
    assert res['reached'] is False and res['latency_ratio'] > 0.01
    assert any('cannot be reached' in m for m in out)
    if feedback:  # measured once, at the floor
        assert len(res['latency_feedback']) == 1
    for u in algo.mutator.units:  # at the floor of max_prune_ratio
        assert u.num_alive == -(-u.num_channels // 2)


def test_hook_prunes_to_a_latency_target(tmp_path, synthetic_path):
    cfg = runner_cfg(tmp_path, max_iters=40)
    hook = cfg.custom_hooks[0]
    hook.pop('target_flops', None)
    hook.update(target_latency=0.8, cost='latency',
                selection=dict(latency_table=synthetic_path),
                save_thresholds=(0.9, ), measure_latency=True)
    runner = Runner.from_cfg(cfg)
    runner.train()
    algo = runner.model
    names = sorted(osp.basename(p)
                   for p in glob.glob(str(tmp_path / 'latency_*.pth')))
    assert names == ['latency_80.pth', 'latency_90.pth']
    assert not glob.glob(str(tmp_path / 'flops_*.pth'))
    table = LatencyTable.load(synthetic_path)
    assert latency_ratio(table, algo.mutator) <= 0.8
    log = open(glob.glob(str(tmp_path / '*' / '*.log'))[0]).read()
    assert 'predicted latency' in log and 'saved latency_80.pth' in log
    # Measured at each threshold (the synthetic table's timings are not this
    # machine's, so only the presence of the figures is checked).
    assert log.count('measured ') >= 2 and 'unpruned' in log


def test_hook_latency_feedback(tmp_path, synthetic_path):
    """The hook stops short of the target, measures, and saves the target's
    checkpoint once the measured ratio is within tol or the measurements
    are spent (which, depends on this machine's timings of the tiny model;
    the synthetic table predicts them poorly)."""
    cfg = runner_cfg(tmp_path, max_iters=120)
    hook = cfg.custom_hooks[0]
    hook.pop('target_flops', None)
    hook.update(target_latency=0.8, cost='latency',
                selection=dict(latency_table=synthetic_path),
                save_thresholds=(0.9, ),
                latency_feedback=dict(max_measurements=2))
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = [h for h in runner.hooks if type(h).__name__ == 'PruningHook'][0]
    fb = hook.feedback
    assert hook.done and 1 <= len(fb.history) <= 2
    assert fb.history[0]['goal'] == pytest.approx(0.8 + 0.3 * 0.2)
    assert all(h['predicted'] <= h['goal'] for h in fb.history)
    assert fb.reached == (fb.history[-1]['measured'] <= 0.8)
    assert osp.isfile(tmp_path / 'latency_80.pth')
    log = open(glob.glob(str(tmp_path / '*' / '*.log'))[0]).read()
    assert log.count('latency feedback: predicted ratio') == len(fb.history)


def test_latency_feedback_bad_input(synthetic_path):
    from mmifso.engine.hooks import OneShotPruningHook, PruningHook
    with pytest.raises(ValueError, match='set target_latency'):
        PruningHook(importance=dict(type='mmifso.MagnitudeImportance'),
                    target_flops=0.5, latency_feedback=True)
    with pytest.raises(TypeError, match='True or a dict'):
        PruningHook(importance=dict(type='mmifso.MagnitudeImportance'),
                    target_latency=0.5, latency_feedback=0.03,
                    selection=dict(latency_table=synthetic_path))
    with pytest.raises(ValueError, match='tol'):
        PruningHook(importance=dict(type='mmifso.MagnitudeImportance'),
                    target_latency=0.5, latency_feedback=dict(tol=2),
                    selection=dict(latency_table=synthetic_path))
    with pytest.raises(ValueError, match='PruningHook setting'):
        OneShotPruningHook(
            importance=dict(type='mmifso.MagnitudeImportance'),
            target_latency=0.5, latency_feedback=True,
            selection=dict(latency_table=synthetic_path))


def test_hook_latency_feedback_resumes(tmp_path, synthetic_path):
    """The feedback's goal and measurements are in the checkpoint: a resumed
    run goes on from them (it does not restart at the first goal, which the
    pruned model is already below, and stop as if at its floor)."""

    def cfg_for(max_iters, resume):
        cfg = runner_cfg(tmp_path, max_iters=max_iters)
        cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                            interval=24, by_epoch=False)
        cfg.resume = resume
        hook = cfg.custom_hooks[0]
        hook.pop('target_flops', None)
        hook.update(target_latency=0.5, cost='latency', save_thresholds=(),
                    selection=dict(latency_table=synthetic_path),
                    latency_feedback=dict(max_measurements=3))
        return cfg

    first = Runner.from_cfg(cfg_for(24, False))
    first.train()
    hook = [h for h in first.hooks if type(h).__name__ == 'PruningHook'][0]
    before = [dict(h) for h in hook.feedback.history]
    assert before and not hook.done  # measured once, goal moved on
    ckpt = torch.load(str(tmp_path / 'iter_24.pth'), map_location='cpu')
    saved = ckpt['meta']['mmifso_pruning_hook']['feedback']
    assert saved['history'] == before and saved['goal'] < 0.65

    steps = hook._steps
    resumed = Runner.from_cfg(cfg_for(48, True))
    resumed.train()
    hook = [h for h in resumed.hooks
            if type(h).__name__ == 'PruningHook'][0]
    assert hook.feedback.history[:len(before)] == before
    # It went on pruning towards the restored goal (the tiny model's
    # measured latency barely follows, so it may end at its floor).
    assert hook._steps > steps
    log = open(sorted(glob.glob(str(tmp_path / '*' / '*.log')))[-1]).read()
    assert 'nothing to prune' not in log
