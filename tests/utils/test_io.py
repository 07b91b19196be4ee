"""Atomic writes, the atomic mmengine file backend and safe loading."""
import collections
import glob
import os
import os.path as osp
import pickle
import stat

import numpy as np
import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner

import mmifso.utils.io as io_module
from engine.test_hooks.test_pruning_hook import runner_cfg
from helpers import load_tool
from mmifso.utils import (ATOMIC_BACKEND_ARGS, AtomicLocalBackend,
                          UnsafeCheckpointError, atomic_write,
                          load_checkpoint_file, remove_stale_temp_files,
                          save_json, save_text, save_torch)


def temp_files(directory):
    return glob.glob(osp.join(str(directory), '.*.tmp'))


@pytest.fixture
def replaced(monkeypatch):
    """Destinations renamed into place by atomic_write."""
    calls = []
    real = os.replace

    def spy(src, dst):
        calls.append(osp.basename(dst))
        real(src, dst)

    monkeypatch.setattr(io_module.os, 'replace', spy)
    return calls


# --------------------------------------------------------------------------- #
# atomic_write
# --------------------------------------------------------------------------- #
def test_atomic_write_replaces_the_whole_file(tmp_path, replaced):
    path = tmp_path / 'sub' / 'a.json'
    save_json(dict(a=1), str(path))
    save_json(dict(b=2), str(path))
    assert path.read_text() == '{\n  "b": 2\n}'
    assert replaced == ['a.json', 'a.json']
    assert not temp_files(path.parent)
    # Permissions as open() would give (mkstemp alone gives 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / 'model.pth'
    save_torch(dict(w=torch.ones(3)), str(path))
    old = path.read_bytes()

    def write_half_then_fail(tmp):
        with open(tmp, 'wb') as f:
            f.write(b'partial')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        atomic_write(str(path), write_half_then_fail)
    assert path.read_bytes() == old
    assert not temp_files(tmp_path)


def test_crash_at_the_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'deploy_config.py'
    save_text('old = 1\n', str(path))

    def crash(src, dst):
        raise KeyboardInterrupt  # the process dies just before the rename

    monkeypatch.setattr(io_module.os, 'replace', crash)
    with pytest.raises(KeyboardInterrupt):
        save_text('new = 2\n', str(path))
    assert path.read_text() == 'old = 1\n'


