"""tools/analysis/latency_protocols.py: one structure timed three ways
(only the bookkeeping is checked, no timing is judged)."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

from mmengine.config import Config

from helpers import TINY_CLASSIFIER

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis', 'latency_protocols.py')


def test_three_protocols_per_repeat(tmp_path):
    config = str(tmp_path / 'model.py')
    Config(dict(default_scope='mmpretrain', model=TINY_CLASSIFIER)).dump(
        config)
    out = str(tmp_path / 'protocols.json')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    done = subprocess.run(
        [sys.executable, TOOL, config, '--size', '16', '--backend',
         'torchscript', '--threads', '1', '--round-to', '4', '--repeats',
         '2', '--rounds', '1', '--blocks', '1', '--calls', '1', '--out',
         out],
        capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.load(open(out))
    assert set(data['ratios']) == {'two', 'six', 'blocks'}
    for ratios in data['ratios'].values():
        assert len(ratios) == 2 and all(r > 0 for r in ratios)
    assert data['args']['backend'] == 'torchscript'
    assert 'repeat 1: two' in done.stdout


def test_bad_counts_and_target_are_refused():
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    for bad, message in ((['--repeats', '0'], '--repeats must be >= 1'),
                         (['--calls', '0'], '--calls must be >= 1'),
                         (['--target-flops', '1.5'], 'in \\(0, 1\\)')):
        done = subprocess.run([sys.executable, TOOL, 'any.py', *bad],
                              capture_output=True, text=True, env=env,
                              cwd=ROOT)
        assert done.returncode == 2
        assert re.search(message, done.stderr), done.stderr[-500:]
