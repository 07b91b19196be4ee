"""Atomic file writes and safe checkpoint loading.

Writes: a crash (even ``SIGKILL``) at any moment leaves either the old or the
new file under the final name, never a partial one. The data goes to a
temporary file in the destination directory, is flushed to disk, and is then
renamed over the destination with :func:`os.replace` (atomic on POSIX file
systems). :class:`AtomicLocalBackend` brings the same to every checkpoint
mmengine writes: select it with ``backend_args=dict(backend='mmifso_atomic')``
(``default_hooks.checkpoint`` of a config; the :class:`PruningHook` uses it
by default for its ``flops_XX.pth``).

Loading: :func:`load_checkpoint_file` never runs code hidden in a pickle
unless told to trust the file (see its docstring). Importing mmifso also
installs it as mmengine's loader of local checkpoint files
(:func:`install_safe_checkpoint_loader`), so the Runner's ``load_from`` and
``resume`` are restricted too; ``MMIFSO_TRUST_CHECKPOINTS=1`` (or
``--trust-checkpoint`` of ``tools/train.py`` / ``tools/test.py``) restores
full unpickling.
"""
import glob
import json
import os
import tempfile
import time
from typing import Any, Callable, List, Optional, Union

import torch
from mmengine.fileio import LocalBackend, register_backend

from . import safe_pickle
from .safe_pickle import UnsafeCheckpointError

#: Name of :class:`AtomicLocalBackend` in mmengine's file backends.
ATOMIC_BACKEND = 'mmifso_atomic'
#: ``backend_args`` that select it.
ATOMIC_BACKEND_ARGS = dict(backend=ATOMIC_BACKEND)
#: Environment variable: seconds to sleep between writing the temporary file
#: and renaming it (fault-injection tests use it to kill a writer there).
DELAY_ENV = 'MMIFSO_ATOMIC_WRITE_DELAY'
#: Environment variable: ``1`` trusts every checkpoint (full unpickling).
TRUST_ENV = 'MMIFSO_TRUST_CHECKPOINTS'
#: Help of the tools' ``--trust-checkpoint`` flag.
TRUST_CHECKPOINT_HELP = (
    'unpickle the checkpoint completely (it may then run code it contains): '
    'only for files from a trusted source that hold custom classes; same as '
    f'{TRUST_ENV}=1. By default checkpoints are loaded with an allow-list of '
    'types (tensors, containers, numpy, mmengine log buffers), also by the '
    'Runner (load_from, resume)')
TMP_SUFFIX = '.tmp'


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def temp_prefix(path: str) -> str:
    """Prefix of the temporary files :func:`atomic_write` makes for
    ``path``: ``.<basename>.`` in the same directory."""
    return f'.{os.path.basename(path)}.'


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``.

    The temporary file ``.<basename>.<random>.tmp`` lives in the destination
    directory, so the final :func:`os.replace` is atomic on POSIX file
    systems; it is flushed to disk first. If ``write`` raises, the temporary
    file is removed and ``path`` is untouched. A process killed before the
    rename leaves ``path`` as it was (plus the temporary file, see
    :func:`remove_stale_temp_files`).

    Args:
        path (str): Destination.
        write (callable): Writes the whole content to the path it is given.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=temp_prefix(path), suffix=TMP_SUFFIX, dir=directory)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        delay = float(os.environ.get(DELAY_ENV, 0) or 0)
        if delay > 0:
            time.sleep(delay)
        os.replace(tmp, path)
        _fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temp_files(path: str) -> List[str]:
    """Remove temporary files that a killed :func:`atomic_write` of ``path``
    left behind. Only call it when no other process writes ``path``.

    Returns:
        list[str]: The removed files.
    """
    directory = os.path.dirname(os.path.abspath(path))
    pattern = os.path.join(
        glob.escape(directory),
        glob.escape(temp_prefix(path)) + '*' + TMP_SUFFIX)
    removed = []
    for tmp in glob.glob(pattern):
        try:
            os.remove(tmp)
            removed.append(tmp)
        except OSError:
            pass
    return removed