def test_delay_between_write_and_rename(tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr(io_module.time, 'sleep', slept.append)
    monkeypatch.setenv('MMIFSO_ATOMIC_WRITE_DELAY', '0.25')
    save_text('x', str(tmp_path / 'a.txt'))
    assert slept == [0.25]
    monkeypatch.delenv('MMIFSO_ATOMIC_WRITE_DELAY')
    save_text('y', str(tmp_path / 'a.txt'))
    assert slept == [0.25]


def test_remove_stale_temp_files(tmp_path):
    path = tmp_path / 'pruned.pth'
    stale = [tmp_path / '.pruned.pth.abc1.tmp', tmp_path / '.pruned.pth.x.tmp']
    for s in stale:
        s.write_bytes(b'half')
    other = tmp_path / '.structure.json.abc.tmp'
    other.write_bytes(b'keep')
    removed = remove_stale_temp_files(str(path))
    assert sorted(removed) == sorted(str(s) for s in stale)
    assert other.exists()


# --------------------------------------------------------------------------- #
# The atomic mmengine file backend
# --------------------------------------------------------------------------- #
def test_atomic_backend_is_registered(tmp_path, replaced):
    backend = get_file_backend(
        str(tmp_path), backend_args=dict(ATOMIC_BACKEND_ARGS))
    assert isinstance(backend, AtomicLocalBackend)
    path = backend.join_path(str(tmp_path), 'iter_1.pth')
    backend.put(b'\x00\x01', path)
    backend.put_text('iter_1.pth', backend.join_path(str(tmp_path),
                                                     'last_checkpoint'))
    assert backend.get(path) == b'\x00\x01'
    assert backend.get_text(str(tmp_path / 'last_checkpoint')) == 'iter_1.pth'
    assert replaced == ['iter_1.pth', 'last_checkpoint']
    assert not temp_files(tmp_path)


def test_checkpoint_hook_backend_args_select_it(tmp_path, replaced):
    """What Runner.save_checkpoint does with CheckpointHook(backend_args=
    dict(backend='mmifso_atomic'))."""
    from mmengine.runner.checkpoint import save_checkpoint
    save_checkpoint(
        dict(state_dict=dict(w=torch.ones(2))),
        str(tmp_path / 'epoch_1.pth'),
        backend_args=dict(ATOMIC_BACKEND_ARGS))
    assert replaced == ['epoch_1.pth']
    assert torch.equal(
        load_checkpoint_file(str(tmp_path / 'epoch_1.pth'))['state_dict']['w'],
        torch.ones(2))


def same_nested(a, b) -> bool:
    """Equal containers, tensors compared with ``torch.equal``."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_nested(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(
            same_nested(x, y) for x, y in zip(a, b))
    return a == b


def atomic_runner_cfg(work_dir, lr_milestone: int):
    """4 iterations of magnitude pruning (8 channels a step, on past the
    target) with a checkpoint by mmifso.AtomicCheckpointHook every 2 and
    the learning rate lowered at iteration ``lr_milestone`` (MultiStepLR:
    scheduler state in the checkpoints)."""
    cfg = runner_cfg(
        work_dir,
        target=0.5,
        max_iters=4,
        criterion=dict(type='mmifso.MagnitudeImportance'))
    cfg.custom_hooks[0].update(channels_per_step=8, stop_at_target=False)
    cfg.default_hooks.checkpoint = dict(
        type='mmifso.AtomicCheckpointHook', interval=2, by_epoch=False)
    cfg.param_scheduler = dict(
        type='MultiStepLR', milestones=[lr_milestone], by_epoch=False)
    return cfg


def test_runner_checkpoints_are_atomic_and_load_safely(tmp_path, replaced):
    """mmifso.AtomicCheckpointHook and the PruningHook's default: every
    checkpoint and last_checkpoint are renamed into place; all of them load
    with the safe loader and equal a full unpickling."""
    Runner.from_cfg(atomic_runner_cfg(tmp_path, lr_milestone=2)).train()
    written = sorted(
        osp.basename(p) for p in glob.glob(str(tmp_path / '*.pth')))
    assert 'iter_2.pth' in written and 'iter_4.pth' in written
    assert 'flops_90.pth' in written
    assert set(written) | {'last_checkpoint'} <= set(replaced)
    assert not temp_files(tmp_path)
    for name in written:
        path = str(tmp_path / name)
        with pytest.raises(pickle.UnpicklingError):  # needs the fallback
            torch.load(path, weights_only=True)
        safe = load_checkpoint_file(path)
        full = torch.load(path)
        assert safe.keys() == full.keys()
        for k, v in full['state_dict'].items():
            assert torch.equal(safe['state_dict'][k], v)
        # meta holds tensors too (ExactResumeHook's random states).
        assert same_nested(safe['meta'], full['meta'])
        for k, buf in full['message_hub']['log_scalars'].items():
            ours = safe['message_hub']['log_scalars'][k]
            assert isinstance(ours, HistoryBuffer)
            assert all(np.array_equal(a, b)
                       for a, b in zip(ours.data, buf.data))
            assert ours.mean() == buf.mean()
        if 'param_schedulers' in full:
            assert safe['param_schedulers'] == full['param_schedulers']
            assert isinstance(safe['param_schedulers'][0]['milestones'],
                              collections.Counter)


# --------------------------------------------------------------------------- #
# Safe loading
# --------------------------------------------------------------------------- #
CALLED = []


def _record(what):
    CALLED.append(what)
    return what


class RunsShell:

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class CallsRecorder:

    def __reduce__(self):
        return (_record, ('called', ))


class GetattrGadget:
    """getattr(function, '__globals__'): the first step of escaping an
    allow-list through attribute access."""

    def __reduce__(self):
        return (getattr, (torch._utils._rebuild_tensor_v2, '__globals__'))


@pytest.mark.parametrize('zipfile', [True, False])
def test_pickled_code_is_not_run(tmp_path, zipfile):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    torch.save(
        dict(state_dict=dict(w=torch.ones(2)), meta=dict(x=RunsShell(marker))),
        path,
        _use_new_zipfile_serialization=zipfile)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint_file(path)
    assert not marker.exists()
    message = str(info.value)
    assert f'checkpoint {path} refers to posix.system' in message
    assert 'could run arbitrary code, so it was not loaded' in message
    assert 'trust_checkpoint=True' in message
    assert 'MMIFSO_TRUST_CHECKPOINTS=1' in message
    assert isinstance(info.value, RuntimeError)


def test_getattr_is_restricted(tmp_path):
    path = str(tmp_path / 'gadget.pth')
    torch.save(dict(g=GetattrGadget()), path)
    with pytest.raises(UnsafeCheckpointError,
                       match=r"builtins.getattr\(builtins.function, "
                       r"'__globals__'\)"):
        load_checkpoint_file(path)


def test_trusting_a_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / 'custom.pth')
    torch.save(dict(x=CallsRecorder()), path)
    CALLED.clear()
    with pytest.raises(UnsafeCheckpointError, match='test_io._record'):
        load_checkpoint_file(path)
    assert CALLED == []
    assert load_checkpoint_file(path, trust_checkpoint=True) == dict(
        x='called')
    monkeypatch.setenv('MMIFSO_TRUST_CHECKPOINTS', '1')
    assert load_checkpoint_file(path) == dict(x='called')
    # An explicit False wins over the environment.
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint_file(path, trust_checkpoint=False)
    assert CALLED == ['called', 'called']


def test_allowed_types_load(tmp_path):
    content = dict(
        state_dict=collections.OrderedDict(
            w=torch.randn(2, 3),
            p=torch.nn.Parameter(torch.ones(2)),
            h=torch.ones(2, dtype=torch.float16),
            b=torch.zeros(2, dtype=torch.bool)),
        meta=dict(
            arr=np.arange(6, dtype=np.float32).reshape(2, 3),
            scalar=np.float64(1.5),
            counter=collections.Counter([1, 1, 2]),
            names={'a', 'b'},
            frozen=frozenset({1}),
            window=slice(1, 5),
            raw=b'\x00\xff',
            dtype=torch.float32,
            size=torch.Size([2, 3]),
            device=torch.device('cpu')))
    path = str(tmp_path / 'ok.pth')
    torch.save(content, path)
    loaded = load_checkpoint_file(path)
    assert torch.equal(loaded['state_dict']['w'], content['state_dict']['w'])
    assert isinstance(loaded['state_dict']['p'], torch.nn.Parameter)
    meta = loaded['meta']
    assert np.array_equal(meta['arr'], content['meta']['arr'])
    assert {k: v for k, v in meta.items() if k != 'arr'} == {
        k: v for k, v in content['meta'].items() if k != 'arr'}


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / 'noise.pth'
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RuntimeError, match='corrupted or truncated'):
        load_checkpoint_file(str(path))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_checkpoint_file(str(tmp_path / 'missing.pth'))


# --------------------------------------------------------------------------- #
# Checkpoints loaded by the mmengine Runner (load_from, resume)
# --------------------------------------------------------------------------- #
def _evil_checkpoint(tmp_path, marker):
    """A runner checkpoint of the test model whose meta runs a shell
    command when fully unpickled; everything else would load."""
    cfg = runner_cfg(tmp_path / 'clean', max_iters=1)
    state = Runner.from_cfg(cfg).model.state_dict()
    path = str(tmp_path / 'evil.pth')
    torch.save(
        dict(state_dict=state, meta=dict(payload=RunsShell(marker))), path)
    return path


def test_safe_loader_is_mmengines_local_loader():
    from mmengine.runner.checkpoint import CheckpointLoader

    from mmifso.utils.io import (safe_checkpoint_loader_installed,
                                 safe_load_from_local)
    assert safe_checkpoint_loader_installed()  # by importing mmifso
    assert CheckpointLoader._get_checkpoint_loader(
        '/some/dir/iter_2.pth') is safe_load_from_local
    # Remote schemes keep mmengine's loaders.
    assert CheckpointLoader._get_checkpoint_loader(
        'https://x/y.pth') is not safe_load_from_local


def test_runner_load_from_refuses_pickled_code(tmp_path):
    """A Runner built from Python (no tools/train.py pre-check): its own
    load_from goes through the restricted unpickler."""
    marker = tmp_path / 'pwned'
    path = _evil_checkpoint(tmp_path, marker)
    cfg = runner_cfg(tmp_path / 'work', max_iters=2)
    cfg.load_from = path
    runner = Runner.from_cfg(cfg)
    with pytest.raises(UnsafeCheckpointError) as info:
        runner.train()
    assert not marker.exists()
    message = str(info.value)
    assert f'checkpoint {path} refers to posix.system' in message
    assert 'MMIFSO_TRUST_CHECKPOINTS=1' in message
    assert '--trust-checkpoint' in message
    assert runner.iter == 0  # nothing trained on it


@pytest.mark.parametrize('precheck', [True, False])
def test_train_tool_refuses_pickled_load_from(tmp_path, monkeypatch,
                                              precheck):
    """tools/train.py with the evil checkpoint as load_from (and as
    --resume): a clear error, the payload never runs. Without the tool's own
    pre-check the Runner's loader stops it."""
    marker = tmp_path / 'pwned'
    path = _evil_checkpoint(tmp_path, marker)
    cfg = runner_cfg(tmp_path / 'work', max_iters=2)
    cfg.load_from = path
    cfg_path = str(tmp_path / 'cfg.py')
    cfg.dump(cfg_path)
    tool = load_tool('train.py')
    if not precheck:
        import mmifso.apis.runner as runner_api
        monkeypatch.setattr(runner_api, 'check_checkpoint_matches_config',
                            lambda cfg, ckpt: None)
        for argv in ([cfg_path], [cfg_path, '--resume', path]):
            with pytest.raises(UnsafeCheckpointError,
                               match='refers to posix.system'):
                tool.main(argv)
    else:
        with pytest.raises(SystemExit) as info:
            tool.main([cfg_path])
        assert 'UnsafeCheckpointError' in str(info.value)
        assert '--trust-checkpoint' in str(info.value)
    assert not marker.exists()


def test_train_tool_trust_checkpoint_flag(tmp_path, monkeypatch):
    """--trust-checkpoint: a checkpoint with a custom class loads."""
    # Recorded, so the variable the flag sets is undone after the test.
    monkeypatch.setenv('MMIFSO_TRUST_CHECKPOINTS', '0')
    cfg = runner_cfg(tmp_path / 'clean', max_iters=1)
    state = Runner.from_cfg(cfg).model.state_dict()
    path = str(tmp_path / 'custom.pth')
    torch.save(dict(state_dict=state, meta=dict(x=CallsRecorder())), path)
    cfg = runner_cfg(tmp_path / 'work', max_iters=1)
    cfg.load_from = path
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=1, by_epoch=False)
    cfg_path = str(tmp_path / 'cfg.py')
    cfg.dump(cfg_path)
    tool = load_tool('train.py')
    CALLED.clear()
    with pytest.raises(SystemExit, match='test_io._record'):
        tool.main([cfg_path])
    assert CALLED == []
    tool.main([cfg_path, '--trust-checkpoint'])
    assert CALLED and set(CALLED) == {'called'}
    assert osp.isfile(tmp_path / 'work' / 'iter_1.pth')


