"""A physically pruned copy of a gated model, from its mutator's masks."""
import copy
from typing import Dict, Optional, Tuple

import torch.nn as nn

from mmifso.structures import make_structure
from ..task_modules.structure_pruner import apply_structure
from .channel_mutator import ChannelMutator, strip_gates


def export_pruned_model(model: nn.Module,
                        mutator: ChannelMutator,
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
    structure = make_structure(mutator, resources)
    pruned = copy.deepcopy(model)
    strip_gates(pruned)
    apply_structure(pruned, structure)
    return pruned, structure
