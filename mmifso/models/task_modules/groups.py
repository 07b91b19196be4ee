"""Coupled-channel groups from a DepGraph, with guaranteed termination.

Torch-Pruning's ``DependencyGraph.get_pruning_group`` walks the dependency
graph and stops on a node only when it reaches it again with exactly the
same index list. Around cycles that pass through a reshape (channel shuffle
in ShuffleNetV2, several RoI levels written into one tensor in two-stage
detectors) the list differs in order or grows on every lap, so the walk never
ends and memory fills up.

:func:`get_pruning_group` computes the same group as a fixpoint: every
dependency keeps the set of ``(index, root index)`` pairs it has received and
only new pairs are propagated (index mappings act on each index on its own,
so this reaches the same union as the original walk). A budget on the number
of propagated pairs turns a walk that still diverges (indices that grow
without bound) into :class:`GroupDivergedError` instead of a hang.
"""
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch.nn as nn
import torch_pruning as tp
from torch_pruning import _helpers
from torch_pruning import ops as tp_ops
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group
from torch_pruning.pruner import function

#: Most ``(index, root index)`` pairs one group may propagate.
DEFAULT_BUDGET = 500_000


class GroupDivergedError(RuntimeError):
    """The walk over the dependency graph does not converge."""


def get_pruning_group(graph: tp.DependencyGraph,
                      module: nn.Module,
                      pruning_fn,
                      idxs: Sequence[int],
                      budget: int = DEFAULT_BUDGET,
                      update_mapping: bool = True) -> Group:
    """The group of channels coupled to ``idxs`` of ``module``.

    Same result and format as ``graph.get_pruning_group`` (items carry
    ``idxs`` and ``root_idxs``; ``group.prune()`` removes the channels), except
    that an index of a layer reached from several root indices keeps all of
    them (one entry per pair) instead of the first.

    Raises:
        GroupDivergedError: if more than ``budget`` pairs are propagated.
    """
    if module not in graph.module2node:
        raise ValueError(f'Module {module} is not in the dependency graph.')
    if isinstance(module, tp_ops.TORCH_CONV) and \
            module.groups == module.out_channels and module.out_channels > 1:
        pruning_fn = function.prune_depthwise_conv_out_channels
    if update_mapping:
        index_mapping.update_index_mapping(graph)
    root = [_helpers._HybridIndex(idx=int(i), root_idx=int(i)) for i in idxs]
    root_node = graph.module2node[module]
    root_dep = Dependency(
        pruning_fn, pruning_fn, source=root_node, target=root_node)
    deps, seen = _propagate(graph, module, root_dep, root, budget)
    return _to_group(graph, deps, seen)


#: A dependency's target node and handler: what a group item stands for.
_Key = Tuple[object, object]


def _propagate(graph: tp.DependencyGraph, module: nn.Module,
               root_dep: Dependency, root: list, budget: int
               ) -> Tuple[Dict[_Key, Dependency], Dict[_Key, dict]]:
    """Walk the dependencies from ``root_dep`` to the fixpoint.

    Args:
        graph (tp.DependencyGraph): The graph, its index mappings updated.
        module (nn.Module): The root module (named in the error).
        root_dep (Dependency): The root's dependency on itself.
        root (list): The root's ``(index, root index)`` pairs.
        budget (int): Most pairs to propagate.

    Returns:
        tuple: ``deps`` (``{key: the first dependency reaching it}``) and
        ``seen`` (``{key: its pairs, as a dict used as an ordered set}``),
        both in the order the keys were first reached, the root first.

    Raises:
        GroupDivergedError: if more than ``budget`` pairs are propagated.
    """
    key = (root_dep.target, root_dep.handler)
    deps = {key: root_dep}
    seen = {key: dict.fromkeys(root)}
    stack: List[Tuple[Dependency, list]] = [(root_dep, root)]
    work = 0
    while stack:
        dep, current = stack.pop()
        node, fn = dep.target, dep.handler
        for new_dep in node.dependencies:
            if not new_dep.is_triggered_by(fn):
                continue
            new = _map_indices(new_dep, current)
            if len(new) == 0:
                continue
            key = (new_dep.target, new_dep.handler)
            have = seen.get(key)
            if have is None:
                have = seen[key] = {}
                deps[key] = new_dep
            # Only pairs not seen before go on: index mappings act on each
            # index on its own, so the union is that of the original walk.
            fresh = [i for i in dict.fromkeys(new) if i not in have]
            if not fresh:
                continue
            have.update(dict.fromkeys(fresh))
            work += len(fresh)
            if work > budget:
                name = graph._module2name.get(module, module)
                raise GroupDivergedError(
                    f'the channel dependencies of {name} '
                    f'do not converge (more than {budget} index pairs; '
                    'usually a reshape or view inside a cycle, e.g. a '
                    'channel shuffle)')
            stack.append((new_dep, fresh))
    return deps, seen


def _to_group(graph: tp.DependencyGraph, deps: Dict[_Key, Dependency],
              seen: Dict[_Key, dict]) -> Group:
    """DepGraph's group of the walk's result (see :func:`_propagate`):
    an item a dependency, with ``idxs`` and ``root_idxs`` (one entry per
    pair); the graph's ignored parameters are left out."""
    group = Group()
    ignored = getattr(graph, 'ignored_params', [])
    for key, dep in deps.items():
        if isinstance(dep.target.module, nn.Parameter) and any(
                dep.target.module is p for p in ignored):
            continue
        pairs = list(seen[key])
        group.add_dep(dep, pairs)
    group._DG = graph
    # add_dep keeps the pairs as the items' idxs; split them in two lists.
    for i in range(len(group)):
        pairs = group[i].idxs
        item = _helpers.GroupItem(group[i].dep, [p.idx for p in pairs])
        item.root_idxs = [p.root_idx for p in pairs]
        group[i] = item
    return group


