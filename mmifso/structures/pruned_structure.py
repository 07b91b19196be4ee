"""The pruned structure: which channels of each unit are gone.

A structure is plain JSON (no pickled code), so it can be shared and loaded
safely. It is replayed on a freshly built model with DepGraph, which removes
the channels from every coupled layer, so a pruned model is rebuilt from its
original config plus this file.
"""
import copy
import json
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from mmifso.registry import TASK_UTILS
from mmifso.utils import save_json

STRUCTURE_FORMAT = 'mmifso.pruned_structure'
STRUCTURE_VERSION = 1


class StructureMismatchError(ValueError):
    """A structure file does not fit the model it is applied to."""


def make_structure(mutator, resources: Optional[Dict] = None) -> Dict:
    """Describe the mutator's current masks.

    Args:
        mutator (ChannelMutator): A prepared mutator.
        resources (dict, optional): Extra figures stored for reference
            (e.g. FLOPs and params).

    Returns:
        dict: JSON-serialisable structure.
    """
    units = []
    for unit in mutator.units:
        alive = unit.alive.cpu()
        units.append(
            dict(
                name=unit.name,
                num_channels=unit.num_channels,
                pruned=[i for i in range(unit.num_channels) if not alive[i]]))
    return dict(
        format=STRUCTURE_FORMAT,
        version=STRUCTURE_VERSION,
        demo_input=mutator.demo_input.to_dict(),
        units=units,
        resources=resources or {})


def load_structure(path: str) -> Dict:
    """Read and validate a structure file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'structure file {path} does not exist; create it with '
            'tools/export_pruned.py')
    try:
        with open(path) as f:
            structure = json.load(f)
    except json.JSONDecodeError as e:
        raise StructureMismatchError(
            f'{path} is not valid JSON ({e}); the file is corrupted or '
            'truncated: export it again with tools/export_pruned.py') from e
    if not isinstance(structure, dict) or \
            structure.get('format') != STRUCTURE_FORMAT:
        raise StructureMismatchError(
            f'{path} is not an mmifso structure file (missing '
            f'"format": "{STRUCTURE_FORMAT}")')
    if structure.get('version') != STRUCTURE_VERSION:
        raise StructureMismatchError(
            f'{path} has structure version {structure.get("version")}, '
            f'this mmifso reads version {STRUCTURE_VERSION}')
    return structure


def save_structure(structure: Dict, path: str) -> None:
    """Write a structure file atomically."""
    save_json(structure, path)


def apply_structure(model: nn.Module, structure: Dict) -> nn.Module:
    """Physically remove the structure's pruned channels from ``model``.

    Args:
        model (nn.Module): A freshly built, unpruned, ungated model of the
            architecture the structure was exported from. Modified in place.
        structure (dict): From :func:`make_structure` / :func:`load_structure`.

    Returns:
        nn.Module: ``model``, now smaller.

    Raises:
        StructureMismatchError: if a unit of the structure does not exist in
            the model or has another number of channels.
    """
    from mmifso.models.task_modules.channel_analyzer import ChannelAnalyzer
    from mmifso.models.task_modules.groups import get_pruning_group
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
    """
    extractors = [m for m in model.modules() if _is_roi_extractor(m)]
    if not extractors:
        return

    def read_channels(module, args):
        feats = args[0]
        module.out_channels = int(feats[0].shape[1])

    handles = [m.register_forward_pre_hook(read_channels) for m in extractors]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            demo_input(model)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode


def export_pruned_model(model: nn.Module,
                        mutator,
                        resources: Optional[Dict] = None
                        ) -> Tuple[nn.Module, Dict]:
    """A physically pruned copy of a gated model and its structure.

    Args:
        model (nn.Module): The gated architecture (left unchanged).
        mutator (ChannelMutator): The mutator whose masks apply.
        resources (dict, optional): Stored in the structure for reference.

    Returns:
        tuple: The pruned copy (no gates) and the structure dict.
    """
    from mmifso.models.mutators import strip_gates
    structure = make_structure(mutator, resources)
    pruned = copy.deepcopy(model)
    strip_gates(pruned)
    apply_structure(pruned, structure)
    return pruned, structure
