"""Parameter slices of channel units and other helpers shared by criteria.

Weight-space criteria (Taylor, gradient flow, SOSP, WoodFisher) score a
channel by the parameters that disappear with it. Throughout mmifso the
*parameter slice* of channel ``c`` of a unit is, consistently:

* the output rows of every conv/linear **producer** of the unit (``'out'``
  sites): ``weight[c]`` and ``bias[c]`` (dim 1 of the weight for transposed
  convolutions);
* the per-channel parameters of the unit's other layers (``'param'`` sites):
  the affine ``weight[c]``/``bias[c]`` of BatchNorm, PReLU slopes, ...;
* the filters and biases of depthwise convolutions inside the unit (they
  appear as ``'in'`` sites; their output channel ``c`` is computed from
  input ``c`` alone and removed with it).

The input columns of the consumers are *not* part of the slice: their
first-order term is the mask gradient, which the gate-based criteria (IFSO,
Group Fisher) use. Setting a channel's slice to zero removes the channel from
the network whenever the activation maps 0 to 0 (ReLU, tanh, ...), both with
BatchNorm in eval mode and in train mode (the BN output becomes ``beta = 0``).
A unit without any of these (not produced by the analyzer, kept for safety)
falls back to the consumers' input columns.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from .base import ScoringContext, batch_size

_CONV = nn.modules.conv._ConvNd
_CONV_T = nn.modules.conv._ConvTransposeNd


@dataclass
class ParamSlice:
    """Rows ``idxs`` along ``dim`` of ``params[param]`` belong to unit
    channels ``root`` (one entry per row)."""
    param: int
    dim: int
    idxs: torch.Tensor
    root: torch.Tensor


def _channels_of(module: nn.Module) -> Optional[int]:
    return getattr(module, 'num_features', None) or getattr(
        module, 'num_channels', None) or getattr(module, 'num_parameters',
                                                  None)


class ChannelSlices:
    """The parameter slices of every unit of a scoring context.

    Args:
        ctx (ScoringContext): Model and units.

    Attributes:
        params (list[nn.Parameter]): Every trainable parameter of the model
            (``requires_grad``), the ``theta`` of the criteria; slices index
            into this list.
        units (list[list[ParamSlice]]): Slices per unit.
    """

    def __init__(self, ctx: ScoringContext) -> None:
        model = ctx.model
        self.params: List[nn.Parameter] = [
            p for p in model.parameters() if p.requires_grad
        ]
        index = {id(p): i for i, p in enumerate(self.params)}
        self.num_channels = [u.num_channels for u in ctx.units]
        self.units: List[List[ParamSlice]] = []
        for unit in ctx.units:
            slices: List[ParamSlice] = []

            def add(p, dim, idxs, root):
                if p is None or id(p) not in index:
                    return
                slices.append(
                    ParamSlice(index[id(p)], dim,
                               torch.as_tensor(idxs, dtype=torch.long),
                               torch.as_tensor(root, dtype=torch.long)))

            for site in unit.sites:
                module = model.get_submodule(site.module)
                if site.role == 'out':
                    dim = 1 if isinstance(module, _CONV_T) else 0
                    add(module.weight, dim, site.idxs, site.root_idxs)
                    add(getattr(module, 'bias', None), 0, site.idxs,
                        site.root_idxs)
                elif site.role == 'param':
                    n = _channels_of(module)
                    for p in module.parameters(recurse=False):
                        if n and p.dim() >= 1 and p.shape[0] == n:
                            add(p, 0, site.idxs, site.root_idxs)
                elif isinstance(module, _CONV) and module.groups > 1 and \
                        module.groups == module.in_channels == \
                        module.out_channels:
                    # Depthwise: output c is computed from input c alone.
                    add(module.weight, 0, site.idxs, site.root_idxs)
                    add(getattr(module, 'bias', None), 0, site.idxs,
                        site.root_idxs)
            if not slices:
                for site in unit.sites:
                    if site.role != 'in':
                        continue
                    module = model.get_submodule(site.module)
                    dim = 0 if isinstance(module, _CONV_T) else 1
                    add(module.weight, dim, site.idxs, site.root_idxs)
            self.units.append(slices)
        self._layouts: Dict[int, 'UnitLayout'] = {}

    # ------------------------------------------------------------------ #
    def rows(self, tensor: torch.Tensor, s: ParamSlice) -> torch.Tensor:
        """``(len(s.idxs), elements_per_row)`` view of ``tensor``'s rows."""
        t = tensor.transpose(0, s.dim) if s.dim else tensor
        return t.index_select(0, s.idxs.to(t.device)).reshape(
            len(s.idxs), -1)

    def reduce(self, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per unit, the sum over each channel's slice of ``tensors``.

        Args:
            tensors (list[Tensor]): One tensor per entry of :attr:`params`,
                of the parameter's shape (``None`` counts as zeros).

        Returns:
            list[Tensor]: Per unit, float64 of shape ``(C_u, )``.
        """
        out = []
        for slices, n in zip(self.units, self.num_channels):
            acc = torch.zeros(n, dtype=torch.float64)
            for s in slices:
                t = tensors[s.param]
                if t is None:
                    continue
                per = self.rows(t.detach(), s).double().sum(1).cpu()
                acc.index_add_(0, s.root, per)
            out.append(acc)
        return out

    def structure_vector(self) -> List[torch.Tensor]:
        """``theta`` restricted to the union of all unit slices (detached);
        zero for parameters outside every slice."""
        masks = [torch.zeros_like(p, dtype=torch.bool) for p in self.params]
        for slices in self.units:
            for s in slices:
                m = masks[s.param]
                view = m.transpose(0, s.dim) if s.dim else m
                view[s.idxs.to(m.device)] = True
        return [p.detach() * m for p, m in zip(self.params, masks)]

    # ------------------------------------------------------------------ #
    def unit_layout(self, u: int) -> 'UnitLayout':
        """Flat layout of unit ``u``'s slices (for block curvature)."""
        if u not in self._layouts:
            self._layouts[u] = UnitLayout(self, u)
        return self._layouts[u]


class UnitLayout:
    """Flattening of one unit's slices into a vector of length ``P_u``.

    ``flat(tensors)`` concatenates the slice rows of ``tensors``;
    ``channel_index`` is ``(C_u, Q_max)``: the flat positions of each
    channel's parameters, padded with ``P_u`` (an appended zero).
    """

    def __init__(self, slices: ChannelSlices, u: int) -> None:
        self.owner = slices
        self.slices = slices.units[u]
        n = slices.num_channels[u]
        owners, sizes = [], []
        for s in self.slices:
            p = slices.params[s.param]
            width = p.numel() // p.shape[s.dim]
            sizes.append(len(s.idxs) * width)
            owners.append(s.root.repeat_interleave(width))
        self.numel = sum(sizes)
        owner = torch.cat(owners) if owners else torch.zeros(
            0, dtype=torch.long)
        counts = torch.bincount(owner, minlength=n)
        q_max = int(counts.max()) if len(owner) else 0
        order = torch.argsort(owner, stable=True)
        start = torch.cumsum(counts, 0) - counts
        pos = torch.arange(len(owner)) - start[owner[order]]
        index = torch.full((n, max(q_max, 1)), self.numel, dtype=torch.long)
        index[owner[order], pos] = order
        self.channel_index = index
        self.channel_sizes = counts

    def flat(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        """Concatenated slice rows of ``tensors`` (one per parameter)."""
        parts = [
            self.owner.rows(tensors[s.param], s).reshape(-1)
            for s in self.slices
        ]
        return torch.cat(parts) if parts else torch.zeros(0)

    def flat_into(self, tensors: List[torch.Tensor],
                  out: torch.Tensor) -> torch.Tensor:
        """Write :meth:`flat` of ``tensors`` into ``out`` (``(P_u, )``)."""
        offset = 0
        for s in self.slices:
            t = tensors[s.param]
            view = t.transpose(0, s.dim) if s.dim else t
            n = len(s.idxs) * (t.numel() // t.shape[s.dim])
            dst = out[offset:offset + n].view((len(s.idxs), ) +
                                              tuple(view.shape[1:]))
            idxs = s.idxs.to(t.device)
            if dst.device == t.device and dst.dtype == t.dtype:
                torch.index_select(view, 0, idxs, out=dst)
            else:
                dst.copy_(view.index_select(0, idxs))
            offset += n
        return out

    def per_channel(self, flat: torch.Tensor) -> torch.Tensor:
        """``(..., P_u) -> (..., C_u, Q_max)``, zero padded."""
        ext = torch.cat([flat, flat.new_zeros(flat.shape[:-1] + (1, ))], -1)
        return ext[..., self.channel_index.to(flat.device)]

    def add_(self, delta: torch.Tensor) -> None:
        """Add a flat vector to the parameters, in place."""
        offset = 0
        for s in self.slices:
            p = self.owner.params[s.param]
            view = p.data.transpose(0, s.dim) if s.dim else p.data
            n = len(s.idxs) * (p.numel() // p.shape[s.dim])
            part = delta[offset:offset + n].to(
                device=p.device, dtype=p.dtype).view(
                (len(s.idxs), ) + tuple(view.shape[1:]))
            view.index_add_(0, s.idxs.to(p.device), part)
            offset += n


# ---------------------------------------------------------------------- #
def split_batch(data: Dict, chunks: int) -> List[Dict]:
    """Split a pre-processed batch into ``chunks`` nearly equal parts.

    Tensors and lists whose first dimension is the batch size are sliced;
    other entries are shared.
    """
    n = batch_size(data)
    chunks = max(1, min(chunks, n))
    bounds = [round(i * n / chunks) for i in range(chunks + 1)]

    def part(v, a, b):
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
            return v[a:b]
        if isinstance(v, (list, tuple)) and len(v) == n:
            return type(v)(v[a:b])
        return v

    return [{k: part(v, a, b)
             for k, v in data.items()}
            for a, b in zip(bounds[:-1], bounds[1:])]


def channel_slices(ctx: ScoringContext) -> ChannelSlices:
    """The :class:`ChannelSlices` of ``ctx`` (built once per context)."""
    cached = getattr(ctx, '_mmifso_slices', None)
    if cached is None:
        cached = ChannelSlices(ctx)
        ctx._mmifso_slices = cached
    return cached
