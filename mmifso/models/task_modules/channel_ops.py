"""What a forward does with channels outside of layers: concatenations and
cuts into pieces, recorded for the analysis and kept right after pruning.

* Concatenations: the channels of every ``torch.cat`` input, keyed by the
  output's ``grad_fn``. Torch-Pruning 1.6.1 infers them from the graph, which
  fails for nested concatenations next to a channel split (Res2Net's
  ``out = torch.cat((out, sp), 1)`` after ``torch.split``): those
  concatenations got no index mapping, every input's channels landed on the
  first input's positions and unrelated channels were coupled.
  :mod:`.tp_patches` uses the recorded sizes instead.
* Channel cuts into pieces (``torch.split``, ``Tensor.split``,
  ``torch.chunk``, ``Tensor.chunk``): the module that runs each of them and
  the number of pieces. A cut into ``n`` equal pieces stays correct after
  pruning when every piece loses the same channels (the analysis ties channel
  ``c`` of every piece, see :mod:`.channel_ties`) *and* the cut still makes
  ``n`` pieces. ``chunk`` computes the piece size from the tensor; ``split``
  takes it from its caller, often a module attribute (Res2Net's
  ``torch.split(x, self.width, 1)``). :func:`fix_split_sizes` runs one
  forward of the pruned model in which such a split gets the new piece size,
  and sets the attribute that held the old one, so later forwards cut right.
  A size that no single attribute of the cutting module holds (a literal, a
  global) cannot be updated: :class:`ChannelCutError`.
"""
import contextlib
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..utils import eval_mode
from .tp_patches import channel_dim

#: Cuts into pieces whose size argument is given (split) or computed from
#: the tensor (chunk).
_SPLITS = (torch.split, torch.Tensor.split)
_CHUNKS = (torch.chunk, torch.Tensor.chunk)
_CATS = (torch.cat, torch.concat, getattr(torch, 'concatenate', torch.cat))
#: Keyword names of the size argument of the functions above.
_SIZE_KEYS = ('split_size_or_sections', 'split_size', 'chunks', 'sections')

#: ``{(module name, index of the cut among that module's cuts in one
#: forward): (number of pieces, channels of the cut input)}`` of the splits
#: whose size is an argument.
CutPieces = Dict[Tuple[str, int], Tuple[int, int]]


class ChannelCutError(RuntimeError):
    """A channel cut cannot be kept right after pruning."""


def _cut_args(args: tuple, kwargs: dict):
    """``(tensor, size, dim)`` of a split/chunk call."""
    tensor = args[0] if args else kwargs.get('input', kwargs.get('self'))
    size = args[1] if len(args) > 1 else next(
        (kwargs[k] for k in _SIZE_KEYS if k in kwargs), None)
    dim = args[2] if len(args) > 2 else kwargs.get('dim', 0)
    return tensor, size, dim


def _with_size(args: tuple, kwargs: dict, size) -> Tuple[tuple, dict]:
    """The call's arguments with ``size`` as its size argument."""
    if len(args) > 1:
        return args[:1] + (size, ) + args[2:], kwargs
    kwargs = dict(kwargs)
    kwargs[next(k for k in _SIZE_KEYS if k in kwargs)] = size
    return args, kwargs


def _is_channel_dim(tensor, dim) -> bool:
    if not isinstance(tensor, torch.Tensor) or not isinstance(dim, int) or \
            tensor.dim() < 2:
        return False
    return dim % tensor.dim() == channel_dim(tensor.shape)


