"""Shared fixtures; ``tests/`` is on ``sys.path`` (rootdir conftest), so
test modules import their helpers as ``from helpers import ...``."""
import copy
import os
import random

import pytest
import torch

from helpers import (OTHER_ARCH, build_algorithm, random_prune, runner_cfg)
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
