"""Discovery of coupled channel groups with Torch-Pruning's DepGraph.

A *unit* is a set of channels that must be removed together: the output
channels of one or more producers (conv/linear outputs, the norm layers after
them) and the matching input channels of every consumer that reads them,
across residual adds, concatenations, depthwise convolutions and modules that
are reused on several inputs.
"""
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp
from mmengine.logging import print_log
from torch_pruning import ops as tp_ops

#: Module types whose *input* channels can be gated exactly in a forward
#: pre-hook (the gate multiplies the input along the channel dimension).
GATEABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
#: Normalisation layers whose statistics mix channels: removing a channel
#: changes the output of the others, which an input gate cannot reproduce.
CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


@dataclass
class ChannelSite:
    """Where a unit's channels live in one module.

    Args:
        module (str): Name of the module in the analysed model.
        role (str): ``'in'`` for input channels of a conv/linear consumer,
            ``'out'`` for output channels of a conv/linear producer,
            ``'param'`` for per-channel parameters of other layers (norms).
        idxs (list[int]): Channel indices along the module's channel dim.
        root_idxs (list[int]): For each entry of ``idxs``, the channel of the
            unit (``0 .. num_channels - 1``) it belongs to.
    """
    module: str
    role: str
    idxs: List[int]
    root_idxs: List[int]


@dataclass
class UnitSpec:
    """A coupled channel group, the result of the analysis.

    Args:
        name (str): Name of the root producer whose output channels index the
            unit.
        num_channels (int): Number of coupled channels.
        sites (list[ChannelSite]): Every place the channels appear.
    """
    name: str
    num_channels: int
    sites: List[ChannelSite] = field(default_factory=list)

    def modules(self, role: Optional[str] = None) -> List[str]:
        return [s.module for s in self.sites if role in (None, s.role)]


@dataclass
class SkippedUnit:
    """A coupled group that is not prunable, and why."""
    name: str
    num_channels: int
    reason: str


@dataclass
class AnalysisResult:
    """Units found in a model plus everything that was left out."""
    units: List[UnitSpec]
    skipped: List[SkippedUnit]
    #: ``{module_name: number_of_calls}`` for conv/linear modules seen.
    call_counts: Dict[str, int]
    #: Leaf modules with parameters that DepGraph does not understand.
    opaque_modules: List[str]


class FrozenUnitError(RuntimeError):
    """A unit contains parameters that do not require grad."""


