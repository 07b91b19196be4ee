"""Torch-Pruning 1.6.1 adapted to mmifso's exact channel removal.

* :class:`GroupNormBlockPruner` removes whole GroupNorm groups only and lowers
  ``num_groups`` (Torch-Pruning keeps it, which changes the statistics).
* Concatenations of inputs of unknown size get no index mapping instead of a
  ``TypeError`` (patched into Torch-Pruning once, at import).
* Shape inference knows channel slices (``x[:, a:b]``): Torch-Pruning takes
  a slice for an element-wise op, so a concatenation of a slice and another
  tensor got the wrong input sizes, hence no index mapping at all, and the
  channels behind it were mapped to the wrong inputs (CSPNet's stages). The
  slice's length is computed from its input's channels (patched at import).
* Channel splits (``torch.split``, ``chunk``) get their piece sizes from the
  traced op, and each reader of a piece the offsets of *its* piece (autograd
  records which output of the split a reader takes; :func:`record_split_
  readers` collects them after the trace, over every call of a reused
  layer). Torch-Pruning 1.6.1 infers the sizes from the readers (wrong when
  a piece has several, or under torch 2.x, whose split records
  ``_saved_self_sym_sizes``) and gives the i-th reader the i-th piece. A
  reader of several pieces, or one that cannot be identified, makes the
  split ambiguous (:func:`split_is_ambiguous`) and is cut off from it.
* Concatenations get their input sizes from the traced forward
  (``graph.mmifso_concat_sizes``, recorded by :mod:`.channel_ops`) where
  they are known: Torch-Pruning's inference gave nested concatenations next
  to a channel split (Res2Net) no index mapping at all, so every input's
  channels landed on the first input's positions.
* Channel shuffles (``view`` into ``g`` pieces, ``transpose``, ``view``
  back; :func:`channel_shuffle`) get their permutation as index mapping,
  and channel ``b`` of every piece is coupled (every piece must lose the
  same channels for the shuffle to stay one), which joins the producers of
  the pieces into one group. Torch-Pruning mapped the shuffle as the
  identity.
* :func:`new_dependency_graph` is the DependencyGraph every analysis uses.
"""
from typing import Dict, List, Optional, Set

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import _helpers
from torch_pruning import ops as tp_ops
from torch_pruning.dependency import index_mapping, shape_infer


