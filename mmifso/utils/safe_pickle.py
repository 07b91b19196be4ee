"""A ``pickle_module`` for :func:`torch.load` that rebuilds only known types.

``torch.load(f, pickle_module=mmifso.utils.safe_pickle)`` unpickles like
:mod:`pickle`, except that every global the pickle refers to (a class or a
function it calls) must be on an allow-list of the types mmengine / mmifso
checkpoints really contain: tensors and storages, containers, numpy arrays
and scalars, and the log buffers of mmengine's message hub. A pickle that
refers to anything else (``os.system``, ``builtins.eval``, a class of some
other package, ...) raises :class:`UnsafeCheckpointError` before anything is
called: unpickling can only call what :meth:`Unpickler.find_class` returns.

torch 2.1 has no ``torch.serialization.add_safe_globals``; its
``weights_only=True`` loader rejects the numpy arrays and mmengine objects in
the ``meta`` and ``message_hub`` of runner checkpoints. This module is the
fallback :func:`mmifso.utils.load_checkpoint_file` uses for them.
"""
import pickle
from pickle import PickleError, UnpicklingError  # noqa: F401
from typing import Any, Dict, FrozenSet, Optional, Tuple

__all__ = [
    'Unpickler', 'load', 'loads', 'UnsafeCheckpointError', 'allowed_globals',
    'UnpicklingError'
]


class UnsafeCheckpointError(RuntimeError):
    """A pickle refers to a global that is not on the allow-list.

    Attributes:
        module (str): Module of the refused global.
        name (str): Its name.
        detail (str): More about the refusal (e.g. the attribute asked for).
        path (str | None): The file, when known.
    """

    def __init__(self,
                 module: str,
                 name: str,
                 detail: str = '',
                 path: Optional[str] = None) -> None:
        self.module = module
        self.name = name
        self.detail = detail
        self.path = path
        what = f'checkpoint {path}' if path else 'the pickle'
        super().__init__(
            f'{what} refers to {module}.{name}{detail}, which is not on '
            "mmifso's allow-list of types found in checkpoints (tensors, "
            'containers, numpy arrays, mmengine log buffers); unpickling it '
            'could run arbitrary code, so it was not loaded. If the file '
            'comes from a source you trust, load it with '
            'load_checkpoint_file(path, trust_checkpoint=True) or set the '
            'environment variable MMIFSO_TRUST_CHECKPOINTS=1 (tools/train.py '
            'and tools/test.py: --trust-checkpoint); it also applies to the '
            "mmengine Runner's load_from and resume, which mmifso routes "
            'through this loader')

    def with_path(self, path: str) -> 'UnsafeCheckpointError':
        """The same error, naming the file."""
        return UnsafeCheckpointError(self.module, self.name, self.detail,
                                     path)


_TORCH_EXTRA = (
    'torch.device',
    'torch.Size',
    'torch._utils._rebuild_tensor',
    'torch._utils._rebuild_tensor_v2',
    'torch._utils._rebuild_parameter',
    'torch._utils._rebuild_parameter_with_state',
    'torch._utils._rebuild_qtensor',
    'torch._tensor._rebuild_from_type_v2',
    'torch.nn.parameter.Parameter',
    'torch.Tensor',
    'torch.storage.TypedStorage',
    'torch.storage.UntypedStorage',
    'torch.serialization._get_layout',
)
_NUMPY = tuple(f'{core}.{name}'
               for core in ('numpy.core.multiarray', 'numpy._core.multiarray')
               for name in ('_reconstruct', 'scalar')) + (
                   'numpy.core.numeric._frombuffer',
                   'numpy._core.numeric._frombuffer',
                   'numpy.ndarray',
                   'numpy.dtype',
               )
_PYTHON = (
    'collections.OrderedDict',
    'collections.Counter',
    'collections.defaultdict',
    'collections.deque',
    'builtins.set',
    'builtins.frozenset',
    'builtins.slice',
    'builtins.range',
    'builtins.complex',
    'builtins.bytearray',
    'builtins.tuple',
    'builtins.list',
    'builtins.dict',
    'builtins.int',
    'builtins.float',
    'builtins.bool',
    'builtins.str',
    'builtins.bytes',
    # bytes in protocol 2 pickles: _codecs.encode(text, 'latin1')
    '_codecs.encode',
)
_MMENGINE = (
    'mmengine.logging.history_buffer.HistoryBuffer',
    'mmengine.config.config.ConfigDict',
)
#: Attributes that may be fetched with ``getattr`` while unpickling: protocol
#: 2 pickles a function defined in a class (mmengine's HistoryBuffer keeps its
#: statistics methods in its state) as ``getattr(cls, name)``.
SAFE_ATTRIBUTES: Dict[str, FrozenSet[str]] = {
    'mmengine.logging.history_buffer.HistoryBuffer':
    frozenset({'min', 'max', 'mean', 'current'}),
}
_RENAMED_MODULES = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}


def _torch_defaults() -> Tuple[str, ...]:
    """What torch's own ``weights_only`` loader accepts, plus all dtypes."""
    import torch
    names = []
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        names += [k for k in _get_allowed_globals()
                  if isinstance(k, str)]
    except Exception:  # private API: the static list below still applies
        pass
    names += [f'torch.{n}' for n in dir(torch)
              if isinstance(getattr(torch, n, None), torch.dtype)]
    return tuple(names)


_ALLOWED: FrozenSet[str] = frozenset()


def allowed_globals() -> FrozenSet[str]:
    """The allow-list, as ``'module.name'`` strings."""
    global _ALLOWED
    if not _ALLOWED:
        _ALLOWED = frozenset(_torch_defaults() + _TORCH_EXTRA + _NUMPY +
                             _PYTHON + _MMENGINE)
    return _ALLOWED


def safe_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to :data:`SAFE_ATTRIBUTES`."""
    cls = obj if isinstance(obj, type) else type(obj)
    key = f'{cls.__module__}.{cls.__qualname__}'
    if name in SAFE_ATTRIBUTES.get(key, ()):
        return getattr(obj, name)
    raise UnsafeCheckpointError('builtins', 'getattr', f'({key}, {name!r})')


class Unpickler(pickle.Unpickler):
    """:class:`pickle.Unpickler` that resolves only allow-listed globals."""

    def find_class(self, module: str, name: str) -> Any:
        module = _RENAMED_MODULES.get(module, module)
        if module == 'builtins' and name == 'getattr':
            return safe_getattr
        if f'{module}.{name}' not in allowed_globals():
            raise UnsafeCheckpointError(module, name)
        return super().find_class(module, name)


def load(file, **kwargs) -> Any:
    """:func:`pickle.load` through :class:`Unpickler`."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs) -> Any:
    """:func:`pickle.loads` through :class:`Unpickler`."""
    import io
    return load(io.BytesIO(data), **kwargs)
