"""tools/analysis/latency_table.py: builds a table, checks it, refuses a
table of another setting (no timing is judged)."""
import json
import os
import os.path as osp
import subprocess
import sys

from mmengine.config import Config

from helpers import MUTATOR16, TINY_CLASSIFIER

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis', 'latency_table.py')


def run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


def test_build_check_and_refuse(tmp_path):
    cfg = Config(
        dict(
            default_scope='mmpretrain',
            custom_imports=dict(imports=['mmifso'],
                                allow_failed_imports=False),
            model=dict(type='mmifso.PruningAlgorithm',
                       architecture=TINY_CLASSIFIER, mutator=MUTATOR16)))
    config = str(tmp_path / 'prune.py')
    cfg.dump(config)
    table = str(tmp_path / 'table.json')
    done = run(config, '--shape', '2', '3', '16', '16', '--threads', '1',
               '--rounds', '1', '--check', '2', '--check-rounds', '1',
               '--out', table)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.load(open(table))
    assert data['key']['input_shape'] == [2, 3, 16, 16]
    assert data['key']['threads'] == 1
    rows = data['check']['structures']
    assert [r['label'] for r in rows] == ['full', 'random0', 'random1']
    assert all(r['measured_ms'] > 0 and r['predicted_ms'] > 0 for r in rows)
    assert 'max |error|' in done.stdout and 'load average' in done.stdout
    # Checking it for another thread count is refused by name (the other
    # fields: tests/models/test_task_modules/test_latency.py).
    done = run(config, '--shape', '2', '3', '16', '16', '--threads', '2',
               '--table', table, '--check', '1')
    assert done.returncode != 0 and 'threads: table 1, here 2' in \
        done.stderr