class ChannelAnalyzer:
    """Find the prunable channel units of a model from one demo forward.

    Args:
        forward_fn (Callable): ``forward_fn(model) -> outputs``; runs the demo
            forward. Its outputs are the model outputs whose channels are never
            pruned.
        frozen (str): What to do with a unit containing frozen parameters
            (``requires_grad=False``, e.g. ``frozen_stages`` of a backbone):
            ``'error'`` raises, ``'skip'`` leaves the unit out with a warning.
        min_channels (int): Units with fewer channels are not prunable.
    """

    def __init__(self,
                 forward_fn: Callable[[nn.Module], object],
                 frozen: str = 'error',
                 min_channels: int = 1) -> None:
        if frozen not in ('error', 'skip'):
            raise ValueError(
                f"frozen must be 'error' or 'skip', got {frozen!r}")
        self.forward_fn = forward_fn
        self.frozen = frozen
        self.min_channels = min_channels

    def build_graph(self, model: nn.Module) -> tp.DependencyGraph:
        """Trace ``model`` with DepGraph; training flags are restored."""
        modes = {m: m.training for m in model.modules()}
        try:
            with torch.enable_grad():
                graph = tp.DependencyGraph().build_dependency(
                    model,
                    example_inputs=None,
                    forward_fn=lambda m, _: self.forward_fn(m),
                    verbose=False)
        finally:
            for m, mode in modes.items():
                m.training = mode
        return graph

    def analyse(self, model: nn.Module) -> AnalysisResult:
        """Trace ``model`` and return its units.

        Args:
            model (nn.Module): The model, e.g. an mmpretrain classifier.

        Returns:
            AnalysisResult: Prunable units and the skipped groups with reasons.
        """
        call_counts: Dict[str, int] = {}
        names = {m: n for n, m in model.named_modules()}

        def count(module, inputs, output):
            call_counts[names[module]] = call_counts.get(names[module], 0) + 1

        handles = [
            m.register_forward_hook(count) for m in model.modules()
            if isinstance(m, GATEABLE_TYPES)
        ]
        try:
            graph = self.build_graph(model)
        finally:
            for h in handles:
                h.remove()

        units, skipped = [], []
        for group in graph.get_all_groups(
                root_module_types=(tp_ops.TORCH_CONV, tp_ops.TORCH_LINEAR)):
            spec, reason = self._to_unit(graph, group, names, model)
            if reason is None:
                units.append(spec)
            else:
                skipped.append(
                    SkippedUnit(spec.name, spec.num_channels, reason))
        opaque = self._opaque_modules(model, graph)
        for s in skipped:
            print_log(
                f'[mmifso] unit {s.name} ({s.num_channels} channels) is not '
                f'prunable: {s.reason}',
                logger='current',
                level=logging.WARNING)
        if opaque:
            print_log(
                '[mmifso] these modules have parameters but are not '
                'understood by the channel analyzer, so channels are traced '
                'through them as if they were element-wise: ' +
                ', '.join(opaque) + '. Check the exported model with '
                'tools/analysis/coverage.py.',
                logger='current',
                level=logging.WARNING)
        return AnalysisResult(units, skipped, call_counts, opaque)

    # ------------------------------------------------------------------ #
    def _to_unit(self, graph, group, names: Dict[nn.Module, str],
                 model: nn.Module) -> Tuple[UnitSpec, Optional[str]]:
        root = group[0].dep.target.module
        root_name = names.get(root, str(root))
        num_channels = len(group[0].idxs)
        spec = UnitSpec(root_name, num_channels)
        reason = None
        for item in group:
            dep, idxs = item.dep, list(item.idxs)
            root_idxs = list(item.root_idxs)
            target = dep.target
            module = target.module
            if target.type == tp_ops.OPTYPE.OUTPUT:
                reason = reason or ('its channels are outputs of the model '
                                    '(predictions are never pruned)')
                continue
            if not isinstance(module, nn.Module) or module not in names:
                if isinstance(module, nn.Parameter):
                    reason = reason or (
                        'it is coupled to an unwrapped nn.Parameter, which '
                        'the masked forward cannot gate')
                # Pseudo-ops of DepGraph (add, concat, reshape, ...).
                continue
            name = names[module]
            if isinstance(module, CROSS_CHANNEL_NORMS):
                reason = reason or (
                    f'{name} ({type(module).__name__}) normalises across '
                    'channels, so masking cannot reproduce channel removal')
            if isinstance(module, nn.modules.conv._ConvNd) and \
                    1 < module.groups != module.in_channels:
                reason = reason or (
                    f'{name} is a grouped convolution (groups='
                    f'{module.groups}); only depthwise convolutions are '
                    'supported')
            frozen = [
                n for n, p in module.named_parameters(recurse=False)
                if not p.requires_grad
            ]
            if frozen:
                msg = (f'{name} has frozen parameters ({", ".join(frozen)}); '
                       'unfreeze them (e.g. backbone.frozen_stages=-1) or set '
                       "the mutator's frozen='skip' to leave such units out")
                if self.frozen == 'error':
                    raise FrozenUnitError(f'unit {root_name}: {msg}')
                reason = reason or msg
            if graph.is_in_channel_pruning_fn(dep.handler) and \
                    not isinstance(module, GATEABLE_TYPES) and \
                    not isinstance(module, (nn.modules.batchnorm._BatchNorm,
                                            nn.PReLU, CROSS_CHANNEL_NORMS)):
                reason = reason or (
                    f'{name} ({type(module).__name__}) consumes the channels '
                    'but cannot be gated')
            if isinstance(module, GATEABLE_TYPES):
                is_out = graph.is_out_channel_pruning_fn(dep.handler)
                if isinstance(module, nn.modules.conv._ConvNd) and \
                        module.groups > 1 and module.groups == \
                        module.in_channels:
                    # Depthwise: in and out are the same channels; the input
                    # gate removes both.
                    role = 'in'
                else:
                    role = 'out' if is_out else 'in'
            else:
                role = 'param'
            spec.sites.append(ChannelSite(name, role, idxs, root_idxs))
        if reason is None and num_channels <= self.min_channels:
            reason = (f'it has {num_channels} channel(s), not more than '
                      f'min_channels={self.min_channels}')
        if reason is None and not any(s.role == 'in' for s in spec.sites):
            reason = ('no conv/linear layer consumes its channels (they reach '
                      'the model output, and predictions are never pruned)')
        return spec, reason

    @staticmethod
    def _opaque_modules(model: nn.Module,
                        graph: tp.DependencyGraph) -> List[str]:
        known = tuple(
            tp_ops.type2class(t) for t in graph.REGISTERED_PRUNERS.keys()
            if tp_ops.type2class(t) is not None)
        opaque = []
        for name, m in model.named_modules():
            own = list(m.parameters(recurse=False))
            if own and not isinstance(m, known) and any(
                    p.dim() > 1 for p in own):
                opaque.append(f'{name} ({type(m).__name__})')
        return opaque


def compose_gate(num_channels: int, parts: Sequence[Tuple[torch.Tensor,
                                                          torch.Tensor,
                                                          torch.Tensor]],
                 like: torch.Tensor) -> torch.Tensor:
    """Build a per-channel gate from several units' masks.

    Args:
        num_channels (int): Channels of the gated tensor.
        parts: ``(mask, idxs, root_idxs)`` triples: ``gate[..., idxs] =
            mask[..., root_idxs]``. Masks have shape ``(C_u, )`` or, for
            per-sample gates, ``(N, C_u)``.
        like (Tensor): Gives dtype and device of the result.

    Returns:
        Tensor: The gate, shape ``(num_channels, )`` or ``(N, num_channels)``;
        differentiable w.r.t. every mask.
    """
    lead = ()
    for mask, _, _ in parts:
        if mask.dim() == 2:
            lead = (mask.shape[0], )
    gate = torch.ones(lead + (num_channels, ), dtype=like.dtype,
                      device=like.device)
    for mask, idxs, root_idxs in parts:
        src = mask[..., root_idxs].to(like.dtype).expand(lead + (-1, ))
        gate = gate.scatter(-1, idxs.expand(lead + (-1, )), src)
    return gate