def save_json(obj: Any, path: str) -> None:
    """Write ``obj`` as indented JSON, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def save_text(text: str, path: str, encoding: str = 'utf-8') -> None:
    """Write ``text``, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, 'w', encoding=encoding) as f:
            f.write(text)

    atomic_write(path, write)


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` atomically.

    Saved through a file object, so the archive's inner folder is always
    ``archive`` (torch names it after the file otherwise: here the random
    temporary name) and equal objects give equal bytes.
    """

    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)

    atomic_write(path, write)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with atomic ``put`` / ``put_text``.

    Registered as ``'mmifso_atomic'``. mmengine writes every checkpoint
    through a file backend (``Runner.save_checkpoint`` -> ``backend.put``;
    ``CheckpointHook`` also writes ``last_checkpoint`` with ``put_text``), so
    ::

        default_hooks = dict(checkpoint=dict(
            type='CheckpointHook', interval=1,
            backend_args=dict(backend='mmifso_atomic')))

    makes the runner's checkpoints crash-safe (``custom_imports`` must import
    ``mmifso``). Reading, listing and removing are the local backend's.
    """

    def put(self, obj: bytes, filepath: Union[str, os.PathLike]) -> None:

        def write(tmp: str) -> None:
            with open(tmp, 'wb') as f:
                f.write(obj)

        atomic_write(os.fspath(filepath), write)

    def put_text(self,
                 obj: str,
                 filepath: Union[str, os.PathLike],
                 encoding: str = 'utf-8') -> None:
        save_text(obj, os.fspath(filepath), encoding)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #
def _trusted(trust_checkpoint: Optional[bool]) -> bool:
    if trust_checkpoint is not None:
        return bool(trust_checkpoint)
    return os.environ.get(TRUST_ENV, '').strip().lower() in ('1', 'true',
                                                            'yes')


def _unreadable(path: str, e: BaseException) -> RuntimeError:
    return RuntimeError(
        f'cannot read checkpoint {path} ({type(e).__name__}: {e}); the file '
        'is corrupted or truncated: use another checkpoint or write it again')


def load_checkpoint_file(path: str,
                         trust_checkpoint: Optional[bool] = None,
                         map_location: Any = 'cpu') -> Any:
    """Load a checkpoint without executing pickled code.

    1. ``torch.load(weights_only=True)``: tensors and containers only.
    2. Otherwise (runner checkpoints hold numpy arrays and mmengine log
       buffers in ``meta`` / ``message_hub``) a restricted unpickler
       (:mod:`mmifso.utils.safe_pickle`) that rebuilds only allow-listed
       types and refuses everything else.
    3. Full unpickling only when the file is trusted explicitly:
       ``trust_checkpoint=True`` or the environment variable
       ``MMIFSO_TRUST_CHECKPOINTS=1``.

    Args:
        path (str): Checkpoint file.
        trust_checkpoint (bool, optional): True: unpickle everything (only
            for files from a trusted source). None (default): read
            ``MMIFSO_TRUST_CHECKPOINTS``.
        map_location (str | torch.device | callable | dict): As
            :func:`torch.load`. Default: ``'cpu'``.

    Returns:
        The unpickled object (usually a dict).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        UnsafeCheckpointError: (a ``RuntimeError``) if the pickle refers to a
            type outside the allow-list; the message says how to trust it.
        RuntimeError: if the file is truncated or not a checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if _trusted(trust_checkpoint):
        try:
            return torch.load(path, map_location=map_location)
        except Exception as e:
            raise _unreadable(path, e) from e
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as safe_error:  # numpy/mmengine objects in meta, ...
        try:
            return torch.load(
                path, map_location=map_location, pickle_module=safe_pickle)
        except UnsafeCheckpointError as e:
            raise e.with_path(path) from None
        except Exception as e:
            raise _unreadable(path, e) from safe_error


def safe_load_from_local(filename: str, map_location: Any = None) -> Any:
    """mmengine's ``load_from_local`` through :func:`load_checkpoint_file`.

    Registered for local paths (prefix ``''``) in mmengine's
    ``CheckpointLoader`` by :func:`install_safe_checkpoint_loader`, so
    ``Runner.load_checkpoint`` / ``Runner.resume`` (``load_from``, ``resume``,
    ``--resume``) and ``mmengine.runner.load_checkpoint`` never run code
    hidden in a pickle unless ``MMIFSO_TRUST_CHECKPOINTS=1``.

    Args:
        filename (str): Local checkpoint path (``~`` is expanded).
        map_location (str | torch.device | callable, optional): As
            :func:`torch.load`.

    Returns:
        The loaded checkpoint.

    Raises:
        FileNotFoundError: if the file does not exist.
        UnsafeCheckpointError: if the pickle refers to a type outside the
            allow-list (the message says how to trust the file).
    """
    return load_checkpoint_file(
        os.path.expanduser(filename), map_location=map_location)


def install_safe_checkpoint_loader() -> None:
    """Make :func:`safe_load_from_local` mmengine's local-file loader.

    Called when :mod:`mmifso` is imported (so every Runner whose config has
    ``custom_imports=dict(imports=['mmifso'])`` gets it) and again by
    ``tools/train.py`` / ``tools/test.py``. Idempotent. Remote schemes
    (``http://``, ``s3://``, ...) keep mmengine's loaders. To load a trusted
    checkpoint holding custom classes set ``MMIFSO_TRUST_CHECKPOINTS=1`` (read
    at every load) or call :func:`uninstall_safe_checkpoint_loader`.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=safe_load_from_local, force=True)


def uninstall_safe_checkpoint_loader() -> None:
    """Restore mmengine's own (unrestricted) local-file loader."""
    from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)


def safe_checkpoint_loader_installed() -> bool:
    """Whether mmengine's local-file loader is :func:`safe_load_from_local`.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    return CheckpointLoader._schemes.get('') is safe_load_from_local


install_safe_checkpoint_loader()