def test_runner_resumes_through_the_safe_loader(tmp_path, monkeypatch):
    """A normal runner checkpoint (optimizer momentum, MultiStepLR state,
    message hub buffers, numpy RNG state in meta) loads and resumes through
    tools/train.py --resume: the resumed run ends with the weights, masks and
    optimizer state of the uninterrupted one."""
    from mmifso.utils import safe_pickle
    monkeypatch.setenv('MMIFSO_TRUST_CHECKPOINTS', '0')
    Runner.from_cfg(atomic_runner_cfg(tmp_path / 'full',
                                      lr_milestone=3)).train()
    ckpt2 = str(tmp_path / 'full' / 'iter_2.pth')
    meta = torch.load(ckpt2)['meta']  # numpy RNG state etc. are in there
    assert isinstance(meta['seed'], int) and 'mmifso_pruning_hook' in meta
    cfg = atomic_runner_cfg(tmp_path / 'resumed', lr_milestone=3)
    cfg_path = str(tmp_path / 'cfg.py')
    cfg.dump(cfg_path)

    refused = []
    real_find_class = safe_pickle.Unpickler.find_class

    def find_class(self, module, name):
        refused.append(f'{module}.{name}')
        return real_find_class(self, module, name)

    monkeypatch.setattr(safe_pickle.Unpickler, 'find_class', find_class)
    load_tool('train.py').main([cfg_path, '--resume', ckpt2])
    # The restricted unpickler did the loading (HistoryBuffer is not in
    # torch's weights_only list).
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in refused
    full = torch.load(str(tmp_path / 'full' / 'iter_4.pth'))
    resumed = torch.load(str(tmp_path / 'resumed' / 'iter_4.pth'))
    assert resumed['meta']['iter'] == 4
    for k, v in full['state_dict'].items():
        assert torch.allclose(resumed['state_dict'][k].float(), v.float(),
                              atol=1e-6), k
    for a, b in zip(full['optimizer']['state'].values(),
                    resumed['optimizer']['state'].values()):
        assert torch.allclose(a['momentum_buffer'], b['momentum_buffer'],
                              atol=1e-6)
    assert full['param_schedulers'] == resumed['param_schedulers']
