"""A physically pruned copy of a gated model, from its mutator's masks."""
from typing import Dict, Optional, Tuple

import torch.nn as nn

from .channel_mutator import ChannelMutator


def export_pruned_model(model: nn.Module,
                        mutator: ChannelMutator,
                        resources: Optional[Dict] = None
                        ) -> Tuple[nn.Module, Dict]:
    """A physically pruned copy of a gated model and its structure
    (:meth:`ChannelMutator.pruned_copy`).

    Args:
        model (nn.Module): The gated architecture (left unchanged).
        mutator (ChannelMutator): The mutator whose masks apply.
        resources (dict, optional): Stored in the structure for reference.

    Returns:
        tuple: The pruned copy (no gates) and the structure dict.
    """
    return mutator.pruned_copy(model, resources)
