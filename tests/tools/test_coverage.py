"""tools/analysis/coverage.py: analyse, randomly prune, export and compare
real models; one JSON record per config, failures name the module."""
import json
import os

from helpers import ROOT, load_tool

DEMO_DET = os.path.join(ROOT, 'configs', 'demo_det',
                        'retinanet_r18-w32_fpn_1xb16-48e_shapes.py')


def test_coverage_on_small_configs(tmp_path):
    cov = load_tool('analysis', 'coverage.py')
    # The demo detector with a GroupNorm head (blocks of 8 channels).
    gn_cfg = tmp_path / 'retinanet_gn.py'
    gn_cfg.write_text(
        f"_base_ = ['{DEMO_DET}']\n"
        "model = dict(bbox_head=dict(norm_cfg=dict(type='GN', num_groups=8,"
        " requires_grad=True)))\n")
    out = tmp_path / 'coverage.json'
    md = tmp_path / 'coverage.md'
    records = cov.main([
        'mmpretrain::resnet/resnet18_8xb32_in1k.py@32',
        'mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py@32',
        f'{gn_cfg}@64',
        'mmpretrain::vgg/vgg11_8xb32_in1k.py@32',
        '--out', str(out), '--markdown', str(md), '--timeout', '120'
    ])
    saved = json.loads(out.read_text())
    assert saved == records and len(saved) == 4
    keys = {'config', 'units', 'prunable_channels', 'export_ok',
            'max_abs_diff', 'error'}
    assert all(keys <= set(r) for r in saved)
    resnet, regnet, gn, vgg = saved
    for r in (resnet, regnet, gn):
        assert r['export_ok'], r['error']
        assert r['error'] is None
        assert r['units'] > 0 and r['prunable_channels'] > 0
        assert r['max_abs_diff'] <= 1e-4 * max(1, r['output_scale'])
        assert r['flops_ratio'] < 0.8
    # Grouped convs and GroupNorm give units with blocks.
    assert regnet['blocked_units'] > 0 and gn['blocked_units'] > 0
    assert resnet['blocked_units'] == 0
    assert any('outputs of the model' in s['reason']
               for s in resnet['skipped'])
    # VGG's classifier needs 7x7 maps: the error names module and op.
    assert not vgg['export_ok']
    assert 'backbone.classifier.0 (Linear)' in vgg['error']
    assert 'vgg11_8xb32_in1k' in md.read_text()
