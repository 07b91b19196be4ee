"""Shared fixtures; ``tests/`` is on ``sys.path`` (rootdir conftest), so
test modules import their helpers as ``from helpers import ...``."""
import copy
import json
import os
import random

import pytest
import torch

from helpers import (LATENCY_FAST, LATENCY_SHAPE, OTHER_ARCH, build_algorithm,
                     random_prune, runner_cfg)
from mmifso.models.mutators.latency import build_model_latency_table
from mmifso.models.task_modules.latency import LatencyTable
from mmifso.structures import make_structure, save_structure

os.environ.setdefault('OMP_NUM_THREADS', '2')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


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

@pytest.fixture(scope='module')
def structure_file(tmp_path_factory):
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.3)
    path = str(tmp_path_factory.mktemp('structure') / 'structure.json')
    save_structure(make_structure(algo.mutator), path)
    return path


@pytest.fixture(scope='module')
def table_path(tmp_path_factory):
    """A latency table of the tiny classifier, measured (fast settings)."""
    torch.manual_seed(0)
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    table = build_model_latency_table(algo.architecture, algo.mutator,
                                      LATENCY_SHAPE, **LATENCY_FAST)
    path = str(tmp_path_factory.mktemp('latency') / 'table.json')
    table.save(path)
    return path


@pytest.fixture(scope='module')
def synthetic_path(table_path, tmp_path_factory):
    """The measured table with deterministic values: every layer costs its
    MACs (1e-6 ms each) plus 0.01 ms, the rest 10 % of the unpruned model.
    Selection tests then do not depend on the load of the machine."""
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    data = json.load(open(table_path))
    for name, lay in data['layers'].items():
        rec = algo.mutator.layer_records[name]
        lay['ms'] = [[
            0.01 + 1e-6 * rec.macs(ci, ci if lay['depthwise'] else co)
            for co in lay['out_widths']
        ] for ci in lay['in_widths']]
    table = LatencyTable(dict(data, calibration=dict(a_ms=0.0, b_ms=0.0)))
    table.calibration['a_ms'] = 0.1 * table.full_ms / 0.9
    path = str(tmp_path_factory.mktemp('latency') / 'synthetic.json')
    table.save(path)
    return path
