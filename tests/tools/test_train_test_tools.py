"""tools/train.py, tools/test.py, tools/analysis/get_flops.py and the dist
scripts, run as real subprocesses on the digits demo baseline at toy size."""
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import (DEMO_BASELINE, ROOT, TINY_CLASSIFIER, build_algorithm,
                     load_tool, random_prune)

TOOLS = osp.join(ROOT, 'tools')

#: The demo baseline at toy size (TINY_CLASSIFIER) for 20 iterations, with a
#: checkpoint every 10.
CONFIG = f"""
_base_ = [{DEMO_BASELINE!r}]
model = {TINY_CLASSIFIER!r}
train_dataloader = dict(batch_size=32)
train_cfg = dict(_delete_=True, by_epoch=False, max_iters=20, val_interval=20)
default_hooks = dict(
    checkpoint=dict(interval=10, by_epoch=False, max_keep_ckpts=-1))
log_processor = dict(by_epoch=False)
"""

MASKED_CONFIG = """
_base_ = ['./tiny_digits.py']
model = dict(
    _delete_=True,
    type='mmifso.PruningAlgorithm',
    architecture={{_base_.model}},
    mutator=dict(
        type='mmifso.ChannelMutator',
        demo_input=dict(type='mmifso.DemoInput', input_shape=(1, 3, 32, 32))))
"""

ACC = re.compile(r'accuracy/top1: ([0-9.]+)')


