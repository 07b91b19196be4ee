"""ONNX export of exported (pruned) classifiers and detectors, checked with
ONNX Runtime, and the bad input it refuses without leaving a file."""
import copy
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseDataPreprocessor, BaseModel

from helpers import TINY_CLASSIFIER, random_prune, randomise_norms
from mmifso.apis.export import build_from_config, export_checkpoint
from mmifso.apis.onnx import OnnxExportError, export_onnx
from mmifso.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def pruning_cfg(arch, shape, scope):
    return Config(
        dict(
            default_scope=scope,
            custom_imports=dict(imports=['mmifso'],
                                allow_failed_imports=False),
            model=dict(
                type='mmifso.PruningAlgorithm',
                architecture=copy.deepcopy(arch),
                mutator=dict(
                    type='mmifso.ChannelMutator',
                    demo_input=dict(type='mmifso.DemoInput',
                                    input_shape=shape)))))


def masked_and_exported(tmp_path, arch, shape, scope, prune):
    """A masked checkpoint (random channels removed, random norm
    statistics) and its export."""
    cfg = pruning_cfg(arch, shape, scope)
    torch.manual_seed(0)
    algo = build_from_config(cfg)
    randomise_norms(algo)
    prune(algo.mutator)
    masked = str(tmp_path / 'masked.pth')
    torch.save(dict(state_dict=algo.state_dict(), meta=dict()), masked)
    out = export_checkpoint(cfg, masked, str(tmp_path / 'export'))
    return cfg, masked, out


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
    return masked_and_exported(
        tmp_path_factory.mktemp('cls'), TINY_CLASSIFIER, (1, 3, 16, 16),
        'mmpretrain', lambda m: random_prune(m, 0.4))


def run_ort(path, x):
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return sess.run(None, {'input': x.numpy()})


def test_classifier_exports_and_matches(classifier, tmp_path):
    _, _, exp = classifier
    out = str(tmp_path / 'cls.onnx')
    res = export_onnx(exp['config'], exp['checkpoint'], out,
                      (2, 3, 16, 16), dynamic_batch=True)
    assert osp.isfile(out) and res['path'] == osp.abspath(out)
    assert [o['shape'] for o in res['outputs']] == [[2, 10]]
    assert max(res['max_rel_err']) <= 1e-4
    assert [f for f in os.listdir(tmp_path) if f != 'cls.onnx'] == []
    # Independently: another batch size through the dynamic axis.
    model = build_from_config(Config.fromfile(exp['config']))
    model.load_state_dict(torch.load(exp['checkpoint'])['state_dict'])
    model.eval()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x, mode='tensor').numpy()
    got = run_ort(out, x)[0]
    assert got.shape == (5, 10)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_detector_exports_and_matches(tmp_path):
    from models.test_task_modules.test_detection_models import (
        prune_blocks, retinanet_gn)
    _, _, exp = masked_and_exported(
        tmp_path, retinanet_gn(), (1, 3, 64, 64), 'mmdet',
        lambda m: prune_blocks(m, 0.3))
    out = str(tmp_path / 'det.onnx')
    res = export_onnx(exp['config'], exp['checkpoint'], out, (1, 3, 64, 64))
    # Class scores and box deltas of the 5 pyramid levels.
    assert len(res['outputs']) == 10
    assert res['outputs'][0]['shape'][:2] == [1, 9 * 3]
    assert max(res['max_rel_err']) <= 1e-4
    assert osp.isfile(out)


def test_masked_checkpoint_is_refused(classifier, tmp_path):
    cfg, masked, exp = classifier
    out = str(tmp_path / 'm.onnx')
    for config in (cfg, exp['config']):
        with pytest.raises(OnnxExportError, match='tools/export_pruned.py'):
            export_onnx(config, masked, out, (1, 3, 16, 16))
    assert os.listdir(tmp_path) == []
    with pytest.raises(OnnxExportError, match='N C H W'):
        export_onnx(exp['config'], exp['checkpoint'], out, (1, 3, 16))
    with pytest.raises(FileNotFoundError):
        export_onnx(exp['config'], str(tmp_path / 'nope.pth'), out,
                    (1, 3, 16, 16))
    assert os.listdir(tmp_path) == []


@MODELS.register_module(force=True)
class DriftingNet(BaseModel):
    """A forward with Python state: every call scales by a new constant,
    which the ONNX trace freezes, so ONNX Runtime disagrees."""

    def __init__(self):
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, inputs, data_samples=None, mode='tensor'):
        self.calls += 1
        return self.conv(inputs) * float(self.calls)


def test_parity_failure_leaves_no_file(tmp_path):
    cfg = Config(dict(model=dict(type='mmifso.DriftingNet')))
    ckpt = str(tmp_path / 'plain.pth')
    torch.save(dict(state_dict=DriftingNet().state_dict()), ckpt)
    out = str(tmp_path / 'drift.onnx')
    with pytest.raises(OnnxExportError, match='differs from PyTorch.*no '
                       'file written'):
        export_onnx(cfg, ckpt, out, (1, 3, 8, 8))
    assert sorted(os.listdir(tmp_path)) == ['plain.pth']


def test_tool(classifier, tmp_path):
    cfg, masked, exp = classifier
    tool = osp.join(ROOT, 'tools', 'deployment', 'pytorch2onnx.py')
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = str(tmp_path / 'tool.onnx')
    done = subprocess.run(
        [sys.executable, tool, exp['config'], exp['checkpoint'], '--shape',
         '1', '3', '16', '16', '--out', out, '--dynamic-batch', '--time',
         '2'],
        capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert osp.isfile(out) and 'max relative' in done.stdout
    assert 'PyTorch' in done.stdout and 'ONNX Runtime' in done.stdout
    assert 'TorchScript optimised for inference' in done.stdout
    done = subprocess.run(
        [sys.executable, tool, exp['config'], masked, '--shape', '1', '3',
         '16', '16', '--out', str(tmp_path / 'bad.onnx')],
        capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode != 0
    assert 'tools/export_pruned.py' in done.stderr
    assert not osp.exists(tmp_path / 'bad.onnx')