class GroupNormBlockPruner(tp.pruner.function.GroupNormPruner):
    """Torch-Pruning's GroupNorm pruner that removes whole groups only.

    Torch-Pruning keeps ``num_groups`` when it removes channels of a
    ``GroupNorm``, which changes the channels per group and therefore the
    statistics of every group. This pruner requires the removed channels to
    be whole groups and lowers ``num_groups`` accordingly, so the pruned layer
    normalises the remaining channels exactly as before.
    """

    def prune_out_channels(self, layer: nn.GroupNorm, idxs) -> nn.Module:
        idxs = sorted(set(int(i) for i in idxs))
        per_group = layer.num_channels // layer.num_groups
        groups = sorted({i // per_group for i in idxs})
        whole = [i for g in groups for i in range(g * per_group,
                                                    (g + 1) * per_group)]
        if idxs != whole:
            raise ValueError(
                f'GroupNorm({layer.num_groups}, {layer.num_channels}): the '
                f'removed channels {idxs} are not whole groups of '
                f'{per_group} channels, so removing them would change the '
                'statistics of the remaining groups')
        if len(groups) >= layer.num_groups:
            raise ValueError(f'GroupNorm({layer.num_groups}, '
                             f'{layer.num_channels}): cannot remove every '
                             'group')
        super().prune_out_channels(layer, idxs)
        layer.num_groups -= len(groups)
        return layer

    prune_in_channels = prune_out_channels


def _patch_concat_index_mapping() -> None:
    """Torch-Pruning 1.6.1 sums the input sizes of a concatenation before it
    checks them for ``None`` (unknown, e.g. slices of the input image as in
    YOLOX's Focus stem) and raises ``TypeError``. Such a concatenation gets
    no index mapping, which is what the function does for ``None`` sizes a
    few lines later."""
    original = index_mapping.update_concat_index_mapping
    if getattr(original, '_mmifso_safe', False):
        return

    def update_concat_index_mapping(graph, cat_node):
        if getattr(cat_node.module, 'mmifso_traced_sizes', False):
            return _concat_index_mapping(cat_node)
        try:
            return original(graph, cat_node)
        except TypeError:
            sizes = getattr(cat_node.module, 'concat_sizes', None)
            if sizes is not None and None in sizes:
                return None
            raise

    update_concat_index_mapping._mmifso_safe = True
    index_mapping.update_concat_index_mapping = update_concat_index_mapping


def _concat_index_mapping(cat_node) -> None:
    """Offsets of a concatenation from its (current) input sizes: input
    ``i``'s channel ``j`` is the output's channel ``offsets[i] + j``."""
    if not cat_node.enable_index_mapping:
        return
    offsets = cat_node.module.offsets = _offsets(cat_node.module.concat_sizes)
    for i, in_node in enumerate(cat_node.inputs):
        piece = offsets[i:i + 2]
        for dep in cat_node.dependencies:
            if dep.target is in_node:
                dep.index_mapping[1] = index_mapping._ConcatIndexMapping(
                    offset=piece, reverse=True)
        for dep in in_node.dependencies:
            if dep.target is cat_node:
                dep.index_mapping[1] = index_mapping._ConcatIndexMapping(
                    offset=piece, reverse=False)


def _traced_concat_sizes(graph, node) -> Optional[List[int]]:
    """The input channels of a concatenation along the channel dim, as the
    traced forward recorded them (``None``: not recorded, another dim, or
    inputs that are not one node each)."""
    recorded = getattr(graph, 'mmifso_concat_sizes', {}).get(node.grad_fn)
    if recorded is None:
        return None
    dim, ndim, sizes = recorded
    if dim != channel_dim([0] * ndim) or len(sizes) != len(node.inputs) or \
            len(set(node.inputs)) != len(node.inputs):
        return None
    return list(sizes)


def channel_dim(sizes) -> int:
    """The dimension Torch-Pruning prunes in a tensor of ``len(sizes)``
    dimensions: 1, but 2 for tokens ``(B, N, C)``."""
    return 2 if len(sizes) == 3 else 1


def cuts_channels(grad_fn) -> bool:
    """Whether a slice or split (``grad_fn``) cuts the channel dimension
    (True when unknown)."""
    dim = getattr(grad_fn, '_saved_dim', None)
    sizes = getattr(grad_fn, '_saved_self_sym_sizes', None)
    if dim is None or sizes is None or not 0 <= dim < len(sizes):
        return True
    return dim == channel_dim(sizes)


def _patch_slice_shape_inference() -> None:
    """Torch-Pruning 1.6.1 infers a channel slice's output channels as its
    input's (it passes unknown ops through). The slice's own length is
    computed instead, from its (current) ``start``/``end``/``step`` and the
    input's inferred channels, so concatenations of slices get their index
    mapping."""
    original = shape_infer.infer_out_channels_recursively
    if getattr(original, '_mmifso_safe', False):
        return

    def infer_out_channels_recursively(graph, node, recursive_depth):
        if node.type == tp_ops.OPTYPE.SLICE and cuts_channels(
                node.grad_fn) and len(node.inputs) == 1:
            recursive_depth[0] += 1
            channels = infer_out_channels_recursively(
                graph, node.inputs[0], recursive_depth)
            if channels is None:
                return None
            op = node.module
            return len(range(op.start, min(op.end, channels), op.step)) or \
                None
        return original(graph, node, recursive_depth)

    infer_out_channels_recursively._mmifso_safe = True
    shape_infer.infer_out_channels_recursively = \
        infer_out_channels_recursively


def split_sizes(grad_fn) -> Optional[List[int]]:
    """The piece sizes of a traced ``split``/``chunk`` (``None``:
    unknown)."""
    sizes = getattr(grad_fn, '_saved_split_sizes', None)
    if sizes is not None:
        return [int(s) for s in sizes]
    size = getattr(grad_fn, '_saved_split_size', None)
    shape = getattr(grad_fn, '_saved_self_sym_sizes', None)
    dim = getattr(grad_fn, '_saved_dim', None)
    if size is None or shape is None or dim is None or \
            not 0 <= dim < len(shape) or int(size) <= 0:
        return None
    total, size = int(shape[dim]), int(size)
    return [size] * (total // size) + ([total % size] if total % size else [])


def _offsets(sizes: List[int]) -> List[int]:
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return offsets


def record_split_readers(graph: tp.DependencyGraph, outputs: list,
                         fn2module: Dict[object, nn.Module]) -> None:
    """Which piece(s) of each channel split every reader takes.

    Walks the autograd graph of the traced ``outputs`` (the tensors of the
    trace's forward) and stores ``{split grad_fn: {reader node (None: not
    identified): {piece numbers}}}`` as ``graph.mmifso_split_readers``, for
    the split index mapping.

    Args:
        graph (DependencyGraph): The traced graph.
        outputs (list[Tensor]): The tensors the traced forward returned.
        fn2module (dict): ``{output grad_fn: module}`` of every module call
            of the trace (the innermost module first), so that every call
            of a reused layer is found.
    """
    nodes = list(graph.module2node.values())
    splits = {n.grad_fn for n in nodes if n.type == tp_ops.OPTYPE.SPLIT}
    readers: Dict[object, Dict[object, Set[int]]] = {}
    graph.mmifso_split_readers = readers
    if not splits:
        return
    by_fn = {n.grad_fn: n for n in nodes}
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        for prev, nr in getattr(fn, 'next_functions', ()):
            if prev is None:
                continue
            if prev in splits:
                node = by_fn.get(fn) or graph.module2node.get(
                    fn2module.get(fn))
                readers.setdefault(prev, {}).setdefault(node, set()).add(nr)
            stack.append(prev)


def _pieces_read(graph: tp.DependencyGraph, split_node,
                 reader) -> Set[int]:
    """The pieces of ``split_node`` that ``reader`` (a node) takes: as
    recorded by :func:`record_split_readers`, or during the trace (before
    that) from the reader's own grad_fn."""
    recorded = getattr(graph, 'mmifso_split_readers', None)
    if recorded is not None:
        return set(recorded.get(split_node.grad_fn, {}).get(reader, ()))
    return {
        nr for fn, nr in getattr(reader.grad_fn, 'next_functions', ())
        if fn is split_node.grad_fn
    }


def _drop_all(idxs):
    """An index mapping that reaches nothing (an unidentified reader)."""
    return []


def split_is_ambiguous(node) -> bool:
    """Whether a reader of a channel split takes several of its pieces, so
    the split's index mapping is unknown."""
    return bool(getattr(node.module, 'mmifso_ambiguous', False))


def _patch_split_index_mapping() -> None:
    """Exact piece sizes and per-reader piece offsets for channel splits,
    and the traced input sizes of concatenations (see the module
    docstring)."""
    original_init = shape_infer.init_shape_information
    original_update = index_mapping.update_split_index_mapping
    if getattr(original_update, '_mmifso_safe', False):
        return

    def init_shape_information(graph):
        original_init(graph)
        for node in graph.module2node.values():
            sizes = split_sizes(node.grad_fn) if (
                node.type == tp_ops.OPTYPE.SPLIT
                and cuts_channels(node.grad_fn)) else None
            if sizes:
                node.module.split_sizes = sizes
                node.module.offsets = _offsets(sizes)
            sizes = _traced_concat_sizes(graph, node) if (
                node.type == tp_ops.OPTYPE.CONCAT) else None
            if sizes:
                node.module.concat_sizes = sizes
                node.module.mmifso_traced_sizes = True

    def update_split_index_mapping(graph, split_node):
        op = split_node.module
        if split_node.type != tp_ops.OPTYPE.SPLIT or not cuts_channels(
                split_node.grad_fn) or op.split_sizes is None or \
                split_sizes(split_node.grad_fn) is None:
            return original_update(graph, split_node)
        # The current sizes: SplitPruner keeps them up to date.
        offsets = op.offsets = _offsets(op.split_sizes)
        recorded = getattr(graph, 'mmifso_split_readers', {})
        op.mmifso_ambiguous = None in recorded.get(split_node.grad_fn, {})
        for reader in split_node.outputs:
            pieces = _pieces_read(graph, split_node, reader)
            forward = backward = _drop_all
            if len(pieces) == 1:
                k = pieces.pop()
                forward = index_mapping._SplitIndexMapping(
                    offset=offsets[k:k + 2], reverse=False)
                backward = index_mapping._SplitIndexMapping(
                    offset=offsets[k:k + 2], reverse=True)
            else:
                op.mmifso_ambiguous = True
            for dep in split_node.dependencies:
                if dep.target is reader:
                    dep.index_mapping[0] = forward
            for dep in reader.dependencies:
                if dep.target is split_node:
                    dep.index_mapping[0] = backward

    update_split_index_mapping._mmifso_safe = True
    shape_infer.init_shape_information = init_shape_information
    index_mapping.update_split_index_mapping = update_split_index_mapping


class _ShuffleIndexMapping:
    """Index mapping through a channel shuffle (view into ``groups`` pieces,
    transpose, view back).

    Input channel ``i = a * K + b`` (channel ``b`` of piece ``a``, ``K =
    C // groups``) is output channel ``b * groups + a``. The shuffle cuts its
    input into ``groups`` pieces from the size, so after pruning it stays a
    shuffle of the same channels only if every piece loses the same channels:
    the forward mapping sends channel ``b`` of a piece to the output
    positions of channel ``b`` of *every* piece, which couples them (the
    producers of the pieces join one group, as across a residual add). The
    reverse mapping is the inverse permutation.

    Args:
        groups (int): The number of pieces of the first view.
        channels (int): The shuffled channels (current, after pruning).
        reverse (bool): Map output indices back to input indices.
    """

    def __init__(self, groups: int, channels: int, reverse: bool) -> None:
        self.groups, self.channels, self.reverse = groups, channels, reverse

    def __call__(self, idxs):
        g = self.groups
        size = self.channels // g
        if self.reverse:
            return [
                _helpers._HybridIndex(
                    idx=(i.idx % g) * size + i.idx // g, root_idx=i.root_idx)
                for i in idxs if 0 <= i.idx < self.channels
            ]
        return [
            _helpers._HybridIndex(idx=(i.idx % size) * g + a,
                                  root_idx=i.root_idx) for i in idxs
            if 0 <= i.idx < self.channels for a in range(g)
        ]


def channel_shuffle(node) -> Optional[tuple]:
    """``(groups, first view node, last view node)`` when ``node`` is the
    transpose of a channel shuffle: ``x.view(B, g, C // g, H, W)
    .transpose(1, 2).view(B, C, H, W)`` (ShuffleNet), possibly with an
    element-wise op (``.contiguous()``) before the last view; else ``None``.

    The first view must only split the channel dim of a 4-D (or higher)
    tensor in two and the transpose swap exactly those two dims.
    """
    fn = getattr(node, 'grad_fn', None)
    if fn is None or 'TransposeBackward' not in fn.name() or {
            getattr(fn, '_saved_dim0', None),
            getattr(fn, '_saved_dim1', None)} != {1, 2}:
        return None
    before = [n for n in node.inputs if n.type == tp_ops.OPTYPE.RESHAPE]
    if len(node.inputs) != 1 or len(before) != 1:
        return None
    after, todo = [], list(node.outputs)
    for _ in range(16):  # past element-wise ops (the .contiguous() copy)
        if not todo:
            break
        n = todo.pop()
        if n.type == tp_ops.OPTYPE.RESHAPE:
            after.append(n)
        elif n.type == tp_ops.OPTYPE.ELEMENTWISE and len(n.inputs) == 1:
            todo.extend(n.outputs)
    a = tuple(getattr(before[0].grad_fn, '_saved_self_sym_sizes', ()))
    if len(a) < 4 or channel_dim(a) != 1 or len(after) != 1:
        return None
    b = tuple(getattr(after[0].grad_fn, '_saved_self_sym_sizes', ()))
    if len(b) != len(a) + 1 or b[0] != a[0] or b[3:] != a[2:] or \
            a[1] != b[1] * b[2] or b[2] < 2:
        return None
    return int(b[2]), before[0], after[0]


def _shuffle_into(node) -> Optional[tuple]:
    """``(groups, first view node, the node that feeds the last view)``
    when the reshape ``node`` is the last view of a channel shuffle."""
    feed = node.inputs[0] if len(node.inputs) == 1 else None
    prev = feed
    for _ in range(16):
        if prev is None:
            return None
        shuffle = channel_shuffle(prev)
        if shuffle is not None:
            return (shuffle[0], shuffle[1], feed) if \
                shuffle[2] is node else None
        if prev.type != tp_ops.OPTYPE.ELEMENTWISE or len(prev.inputs) != 1:
            return None
        prev = prev.inputs[0]
    return None


def _patch_shuffle_index_mapping() -> None:
    """The permutation (and coupling) of a channel shuffle as the index
    mapping of its last view (:class:`_ShuffleIndexMapping`); Torch-Pruning
    maps every view that keeps the channel count as the identity. The
    number of channels is inferred anew at every update, so the mapping
    follows earlier prunings of the same graph."""
    original = index_mapping.update_reshape_index_mapping
    if getattr(original, '_mmifso_safe', False):
        return

    def update_reshape_index_mapping(graph, node):
        shuffle = _shuffle_into(node)
        if shuffle is None:
            if any(channel_shuffle(n) for n in node.outputs):
                return  # the first view: channels keep their index
            return original(graph, node)
        groups, first, feed = shuffle
        channels = None
        if len(first.inputs) == 1:
            channels = shape_infer.infer_out_channels_recursively(
                graph, first.inputs[0], [0])
        if not channels or channels % groups:  # not inferred: as traced
            channels = int(first.grad_fn._saved_self_sym_sizes[1])
        first.module.mmifso_shuffle = groups
        for dep in feed.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _ShuffleIndexMapping(
                    groups, channels, reverse=False)
        for dep in node.dependencies:
            if dep.target is feed:
                dep.index_mapping[0] = _ShuffleIndexMapping(
                    groups, channels, reverse=True)

    update_reshape_index_mapping._mmifso_safe = True
    index_mapping.update_reshape_index_mapping = update_reshape_index_mapping


_patch_concat_index_mapping()
_patch_slice_shape_inference()
_patch_split_index_mapping()
_patch_shuffle_index_mapping()


def new_dependency_graph() -> tp.DependencyGraph:
    """A DependencyGraph whose GroupNorm pruner removes whole groups."""
    graph = tp.DependencyGraph()
    graph.REGISTERED_PRUNERS[tp_ops.OPTYPE.GN] = GroupNormBlockPruner()
    pruners = [
        p for p in list(graph.REGISTERED_PRUNERS.values()) +
        list(graph.CUSTOMIZED_PRUNERS.values()) if p is not None
    ]
    graph._in_channel_pruning_fn = set(p.prune_in_channels for p in pruners)
    graph._out_channel_pruning_fn = set(p.prune_out_channels for p in pruners)
    return graph