def run_tool(*args, env=None, timeout=120):
    environment = dict(os.environ, OMP_NUM_THREADS='2', PYTHONHASHSEED='0')
    environment.update(env or {})
    proc = subprocess.run([sys.executable, *args],
                          cwd=ROOT,
                          env=environment,
                          capture_output=True,
                          text=True,
                          timeout=timeout)
    proc.output = proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny classifier trained by tools/train.py (20 iterations)."""
    root = tmp_path_factory.mktemp('tools')
    config = root / 'tiny_digits.py'
    config.write_text(CONFIG)
    (root / 'masked.py').write_text(MASKED_CONFIG)
    work = root / 'work'
    proc = run_tool(
        osp.join(TOOLS, 'train.py'), str(config), '--work-dir', str(work))
    assert proc.returncode == 0, proc.output[-3000:]
    # The masked checkpoint of the pruning config (random masks).
    algo = build_algorithm()
    random_prune(algo.mutator, 0.4)
    torch.save(
        dict(state_dict=algo.state_dict(), meta={}), root / 'masked.pth')
    return dict(
        root=root,
        config=str(config),
        masked_config=str(root / 'masked.py'),
        work=work,
        masked_ckpt=str(root / 'masked.pth'),
        masked_flops=algo.mutator.resources(),
        train_output=proc.output)


def test_train_then_test(trained):
    work = trained['work']
    assert (work / 'iter_20.pth').is_file()
    val = ACC.findall(trained['train_output'])
    assert val, trained['train_output'][-3000:]
    out = trained['root'] / 'metrics' / 'test.json'
    proc = run_tool(
        osp.join(TOOLS, 'test.py'), trained['config'],
        str(work / 'iter_20.pth'), '--work-dir',
        str(trained['root'] / 'test'), '--out', str(out))
    assert proc.returncode == 0, proc.output[-3000:]
    assert 'accuracy/top1' in proc.output
    metrics = json.loads(out.read_text())
    acc = metrics['accuracy/top1']
    assert 0 <= acc <= 100
    # Same weights, same data: the test accuracy is the final val accuracy.
    assert acc == pytest.approx(float(val[-1]), abs=1e-3)
    assert f'"accuracy/top1": {acc}' in proc.stdout


def test_test_dumps_predictions(trained):
    """--out FILE.pkl dumps the predictions (in-process run)."""
    pkl = trained['root'] / 'preds.pkl'
    load_tool('test.py').main([
        trained['config'],
        str(trained['work'] / 'iter_20.pth'), '--work-dir',
        str(trained['root'] / 'test_pkl'), '--out',
        str(pkl)
    ])
    from mmengine.fileio import load
    from mmifso.datasets import DigitsDataset
    preds = load(str(pkl))
    assert len(preds) == len(
        DigitsDataset(split='test', image_size=32, pipeline=[]))
    assert {'pred_label', 'gt_label'} <= set(preds[0])


def test_resume(trained, tmp_path):
    """--resume continues from the latest checkpoint of the work dir."""
    work = tmp_path / 'resume'
    work.mkdir()
    for name in ('iter_10.pth', 'iter_20.pth'):
        shutil.copy(trained['work'] / name, work / name)
    (work / 'last_checkpoint').write_text(str(work / 'iter_20.pth'))
    load_tool('train.py').main([
        trained['config'], '--work-dir',
        str(work), '--resume', '--cfg-options', 'train_cfg.max_iters=25',
        'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=5'
    ])
    assert not (work / 'iter_15.pth').exists()  # did not start again
    ckpt = torch.load(str(work / 'iter_25.pth'), map_location='cpu')
    assert ckpt['meta']['iter'] == 25
    # An explicit checkpoint: resumes from it (iteration 10).
    explicit = tmp_path / 'explicit'
    load_tool('train.py').main([
        trained['config'], '--work-dir',
        str(explicit), '--resume',
        str(trained['work'] / 'iter_10.pth'), '--cfg-options',
        'train_cfg.max_iters=15', 'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=5'
    ])
    assert not (explicit / 'iter_5.pth').exists()
    assert torch.load(str(explicit / 'iter_15.pth'),
                      map_location='cpu')['meta']['iter'] == 15


def test_masked_checkpoint_with_plain_config_fails(trained):
    proc = run_tool(
        osp.join(TOOLS, 'test.py'), trained['config'], trained['masked_ckpt'],
        '--work-dir', str(trained['root'] / 'bad'))
    assert proc.returncode != 0
    assert 'masked pruning checkpoint' in proc.stderr
    assert 'tools/export_pruned.py' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not (trained['root'] / 'bad').exists()  # stopped before the run
    # train.py checks load_from (and --resume CKPT) the same way.
    train = load_tool('train.py')
    for extra in (['--cfg-options', f'load_from={trained["masked_ckpt"]}'],
                  ['--resume', trained['masked_ckpt']]):
        with pytest.raises(SystemExit, match='masked pruning checkpoint'):
            train.main([
                trained['config'], '--work-dir',
                str(trained['root'] / 'bad')
            ] + extra)
    # ... and a missing checkpoint says which file.
    missing = str(trained['root'] / 'missing.pth')
    with pytest.raises(SystemExit, match=re.escape(missing)):
        load_tool('test.py').main([trained['config'], missing])


def test_get_flops(trained, tmp_path):
    script = osp.join(TOOLS, 'analysis', 'get_flops.py')
    out = tmp_path / 'plain.json'
    proc = run_tool(script, trained['config'], '--shape', '32', '--out',
                    str(out))
    assert proc.returncode == 0, proc.output[-3000:]
    assert 'mmifso conv+linear' in proc.stdout
    assert 'mmengine get_model_complexity_info' in proc.stdout
    plain = json.loads(out.read_text())
    assert plain['kind'] == 'plain'
    assert plain['input_shape'] == [1, 3, 32, 32]
    expected = trained['masked_flops']
    assert plain['mmifso']['flops'] == pytest.approx(
        expected['flops'] / expected['flops_ratio'])
    # mmengine also counts BN etc.: a little more, never less.
    assert plain['mmifso']['flops'] <= plain['mmengine']['flops'] < 1.2 * \
        plain['mmifso']['flops']
    assert plain['mmifso']['params'] == plain['mmengine']['params']

    # The masked model with its masks: FLOPs as the mutator counts them.
    out = tmp_path / 'masked.json'
    proc = run_tool(script, trained['masked_config'], '--checkpoint',
                    trained['masked_ckpt'], '--out', str(out))
    assert proc.returncode == 0, proc.output[-3000:]
    masked = json.loads(out.read_text())
    assert masked['kind'] == 'masked'
    assert masked['mmifso']['flops'] == expected['flops']
    assert masked['mmifso']['params'] == expected['params']
    assert masked['mmifso']['flops_unpruned'] == plain['mmifso']['flops']
    assert masked['mmifso']['flops_ratio'] < 1
    # mmengine on the exported copy agrees on the parameters.
    assert masked['mmengine']['params'] == expected['params']
    assert masked['mmengine']['flops'] < plain['mmengine']['flops']
    assert f'{expected["flops_ratio"]:.4f}' in proc.stdout


def test_dist_scripts(tmp_path):
    """dist_train.sh starts tools/train.py through torchrun (checked with
    --help: mmengine's pytorch launcher needs GPUs); dist_test.sh passes its
    arguments the same way (checked with a stand-in python)."""
    env = dict(os.environ, PYTHON=sys.executable, PORT='29517')
    proc = subprocess.run(
        ['bash', osp.join(TOOLS, 'dist_train.sh'), 'cfg.py', '1', '--help'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '--launcher' in proc.stdout and '--resume' in proc.stdout

    fake = tmp_path / 'python'
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), NNODES='2', NODE_RANK='1')
    proc = subprocess.run(
        ['bash', osp.join(TOOLS, 'dist_test.sh'), 'my cfg.py', 'ck.pth', '4',
         '--out', 'm.json'],
        env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.split()
    assert args[:2] == ['-m', 'torch.distributed.run']
    assert '--nproc_per_node=4' in args and '--nnodes=2' in args
    assert '--node_rank=1' in args
    assert proc.stdout.strip().endswith(
        'tools/test.py my cfg.py ck.pth --launcher pytorch --out m.json')
    proc = subprocess.run(['bash', osp.join(TOOLS, 'dist_test.sh')],
                          capture_output=True,
                          text=True)
    assert proc.returncode != 0 and 'usage' in proc.stderr
