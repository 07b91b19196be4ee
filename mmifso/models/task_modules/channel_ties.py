"""Channels of a unit that can only be removed together (union-find).

Some channels of a unit are *tied*: they can only be removed together, because
an op between producer and consumer mixes them.

* ``nn.GroupNorm``: statistics are per group, so removing a whole group leaves
  the other groups' outputs unchanged (masking == removal) while removing part
  of a group does not. Channels of one GN group are tied; the exported model
  gets fewer groups (see :class:`~.tp_patches.GroupNormBlockPruner`).
* Grouped convolutions (``1 < groups``, not depthwise): the exported layer
  keeps its ``groups`` and every group must lose the same channels, so the
  channel at position ``j`` of every group is tied to position ``j`` of the
  others.

* A cut of the channels into ``n`` equal pieces: two halves whose cut point
  the model computes from the tensor's size (``x[:, :C // 2]`` /
  ``x[:, C // 2:]``), or ``n`` pieces of a split or chunk
  (``x.chunk(n, dim=1)``, ``torch.split(x, C // n, 1)``, Res2Net's
  ``torch.split(x, self.width, 1)``): after pruning the cut points stay
  between the right channels only if every piece loses the same number of
  channels, so channel ``c`` of every piece is tied to channel ``c`` of the
  others (blocks of ``n``). A split's size must then change with the pieces
  (see :mod:`.channel_ops`). For a cut into two, only the counts matter:
  where other ties already group channels (a channel shuffle pairs channel
  ``b`` of its two pieces, ShuffleNetV2), tying channel ``c`` to ``c +
  C/2`` would merge a whole stage into one block, so the halves are
  balanced instead: in the order of the forward, each block with ``e``
  more channels in the first half is merged with one with ``e`` more in the
  second (its positional partner's block when that fits), and any blocks
  left unbalanced are merged together (:meth:`ChannelTies.blocks`). When
  that greedy merging leaves one block, an exact search looks for unions of
  the tied sets that are balanced at every cut (:func:`balanced_unions`; a
  stage of 7 ShuffleNetV2 units of 2 x 116 channels has two, the 8 units of
  ShuffleNetV2-1x's second stage provably none).

The ties of a unit are its *blocks* (``UnitSpec.blocks``, a partition of its
channels); selection removes whole blocks.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.nn as nn


class ChannelTies:
    """Union-find over the channels of one unit: which must go together."""

    def __init__(self, num_channels: int) -> None:
        self.parent = list(range(num_channels))
        self.sources: List[str] = []
        #: The cuts into equal pieces that tied channels (see
        #: :meth:`pieces`), e.g. ``'torch.split/chunk into 8 equal
        #: pieces'``.
        self.cuts: List[str] = []
        #: ``{tensor key: (order, size, idxs, root_idxs)}`` of the cuts
        #: into two halves, balanced by :meth:`blocks`.
        self.halves: Dict[object, tuple] = {}

    def _find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def _tie(self, keys: Sequence[int], root_idxs: Sequence[int]) -> bool:
        """Tie the root channels that share a key; True if any were new."""
        first: Dict[int, int] = {}
        merged = False
        for k, r in zip(keys, root_idxs):
            if r is None or not 0 <= int(r) < len(self.parent):
                continue  # an inconsistent mapping, reported elsewhere
            r = int(r)
            if k in first:
                a, b = self._find(first[k]), self._find(r)
                if a != b:
                    self.parent[max(a, b)] = min(a, b)
                    merged = True
            else:
                first[k] = r
        return merged

    def shared_indices(self, name: str, idxs, root_idxs) -> None:
        """A channel of a layer reached from several channels of the root:
        those root channels can only go together."""
        if self._tie([int(i) for i in idxs], root_idxs):
            self.sources.append(f'{name} (channels reached from several '
                                'root channels)')

    def group_norm(self, name: str, module: nn.GroupNorm, idxs, root_idxs
                   ) -> Optional[str]:
        per_group = module.num_channels // module.num_groups
        keys = [int(i) // per_group for i in idxs]
        present: Dict[int, set] = {}
        for i, k in zip(idxs, keys):
            present.setdefault(k, set()).add(int(i))
        partial = [k for k, v in present.items() if len(v) != per_group]
        if partial:
            return (f'{name} (GroupNorm, {module.num_groups} groups of '
                    f'{per_group}) has groups whose channels belong to '
                    'several units, so no unit can remove a whole group')
        if per_group > 1:
            self._tie(keys, root_idxs)
            self.sources.append(f'{name} (GroupNorm)')
        return None

    def grouped_conv(self, name: str, module: nn.modules.conv._ConvNd,
                     is_out: bool, idxs, root_idxs) -> Optional[str]:
        total = module.out_channels if is_out else module.in_channels
        per_group = total // module.groups
        if len(set(int(i) for i in idxs)) != total:
            side = 'output' if is_out else 'input'
            return (f'{name} is a grouped convolution (groups='
                    f'{module.groups}) whose {side} channels belong to '
                    'several units; every group must lose the same channels')
        # Position j of every group is tied: the pruned layer keeps `groups`
        # and one weight slice per position.
        self._tie([int(i) % per_group for i in idxs], root_idxs)
        self.sources.append(f'{name} (groups={module.groups})')
        return None

    def pieces(self, cut: str, size: int, num: int, idxs, root_idxs,
               key: Optional[tuple] = None) -> Optional[str]:
        """Tie channel ``c`` of every piece of a tensor cut into ``num``
        equal pieces of ``size`` channels (``idxs``: its channels in the
        unit, ``root_idxs`` the unit's channels they carry).

        With ``key`` (``(order in the forward, tensor)``) a cut into two
        halves is balanced by :meth:`blocks` instead: each block then
        loses as many channels of one half as of the other.

        Returns:
            str, optional: Why the pieces cannot lose the same channels: the
            unit holds channel ``c`` of one piece but not channel ``c`` of
            another (each unit crossing the cut must lose whole blocks of
            ``num``; channels of the tensor in other units are their own
            blocks).
        """
        what = 'halves' if num == 2 else f'{num} equal pieces'
        total = size * num
        present = set(int(i) for i in idxs)
        if any(not 0 <= i < total or any(
                (i + k * size) % total not in present for k in range(num))
               for i in present):
            other = 'other half' if num == 2 else 'other pieces'
            return (f'its channels are cut into {what} by {cut}, and the '
                    f'matching channel of the {other} belongs to another '
                    f'unit, so the {what.split()[-1]} cannot lose the same '
                    'channels')
        if num == 2 and key is not None:
            self._tie([int(i) for i in idxs], root_idxs)  # one channel
            self.halves.setdefault(
                key[1], (key[0], size, [int(i) for i in idxs], root_idxs))
        else:
            self._tie([int(i) % size for i in idxs], root_idxs)
        source = (f'{cut} ({what} of {total} channels)' if num == 2 else
                  f'{cut} ({num} pieces of {size} channels)')
        if source not in self.sources:  # each slice of one tensor
            self.sources.append(source)
            self.cuts.append(f'{cut} into {what}')
        return None

    def _balance(self, size: int, idxs, root_idxs) -> None:
        """Merge blocks so that each holds as many channels of the first
        half (``idx < size``) of a tensor as of the second."""
        first: Dict[int, set] = {}
        second: Dict[int, set] = {}
        block_of: Dict[int, int] = {}
        for i, r in zip(idxs, root_idxs):
            if r is None or not 0 <= int(r) < len(self.parent):
                continue
            b = self._find(int(r))
            block_of[int(i)] = b
            (first if int(i) < size else second).setdefault(b,
                                                            set()).add(i)
        excess = {
            b: len(first.get(b, ())) - len(second.get(b, ()))
            for b in set(first) | set(second)
        }
        heavy = sorted(b for b, e in excess.items() if e > 0)
        light = {b for b, e in excess.items() if e < 0}
        left = []
        for b in heavy:
            # The positional partner's block first (CSP's c and c + C/2).
            partners = [block_of.get(int(i) + size) for i in
                        sorted(first[b])] + sorted(light)
            match = next((p for p in partners if p in light and
                          excess[p] == -excess[b]), None)
            if match is None:
                left.append(b)
                continue
            light.discard(match)
            self._tie([0, 0], [b, match])
        left += sorted(light)
        self._tie([0] * len(left), left)  # together they are balanced

    def _components(self) -> List[List[int]]:
        """The sets of channels tied so far, sorted."""
        comps: Dict[int, List[int]] = {}
        for i in range(len(self.parent)):
            comps.setdefault(self._find(i), []).append(i)
        return sorted(comps.values())

    def blocks(self) -> Tuple[Optional[List[List[int]]], Optional[str]]:
        """The partition into blocks, or a reason when it is trivial."""
        if not self.sources:
            return None, None
        halves = sorted(self.halves.values(), key=lambda h: h[0])
        tied = list(self.parent)  # before balancing
        for _, size, idxs, roots in halves:
            self._balance(size, idxs, roots)
        self.halves = {}
        blocks = self._components()
        why = ''
        if len(blocks) == 1 and halves:
            # The greedy balancing can merge sets that an exact choice keeps
            # apart; search the unions of the tied sets themselves.
            self.parent = tied
            blocks, why = balanced_unions(self._components(), halves)
        if len(blocks) == len(self.parent):
            return None, None
        if len(blocks) == 1:
            return None, ('all its channels are tied into one block by ' +
                          ', '.join(self.sources) + why +
                          ', so none can be removed')
        return blocks, None


#: Branch-and-bound nodes of one exact search (:func:`balanced_unions`).
NODE_LIMIT = 20000


def _excess(comps: List[List[int]], halves: Sequence[tuple]) -> np.ndarray:
    """``(cuts, sets)``: how many more channels of the cut tensor each set
    of root channels holds in the first half than in the second."""
    comp_of = {r: k for k, comp in enumerate(comps) for r in comp}
    excess = np.zeros((len(halves), len(comps)), dtype=np.int64)
    for row, (_, size, idxs, roots) in enumerate(halves):
        seen = set()
        for i, r in zip(idxs, roots):
            if r is None or int(r) not in comp_of or int(i) in seen:
                continue
            seen.add(int(i))  # one tensor channel: one set, tied
            excess[row, comp_of[int(r)]] += 1 if int(i) < size else -1
    return excess


def balanced_unions(comps: List[List[int]], halves: Sequence[tuple]
                    ) -> Tuple[List[List[int]], str]:
    """Split tied sets of channels into blocks, each balanced at every cut
    into halves, exactly: repeatedly the union with the fewest channels that
    has as many channels in each half of every cut (an integer program over
    the sets not yet taken); what is left is the last block.

    Args:
        comps (list[list[int]]): The tied sets of root channels.
        halves (Sequence[tuple]): ``(order, size, idxs, root_idxs)`` of each
            cut into two halves (see :meth:`ChannelTies.pieces`).

    Returns:
        tuple: The blocks (sorted), and when there is only one, why (to
        follow the ties in the reason).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    # Both slices of one cut may have been recorded (one row each suffices).
    halves = list({(h[1], tuple(h[2]), tuple(h[3])): h
                   for h in halves}.values())
    excess = _excess(comps, halves)
    alone = [k for k in range(len(comps)) if not excess[:, k].any()]
    left = [k for k in range(len(comps)) if excess[:, k].any()]
    weights = np.array([len(c) for c in comps], dtype=float)
    found, limited = [[k] for k in alone], False
    while len(left) > 1:
        n = len(left)
        res = milp(
            weights[left],
            constraints=[
                LinearConstraint(excess[:, left], 0, 0),
                LinearConstraint(np.ones((1, n)), 1, n - 1)
            ],
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
            options=dict(node_limit=NODE_LIMIT, presolve=True))
        if res.x is None:
            limited = res.status != 2  # 2: proven infeasible
            break
        # At the node limit a feasible union found so far is taken too.
        take = {left[j] for j in np.flatnonzero(res.x > 0.5)}
        found.append(sorted(take))
        left = [k for k in left if k not in take]
    if left:
        found.append(left)
    blocks = sorted(sorted(r for k in ks for r in comps[k]) for ks in found)
    if len(blocks) > 1:
        return blocks, ''
    return blocks, (
        f': no union of its {len(comps)} tied sets of channels has as many '
        f'channels in each half of all {len(halves)} cuts into halves ' +
        ('(the exact search stopped at its limit of '
         f'{NODE_LIMIT} nodes)' if limited else '(exact search)'))
