"""Atomic file writes: a crash leaves either the old or the new file."""
import json
import os
import tempfile
from typing import Any, Callable

import torch


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``.

    The temporary file lives in the destination directory, so the final
    ``os.replace`` is atomic on POSIX file systems.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(obj: Any, path: str) -> None:
    """Write ``obj`` as indented JSON, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint_file(path: str) -> dict:
    """Load a checkpoint without executing pickled code where possible.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        RuntimeError: if the file is truncated or not a checkpoint.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as safe_error:  # e.g. numpy/mmengine objects in meta
        try:
            return torch.load(path, map_location='cpu')
        except Exception as e:
            raise RuntimeError(
                f'cannot read checkpoint {path} ({type(e).__name__}: {e}); '
                'the file is corrupted or truncated') from safe_error