class ChannelOpRecorder(TorchFunctionMode):
    """Records concatenations and channel cuts during a forward; with
    ``pieces``, it also gives the splits listed there the piece size of
    their (pruned) input and updates the attribute that held the old size.

    Use it through :func:`record_channel_ops`, which also keeps track of the
    module that runs each op.

    Args:
        model (nn.Module): The model the forward runs.
        pieces (dict, optional): :data:`CutPieces` recorded on the unpruned
            model; ``None`` records only.
    """

    def __init__(self, model: nn.Module,
                 pieces: Optional[CutPieces] = None) -> None:
        super().__init__()
        self.modules = dict(model.named_modules())
        self.stack: List[str] = []
        self.fix = pieces
        #: ``{cat grad_fn: (dim, ndim, [channels of each input])}``.
        self.concat_sizes: Dict[object, Tuple[int, int, List[int]]] = {}
        #: :data:`CutPieces` of this forward.
        self.pieces: CutPieces = {}
        #: ``{'module.attribute': (old, new)}`` set by a fixing forward.
        self.changed: Dict[str, tuple] = {}
        #: The error that stopped a fixing forward (the forward function
        #: may wrap it, e.g. :class:`.DemoInput`).
        self.error: Optional[ChannelCutError] = None
        self._counts: Dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        key = None
        if func in _SPLITS or func in _CHUNKS:
            tensor, size, dim = _cut_args(args, kwargs)
            if _is_channel_dim(tensor, dim) and func in _SPLITS:
                module = self.stack[-1] if self.stack else ''
                key = (module, self._counts.get(module, 0))
                self._counts[module] = key[1] + 1
                if self.fix is not None and key in self.fix:
                    args, kwargs = self._resized(key, tensor, size, args,
                                                 kwargs)
        out = func(*args, **kwargs)
        if key is not None:
            self.pieces[key] = (len(out),
                                int(tensor.shape[channel_dim(tensor.shape)]))
        elif func in _CATS and isinstance(out, torch.Tensor) and \
                out.grad_fn is not None:
            tensors = args[0] if args else kwargs.get('tensors')
            dim = args[1] if len(args) > 1 else kwargs.get('dim', 0)
            self.concat_sizes[out.grad_fn] = (dim % out.dim(), out.dim(), [
                int(t.shape[dim]) for t in tensors
            ])
        return out

    def _resized(self, key: Tuple[str, int], tensor: torch.Tensor, size,
                 args: tuple, kwargs: dict) -> Tuple[tuple, dict]:
        """The arguments of a split of the pruned model that cut ``tensor``
        into ``self.fix[key]`` pieces before pruning: the same, or with the
        new piece size (which the module's attribute also gets)."""
        pieces, before = self.fix[key]
        channels = int(tensor.shape[channel_dim(tensor.shape)])
        listed = isinstance(size, (list, tuple))
        old = list(size) if listed else [size] * pieces
        # Unchanged (also a ragged int split such as 88 channels in pieces
        # of 30), or the size is computed from the tensor.
        if channels == before or (sum(old) == channels
                                  and len(old) == pieces):
            return args, kwargs
        name = key[0] or 'the model'
        where = (f'{name} cuts its input of {channels} channels with '
                 f'torch.split(size={size}) (before pruning: {pieces} '
                 'pieces)')
        if len(set(old)) != 1 or channels % pieces:
            self.error = ChannelCutError(
                f'{where}: the pieces are not equal or the channels are '
                f'not a multiple of {pieces}, so no equal cut exists')
            raise self.error
        new = channels // pieces
        module = self.modules[key[0]]
        attrs = _attributes_holding(module, size)
        if len(attrs) != 1:
            held = f'several ({", ".join(attrs)})' if attrs else 'none'
            self.error = ChannelCutError(
                f'{where}: the piece size must become {new}, but {held} of '
                f'the attributes of {name} ({type(module).__name__}) hold '
                f'{size}, so the cut cannot be updated')
            raise self.error
        attr = attrs[0]
        value = getattr(module, attr)
        fixed = type(value)([new] * pieces) if isinstance(
            value, (list, tuple)) else new
        setattr(module, attr, fixed)
        self.changed[f'{name}.{attr}'] = (value, fixed)
        return _with_size(args, kwargs, [new] * pieces if listed else new)


def _attributes_holding(module: nn.Module, size) -> List[str]:
    """The public attributes of ``module`` that hold a split's ``size``: an
    int equal to it, or a list/tuple equal to it (for a list of equal sizes,
    also an int equal to one of them, e.g. ``[self.width] * n``)."""
    sizes = list(size) if isinstance(size, (list, tuple)) else None
    found = []
    for attr, value in vars(module).items():
        if attr.startswith('_'):
            continue
        if type(value) is int and value == (sizes[0] if sizes else size):
            found.append(attr)
        elif sizes and isinstance(value, (list, tuple)) and \
                list(value) == sizes:
            found.append(attr)
    if sizes:  # an attribute with the whole list beats its element
        whole = [a for a in found if isinstance(getattr(module, a), (list,
                                                                     tuple))]
        found = whole or found
    return found


@contextlib.contextmanager
def record_channel_ops(
        model: nn.Module,
        pieces: Optional[CutPieces] = None) -> Iterator[ChannelOpRecorder]:
    """Record the concatenations and channel cuts of the forwards run in
    this context (see :class:`ChannelOpRecorder`; ``pieces`` also fixes the
    split sizes)."""
    recorder = ChannelOpRecorder(model, pieces)
    names = {m: n for n, m in model.named_modules()}

    def push(module, args):
        recorder.stack.append(names[module])

    def pop(module, args, output):
        if recorder.stack and recorder.stack[-1] == names[module]:
            recorder.stack.pop()

    handles = []
    try:
        for m in names:
            handles.append(m.register_forward_pre_hook(push))
            handles.append(m.register_forward_hook(pop))
        with recorder:
            yield recorder
    finally:
        for h in handles:
            h.remove()


def fix_split_sizes(model: nn.Module, forward_fn: Callable,
                    pieces: Optional[CutPieces],
                    pre_hooks: Optional[Dict[nn.Module, Callable]] = None
                    ) -> Dict[str, tuple]:
    """Give every split that cut ``pieces[key]`` equal pieces before pruning
    the piece size of its pruned input, and the module attribute that held
    the size its new value, in one forward (eval mode, no gradients).

    Args:
        model (nn.Module): The physically pruned model (modified in place).
        forward_fn (Callable): ``forward_fn(model)`` runs the demo forward.
        pieces (dict, optional): :data:`CutPieces` of the unpruned model (a
            traced graph's ``mmifso_cut_pieces``).
        pre_hooks (dict, optional): Forward pre-hooks registered for this
            forward only (other attributes read in the same forward).

    Returns:
        dict: ``{'module.attribute': (old, new)}`` of the changed attributes.

    Raises:
        ChannelCutError: a split's piece size must change, and no single
            attribute of the module that cuts holds it.
    """
    handles = [m.register_forward_pre_hook(h)
               for m, h in (pre_hooks or {}).items()]
    try:
        with eval_mode(model), torch.no_grad(), \
                record_channel_ops(model, pieces or {}) as recorder:
            try:
                forward_fn(model)
            except Exception:
                if recorder.error is not None:  # not what the forward says
                    raise recorder.error from None
                raise
    finally:
        for h in handles:
            h.remove()
    return recorder.changed
