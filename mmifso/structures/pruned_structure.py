"""The pruned structure format: which channels of each unit are gone.

A structure is plain JSON (no pickled code), so it can be shared and loaded
safely. This module only makes, writes, reads and validates the format; the
channels are removed from a model by
:func:`mmifso.models.task_modules.apply_structure`, which replays the
structure on a freshly built model with DepGraph, so a pruned model is rebuilt
from its original config plus this file.
"""
import json
import os
from typing import Dict, Optional

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
