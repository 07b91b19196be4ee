"""Physical pruning: replay a structure file on a model.

The structure format itself (make, save, load, validate) lives in
:mod:`mmifso.structures`; this module removes the channels it lists from a
model with DepGraph, which slices every coupled layer, and fixes the channel
counts that a few layers keep as plain attributes.
"""
from typing import Callable, Dict, Optional

import torch.nn as nn

from mmifso.registry import TASK_UTILS
from mmifso.structures import StructureMismatchError
from .channel_analyzer import ChannelAnalyzer
from .channel_ops import CutPieces, fix_split_sizes
from .groups import get_pruning_group


def apply_structure(model: nn.Module, structure: Dict,
                    demo_input: Optional[Callable] = None) -> nn.Module:
    """Physically remove the structure's pruned channels from ``model``.

    Args:
        model (nn.Module): A freshly built, unpruned, ungated model of the
            architecture the structure was exported from. Modified in place.
        structure (dict): From :func:`mmifso.structures.make_structure` /
            :func:`mmifso.structures.load_structure`.
        demo_input (callable, optional): The demo input to trace with; None:
            the one the structure names.

    Returns:
        nn.Module: ``model``, now smaller.

    Raises:
        StructureMismatchError: if a unit of the structure does not exist in
            the model or has another number of channels.
    """
    if demo_input is None:
        demo_input = TASK_UTILS.build(structure['demo_input'])
    graph = ChannelAnalyzer(demo_input).build_graph(model)
    names = dict(model.named_modules())
    for unit in structure['units']:
        name, pruned = unit['name'], unit['pruned']
        module = names.get(name)
        if module is None:
            raise StructureMismatchError(
                f'the structure prunes unit {name!r}, which is not a module '
                'of the model: the structure file belongs to another '
                'architecture')
        pruner = graph.get_pruner_of_module(module)
        channels = pruner.get_out_channels(module) if pruner else None
        if channels != unit['num_channels']:
            raise StructureMismatchError(
                f'unit {name!r} has {unit["num_channels"]} channels in the '
                f'structure file but {channels} in the model: the structure '
                'file belongs to another architecture or was applied twice')
        if not pruned:
            continue
        if len(pruned) >= channels or min(pruned) < 0 or \
                max(pruned) >= channels:
            raise StructureMismatchError(
                f'unit {name!r}: invalid pruned channels {pruned} for '
                f'{channels} channels')
        group = get_pruning_group(graph, module, pruner.prune_out_channels,
                                  list(pruned))
        group.prune()
    fix_channel_attributes(model, demo_input,
                           getattr(graph, 'mmifso_cut_pieces', None))
    return model


def _is_roi_extractor(module: nn.Module) -> bool:
    """mmdet RoI extractors allocate their output with ``out_channels``."""
    return hasattr(module, 'roi_layers') and isinstance(
        getattr(module, 'out_channels', None), int)


def fix_channel_attributes(model: nn.Module,
                           demo_input,
                           cut_pieces: Optional[CutPieces] = None) -> None:
    """Update channel counts that modules keep as plain attributes.

    DepGraph prunes parameters; a few layers keep their channels as plain
    values too (mmpretrain's ``LayerNorm2d.num_channels``, set from its
    normalized shape) or size their outputs or cuts from a plain value:
    mmdet's RoI extractors allocate ``out_channels``,
    and a split into equal pieces may take its piece size from an attribute
    (Res2Net's ``width``; see :func:`.channel_ops.fix_split_sizes`). One demo
    forward reads the channels they really receive. Nothing runs for models
    without such layers.

    Args:
        model (nn.Module): The physically pruned model (modified in place).
        demo_input (Callable): The demo-input builder of the structure;
            ``demo_input(model)`` runs one forward.
        cut_pieces (dict, optional): The pieces of every split of the
            unpruned model (the traced graph's ``mmifso_cut_pieces``).

    Raises:
        ChannelCutError: a split's piece size must change and cannot.
    """
    for m in model.modules():
        # DepGraph shrinks a LayerNorm's normalized_shape; mmpretrain's
        # LayerNorm2d also keeps its channels as ``num_channels``.
        if isinstance(m, nn.LayerNorm) and isinstance(
                getattr(m, 'num_channels', None), int):
            m.num_channels = m.normalized_shape[0]
    extractors = [m for m in model.modules() if _is_roi_extractor(m)]
    if not extractors and not cut_pieces:
        return

    def read_channels(module, args):
        feats = args[0]
        module.out_channels = int(feats[0].shape[1])

    fix_split_sizes(model, demo_input, cut_pieces,
                    {m: read_channels for m in extractors})
