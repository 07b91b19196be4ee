"""tools/analysis/coverage.py --check-apis: each export is written as
tools/export_pruned.py writes it and used only through mmdet's and
mmpretrain's own APIs (the real ones; generated images, random weights, no
downloads), and the check catches the defects it is there for."""
import json
import os

import pytest
import torch

from helpers import ROOT, load_tool
from mmifso.apis import api_check
from mmifso.apis.coverage import check_config
from mmifso.models.algorithms import pruning_algorithm

DEMO_DET = os.path.join(ROOT, 'configs', 'demo_det',
                        'retinanet_r18-w32_fpn_1xb16-48e_shapes.py')
CLASSIFIER = 'mmpretrain::resnet/resnet18_8xb32_in1k.py@32'
DETECTOR = f'{DEMO_DET}@64'


def test_check_apis_on_a_classifier_and_a_detector(tmp_path):
    cov = load_tool('analysis', 'coverage.py')
    out, md = tmp_path / 'coverage.json', tmp_path / 'coverage.md'
    records = cov.main([
        CLASSIFIER, DETECTOR, '--check-apis', '--out', str(out),
        '--markdown', str(md), '--timeout', '300'
    ])
    assert json.loads(out.read_text()) == records
    cls, det = records
    for r in records:
        apis = r['apis']
        assert r['export_ok'] and apis['ok'], apis['error']
        assert apis['error'] is None
        # Same weights, same code: the APIs predict what the export does.
        assert apis['max_diff'] <= 1e-6
        own = {k: v for k, v in apis['mismatch'].items()
               if not k.startswith('(')}
        assert set(own.values()) == {'refused'}, own
        assert 'Runner (load_from)' in own
        assert 'load_checkpoint(strict=False)' in own
    assert cls['apis']['num_classes'] == 1000
    assert cls['apis']['works'] == {
        'get_model': 'works',
        'ImageClassificationInferencer (with drawing)': 'works',
        'inference_model': 'unsupported: NotImplementedError: No available '
        'inferencer for the model',
        'Runner (load_from)': 'works',
    }
    assert det['apis']['num_classes'] == 5
    assert set(det['apis']['works'].values()) == {'works'}
    assert det['apis']['detections'] > 0  # the comparison compares boxes
    assert det['apis']['non_finite'] == 0
    # The other way round (pruned.pth into the unpruned upstream config) is
    # upstream's loader: recorded, not counted.
    [reverse] = [v for k, v in cls['apis']['mismatch'].items()
                 if k.startswith('(')]
    assert reverse.startswith('loaded with a warning of')
    table = md.read_text()
    assert ('| resnet18_8xb32_in1k@32 | 3/3 | inference_model | 0.0e+00 | '
            '4/4 | loaded with a warning of') in table
    assert ('| retinanet_r18-w32_fpn_1xb16-48e_shapes@64 | 3/3 | - | '
            '0.0e+00 | 4/4 | loaded with a warning of') in table


def test_check_apis_catches_lost_class_names_and_silent_loads(monkeypatch):
    """The two defects of issue 13 put back: an export that drops
    ``dataset_meta`` and a pruned model that accepts tensors of other
    shapes. The check must name both."""
    write_export = api_check.write_export

    def without_dataset_meta(*args):
        return write_export(*args[:6], None)

    monkeypatch.setattr(api_check, 'write_export', without_dataset_meta)
    monkeypatch.setattr(pruning_algorithm, 'check_pruned_shapes',
                        lambda *args, **kwargs: None)
    record = check_config(DETECTOR, check_apis=True, timeout=300)
    assert record['export_ok'], record['error']
    apis = record['apis']
    assert not apis['ok']
    for entry in ('init_detector + inference_detector',
                  'DetInferencer (with drawing)'):
        assert apis['works'][entry].startswith('FAILS: class names'), \
            apis['works']
    for entry in ('init_detector', 'DetInferencer',
                  'load_checkpoint(strict=False)', 'Runner (load_from)'):
        assert apis['mismatch'][entry].startswith('NOT refused'), \
            apis['mismatch']
    assert apis['error'].startswith('init_detector + inference_detector')


def test_num_classes_of_a_two_stage_detector():
    model = dict(
        rpn_head=dict(num_classes=1),
        roi_head=dict(bbox_head=[dict(num_classes=7), dict(num_classes=7)]))
    assert api_check.num_classes_of(model) == 7
    assert api_check.num_classes_of(dict(backbone=dict(depth=18))) is None
    meta = api_check.generated_dataset_meta(3)
    assert meta['classes'] == ('mmifso_class_0', 'mmifso_class_1',
                               'mmifso_class_2')
    assert len(meta['palette']) == 3


def test_results_compare_non_finite_values_by_place():
    nan, inf = float('nan'), float('inf')
    a = dict(bboxes=torch.tensor([[1., nan, inf, 4.]]),
             scores=torch.tensor([0.5]))
    assert api_check._relative_diff(a, a) == 0
    assert api_check._non_finite(a) == 2
    b = dict(bboxes=torch.tensor([[1., 2., inf, 4.]]),
             scores=torch.tensor([0.5]))
    assert api_check._relative_diff(a, b) == inf
    c = dict(bboxes=torch.tensor([[1., nan, inf, 4.5]]),
             scores=torch.tensor([0.5]))
    # 0.5 off, relative to the largest finite value (4.5).
    assert api_check._relative_diff(a, c) == pytest.approx(0.5 / 4.5)
    assert api_check._relative_diff(a, dict(scores=torch.ones(2))) == inf
