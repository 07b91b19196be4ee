"""Physical pruning: replay a structure file on a model.

The structure format itself (make, save, load, validate) lives in
:mod:`mmifso.structures`; this module removes the channels it lists from a
model with DepGraph, which slices every coupled layer, and fixes the channel
counts that a few layers keep as plain attributes.
"""
from typing import Dict

import torch.nn as nn

from mmifso.registry import TASK_UTILS
from mmifso.structures import StructureMismatchError
from ..utils import forward_with_pre_hooks
from .channel_analyzer import ChannelAnalyzer
from .groups import get_pruning_group


def apply_structure(model: nn.Module, structure: Dict) -> nn.Module:
    """Physically remove the structure's pruned channels from ``model``.

    Args:
        model (nn.Module): A freshly built, unpruned, ungated model of the
            architecture the structure was exported from. Modified in place.
        structure (dict): From :func:`mmifso.structures.make_structure` /
            :func:`mmifso.structures.load_structure`.

    Returns:
        nn.Module: ``model``, now smaller.

    Raises:
        StructureMismatchError: if a unit of the structure does not exist in
            the model or has another number of channels.
    """
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
    fix_channel_attributes(model, demo_input)
    return model


def _is_roi_extractor(module: nn.Module) -> bool:
    """mmdet RoI extractors allocate their output with ``out_channels``."""
    return hasattr(module, 'roi_layers') and isinstance(
        getattr(module, 'out_channels', None), int)


def fix_channel_attributes(model: nn.Module, demo_input) -> None:
    """Update channel counts that modules keep as plain attributes.

    DepGraph prunes parameters; a few layers without parameters size their
    outputs from a config value instead (mmdet's RoI extractors:
    ``out_channels``). One demo forward reads the channels they really
    receive. Nothing runs for models without such layers.

    Args:
        model (nn.Module): The physically pruned model (modified in place).
        demo_input (Callable): The demo-input builder of the structure;
            ``demo_input(model)`` runs one forward.
    """
    extractors = [m for m in model.modules() if _is_roi_extractor(m)]
    if not extractors:
        return

    def read_channels(module, args):
        feats = args[0]
        module.out_channels = int(feats[0].shape[1])

    forward_with_pre_hooks(model, demo_input,
                           {m: read_channels for m in extractors})