def _map_indices(dep: Dependency, idxs: list) -> list:
    """The indices ``idxs`` of ``dep``'s source at its target.

    A dependency carries a split's (or reshape's, slice's) mapping in slot 0
    and a concatenation's in slot 1, and Torch-Pruning applies them in that
    order. A reverse concatenation mapping (from a concatenation back to one
    of its inputs) acts on the concatenation's output indices, the
    dependency's source, so it must come first: when that input is a split's
    piece (Res2Net's ``torch.cat((out, spx[-1]), 1)``), Torch-Pruning's
    order added the piece's offset to the output indices first and tied
    channels of another input to the piece.
    """
    mappings = list(dep.index_mapping)
    if len(mappings) > 1 and isinstance(
            mappings[1], index_mapping._ConcatIndexMapping) and \
            mappings[1].reverse:
        mappings = [mappings[1], mappings[0]] + mappings[2:]
    for mapping in mappings:
        if mapping is not None:
            idxs = mapping(idxs)
    return idxs


def get_all_groups(graph: tp.DependencyGraph,
                   root_module_types=(tp_ops.TORCH_CONV, tp_ops.TORCH_LINEAR),
                   budget: int = DEFAULT_BUDGET
                   ) -> Iterator[Tuple[nn.Module, object]]:
    """Every group, rooted at the output channels of a conv/linear layer.

    Like ``graph.get_all_groups``, but yields ``(root_module, group)``, where
    ``group`` is a :class:`GroupDivergedError` for a walk that diverged (its
    root's channels are then not part of any group).

    A walk that exceeds the budget is retried after the other roots: how
    many index pairs a walk propagates depends on its root (rooted at the
    last unit of a ShuffleNetV2 stage, every root channel reaches back
    through the shuffles to a channel of the stage's first unit and then
    forward to all of its descendants), and a group rooted elsewhere may
    hold the same layers within the budget.
    """
    index_mapping.update_index_mapping(graph)
    visited = set()
    ignored = list(graph.IGNORED_LAYERS_IN_TRACING)
    roots = []
    for m in list(graph.module2node.keys()):
        if any(m is i for i in ignored) or \
                not isinstance(m, tuple(root_module_types)):
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        roots.append(m)
    deferred: List[nn.Module] = []
    yield from _walk(graph, roots, budget, visited, deferred)
    yield from _walk(graph, deferred, budget, visited, None)


def _walk(graph: tp.DependencyGraph, roots: List[nn.Module], budget: int,
          visited: set, deferred: Optional[List[nn.Module]]
          ) -> Iterator[Tuple[nn.Module, object]]:
    """The groups of the ``roots`` not yet ``visited`` (updated); a root
    whose walk exceeds the budget goes to ``deferred``, or is yielded with
    its :class:`GroupDivergedError` when that is ``None``."""
    for m in roots:
        if m in visited:
            continue
        try:
            m, group = _whole_group(graph, m, budget, visited)
        except GroupDivergedError as e:
            if deferred is not None:
                deferred.append(m)
                continue
            visited.add(m)
            yield m, e
            continue
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
        yield m, group


def _whole_group(graph: tp.DependencyGraph, root: nn.Module, budget: int,
                 visited: set) -> Tuple[nn.Module, Group]:
    """The group of all output channels of ``root``, re-rooted where it
    holds only part of another producer's output channels.

    A layer behind a channel slice or split (``x[:, C // 2:]``, a chunk)
    reaches only that part of the producer before the cut; rooted there, the
    group would miss the producer's other channels (which then belong to no
    group, the producer being visited). Rooted at the producer, the group
    holds all of them, with the layers behind every part of the cut. A
    re-rooted walk that diverges keeps the first group.

    Returns:
        tuple: The root and its group.
    """
    group = _group_of(graph, root, budget)
    tried = {root}
    while True:
        partial = [
            m for m in _partial_producers(graph, group)
            if m not in tried and m not in visited
        ]
        if not partial:
            return root, group
        tried.add(partial[0])
        try:
            group, root = _group_of(graph, partial[0], budget), partial[0]
        except GroupDivergedError:
            return root, group


def _group_of(graph: tp.DependencyGraph, module: nn.Module,
              budget: int) -> Group:
    """The group of all output channels of ``module``."""
    pruner = graph.get_pruner_of_module(module)
    return get_pruning_group(
        graph,
        module,
        pruner.prune_out_channels,
        list(range(pruner.get_out_channels(module))),
        budget=budget,
        update_mapping=False)


def _partial_producers(graph: tp.DependencyGraph,
                       group: Group) -> List[nn.Module]:
    """Conv/linear layers of which ``group`` holds some, not all, output
    channels."""
    held = {}
    for dep, idxs in group:
        m = dep.target.module
        if isinstance(m, (tp_ops.TORCH_CONV, tp_ops.TORCH_LINEAR)) and \
                graph.is_out_channel_pruning_fn(dep.handler):
            held.setdefault(m, set()).update(int(i) for i in idxs)
    return [
        m for m, idxs in held.items()
        if len(idxs) < graph.get_pruner_of_module(m).get_out_channels(m)
    ]
