"""Torch-Pruning 1.6.1 adapted to mmifso's exact channel removal.

* :class:`GroupNormBlockPruner` removes whole GroupNorm groups only and lowers
  ``num_groups`` (Torch-Pruning keeps it, which changes the statistics).
* Concatenations of inputs of unknown size get no index mapping instead of a
  ``TypeError`` (patched into Torch-Pruning once, at import).
* :func:`new_dependency_graph` is the DependencyGraph every analysis uses.
"""
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops as tp_ops
from torch_pruning.dependency import index_mapping


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
        try:
            return original(graph, cat_node)
        except TypeError:
            sizes = getattr(cat_node.module, 'concat_sizes', None)
            if sizes is not None and None in sizes:
                return None
            raise

    update_concat_index_mapping._mmifso_safe = True
    index_mapping.update_concat_index_mapping = update_concat_index_mapping


_patch_concat_index_mapping()


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
