"""Which units a physical export reproduces: a unit's masked channels
must leave the model's outputs as removing them does.

The analysis finds coupled channels from the traced graph; an op the graph
does not show (a channel count held in an attribute and used in a reshape,
a mean over the channels) makes masking and removing differ.
:class:`.ChannelMutator` runs this check once, on a copy, and leaves such
units out with the reason.
"""
from typing import Callable, Dict, List, Optional, Sequence

from ..utils import outputs_agree

#: Largest masked/exported output difference, relative to the largest
#: output when that exceeds 1 (the export's own check uses the same).
EXPORT_ATOL = 1e-4


def failing_items(items: Sequence,
                  trial: Callable[[List], Optional[str]]) -> Dict[int, str]:
    """The items for which ``trial`` fails, found by bisection.

    ``trial(subset)`` returns None when the subset passes and otherwise why
    it failed. When every item passes this costs one trial; each failing
    item costs about ``2 log2(len(items))`` more. A subset that fails while
    both its halves pass fails only as a whole: all its items are returned.

    Args:
        items (Sequence): The items (e.g. units).
        trial (Callable): Tries a list of items together.

    Returns:
        dict: ``{index into items: why}`` of the failing items.
    """
    failing: Dict[int, str] = {}

    def search(idx: List[int], why: str) -> None:
        if len(idx) == 1:
            failing[idx[0]] = why
            return
        half = len(idx) // 2
        found = False
        for part in (idx[:half], idx[half:]):
            part_why = trial([items[i] for i in part])
            if part_why is not None:
                found = True
                search(part, part_why)
        if not found:
            for i in idx:
                failing[i] = (f'{why} (only when {len(idx)} units lose '
                              'channels together)')

    why = trial(list(items))
    if why is not None:
        search(list(range(len(items))), why)
    return failing


def export_mismatch(diff: float, scale: float,
                    atol: float = EXPORT_ATOL) -> Optional[str]:
    """Why masked and exported outputs differ, or None when they agree.

    Args:
        diff (float): Largest absolute output difference.
        scale (float): Largest absolute masked output.
        atol (float): Tolerance, relative to ``scale`` when that exceeds 1.
    """
    if outputs_agree(diff, scale, atol):
        return None
    return (f'the exported model\'s outputs differ from the masked model\'s '
            f'by {diff:.3g} (largest output {scale:.3g})')
