"""Discovery of coupled channel groups with Torch-Pruning's DepGraph.

A *unit* is a set of channels that must be removed together: the output
channels of one or more producers (conv/linear outputs, the norm layers after
them) and the matching input channels of every consumer that reads them,
across residual adds, concatenations, depthwise convolutions and modules that
are reused on several inputs.

Some channels of a unit are *tied* (GroupNorm groups, grouped convolutions):
they can only be removed together; see :mod:`.channel_ties`. The found units
are described by the data classes of :mod:`.channel_units`; the Torch-Pruning
adaptations the trace relies on are in :mod:`.tp_patches`.
"""
import copy
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp
from mmengine.logging import print_log
from torch_pruning import ops as tp_ops

from mmifso.utils import check_choice
from ..utils import eval_mode, preserved_modes, removing_hooks
from .channel_norms import check_layer_norm, per_channel_parameter_reason
from .channel_ops import ChannelCutError, fix_split_sizes, record_channel_ops
from .channel_ties import ChannelTies
from .channel_units import AnalysisResult, ChannelSite, SkippedUnit, UnitSpec
from .groups import (GroupDivergedError, get_all_groups,
                     get_pruning_group)
from .layer_types import (CROSS_CHANNEL_NORMS, GATEABLE_TYPES,
                          PER_CHANNEL_TYPES, is_depthwise, is_grouped)
from .tp_patches import (channel_shuffle, cuts_channels,
                         new_dependency_graph, record_split_readers,
                         split_is_ambiguous, split_sizes)


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
        check_choice('frozen', frozen, ('error', 'skip'))
        self.forward_fn = forward_fn
        self.frozen = frozen
        self.min_channels = min_channels
        # {unit: its cuts into equal pieces}, filled by analyse for
        # _check_cuts.
        self._cut_units: Dict[str, str] = {}

    def _forward(self, model: nn.Module, dead: Sequence[nn.Module] = ()):
        """The demo forward; the outputs of ``dead`` layers are added to the
        model outputs."""
        captured: List[torch.Tensor] = []
        handles = [
            m.register_forward_hook(
                lambda mod, args, out: captured.extend(_tensors(out)))
            for m in dead
        ]
        with removing_hooks(handles):
            outputs = self.forward_fn(model)
        self._model_outputs = outputs  # without the dead layers' outputs
        self._outputs = (outputs, captured) if dead else outputs
        return self._outputs

    def _trace(self, model: nn.Module,
               dead: Sequence[nn.Module] = ()) -> tp.DependencyGraph:
        """DepGraph of one demo forward; which piece of a channel split each
        layer reads is recorded from every call (see
        :func:`.tp_patches.record_split_readers`), the input sizes of every
        concatenation and the splits' pieces too (``mmifso_concat_sizes``,
        ``mmifso_cut_pieces``; see :mod:`.channel_ops`)."""
        fn2module: Dict[object, nn.Module] = {}
        graph = new_dependency_graph()

        def forward(m, _):
            with record_channel_ops(m) as recorder:
                outputs = self._forward(m, dead)
            graph.mmifso_concat_sizes = recorder.concat_sizes
            graph.mmifso_cut_pieces = recorder.pieces
            return outputs

        def record(module, args, output):
            for t in _tensors(output):  # inner modules' hooks run first
                if t.grad_fn is not None:
                    fn2module.setdefault(t.grad_fn, module)

        handles = [m.register_forward_hook(record) for m in model.modules()]
        try:
            with preserved_modes(model), torch.enable_grad():
                graph.build_dependency(
                    model,
                    example_inputs=None,
                    forward_fn=forward,
                    verbose=False)
                record_split_readers(graph, _tensors(self._outputs),
                                     fn2module)
        finally:
            for h in handles:
                h.remove()
        return graph

    def build_graph(self, model: nn.Module) -> tp.DependencyGraph:
        """Trace ``model`` with DepGraph; training flags are restored.

        Conv/linear layers that run in the demo forward but whose outputs do
        not reach the model outputs (e.g. mmdet's MobileNetV2 ``conv2`` when
        the backbone returns earlier stages) are invisible to DepGraph, yet
        they consume channels: a second trace adds their outputs to the model
        outputs, so their input channels are pruned with their producers
        (and their own outputs are left alone).
        """
        called: List[nn.Module] = []
        handles = [
            m.register_forward_hook(lambda mod, args, out: called.append(mod))
            for m in model.modules() if isinstance(m, GATEABLE_TYPES)
        ]
        with removing_hooks(handles):
            graph = self._trace(model)
        dead = list({id(m): m for m in called
                     if m not in graph.module2node}.values())
        if dead:
            graph = self._trace(model, dead)
        return graph

    def analyse(self, model: nn.Module) -> AnalysisResult:
        """Trace ``model`` and return its units.

        Args:
            model (nn.Module): The model, e.g. an mmpretrain classifier.

        Returns:
            AnalysisResult: Prunable units and the skipped groups with reasons.
        """
        names = {m: n for n, m in model.named_modules()}
        call_counts: Dict[str, int] = {}
        # grad_fns of every conv/linear output: a layer whose output *is* a
        # model output has no OUTPUT node of its own in DepGraph.
        out_fns: Dict[str, set] = {}
        count = _call_counter(names, call_counts, out_fns)
        record_opaque = self._opaque_recorder(names)
        check_norm = self._norm_checker(names)
        opaque_names = {
            o.split(' (')[0]
            for o in self._opaque_modules(model, tp.DependencyGraph())
        }
        # Registered and removed here, around the one trace that reads them:
        # a hook left behind would run in every later forward of the model.
        handles = [
            m.register_forward_hook(count) for m in model.modules()
            if isinstance(m, GATEABLE_TYPES)
        ] + [
            m.register_forward_hook(record_opaque)
            for n, m in model.named_modules() if n in opaque_names
        ] + [
            m.register_forward_hook(check_norm, with_kwargs=True)
            for m in model.modules() if isinstance(m, CROSS_CHANNEL_NORMS)
        ]
        with removing_hooks(handles):
            graph = self.build_graph(model)
        self._record_output_layers(out_fns)
        self._cut_units = {}
        result = self._collect_units(graph, names, model)
        self._check_cuts(model, result)
        result.call_counts = call_counts
        result.opaque_modules = self._opaque_modules(model, graph)
        self._opaque_fns = {}
        _warn_not_prunable(result.skipped, result.opaque_modules)
        return result

    def _opaque_recorder(self, names: Dict[nn.Module, str]) -> Callable:
        """A forward hook for the modules DepGraph does not understand; it
        fills ``self._opaque_fns`` (emptied here) with ``{grad_fn of an
        output: 'name (Type)'}``, read by :meth:`_pseudo_op_reason`."""
        # Channels crossing such a module are traced as if its op were
        # element-wise, which it is not: the units must be told.
        self._opaque_fns: Dict[object, str] = {}

        def record_opaque(module, inputs, output):
            for t in _tensors(output):
                if t.grad_fn is not None:
                    self._opaque_fns[t.grad_fn] = (
                        f'{names[module]} ({type(module).__name__})')

        return record_opaque

    def _norm_checker(self, names: Dict[nn.Module, str]) -> Callable:
        """A forward hook (``with_kwargs=True``) for the cross-channel norm
        modules; it fills ``self._norm_reasons`` and
        ``self._module_norm_fns`` (emptied here), read by
        :meth:`_layer_reasons` and :meth:`_pseudo_op_reason`."""
        # {LayerNorm: why the gated recomputation cannot replace one of its
        # calls, or None}; see .channel_norms.
        self._norm_reasons: Dict[str, Optional[str]] = {}
        # The layer_norm ops inside these modules (mmpretrain's LayerNorm2d
        # permutes around it): every other one is a functional norm.
        self._module_norm_fns: set = set()

        def check_norm(module, args, kwargs, output):
            reason = check_layer_norm(module, args, kwargs, output)
            # The first call that cannot be recomputed decides.
            if self._norm_reasons.get(names[module]) is None:
                self._norm_reasons[names[module]] = reason
            self._module_norm_fns.update(_norm_fns(output))

        return check_norm

    def _record_output_layers(self, out_fns: Dict[str, set]) -> None:
        """Keep which layers' outputs are model outputs, with and without
        the dead layers' outputs, and the output shapes (for
        :meth:`_probe`); then drop the traced outputs.

        Args:
            out_fns (dict): ``{layer name: grad_fns of its outputs}`` of the
                conv/linear layers, from the trace.
        """
        model_out_fns = _grad_fns(getattr(self, '_outputs', None))
        self._output_layers = {
            n for n, fns in out_fns.items() if fns & model_out_fns
        }
        # The same without the outputs of dead layers (which are not
        # predictions): for AnalysisResult.output_layers.
        self._prediction_fns = _grad_fns(getattr(self, '_model_outputs',
                                                 None))
        self._prediction_layers = {
            n for n, fns in out_fns.items() if fns & self._prediction_fns
        }
        self._output_shapes = _shapes(self._model_outputs)
        self._outputs = self._model_outputs = None

    def _collect_units(self, graph, names: Dict[nn.Module, str],
                       model: nn.Module) -> AnalysisResult:
        """Units, skipped groups and output layers of every group of
        ``graph`` (``call_counts`` and ``opaque_modules`` left empty)."""
        units, skipped, outputs = [], [], []
        for root, group in get_all_groups(
                graph, (tp_ops.TORCH_CONV, tp_ops.TORCH_LINEAR)):
            if isinstance(group, GroupDivergedError):
                pruner = graph.get_pruner_of_module(root)
                skipped.append(
                    SkippedUnit(names.get(root, str(root)),
                                pruner.get_out_channels(root), str(group)))
                continue
            outputs += self._predictions_of(graph, group, names)
            spec, reason = self._to_unit(graph, group, names, model)
            if reason is None:
                units.append(spec)
            else:
                skipped.append(
                    SkippedUnit(spec.name, spec.num_channels, reason))
        return AnalysisResult(units, skipped, {}, [],
                              list(dict.fromkeys(outputs)))

    def _predictions_of(self, graph, group,
                        names: Dict[nn.Module, str]) -> List[str]:
        """The conv/linear layers whose output channels are in ``group``
        when the group's channels reach the model outputs (predictions, e.g.
        a classifier's fc, a detector's per-level predictors, a conv whose
        norm's output is returned); otherwise none."""
        producers = [
            names[item.dep.target.module] for item in group
            if isinstance(item.dep.target.module, GATEABLE_TYPES)
            and item.dep.target.module in names
            and graph.is_out_channel_pruning_fn(item.dep.handler)
        ]
        # A node's grad_fn is its output's (also for a norm or an add whose
        # output is returned; consumers are not asked: their outputs are
        # other channels); a layer called several times is found through
        # the grad_fns of all its calls.
        reaches = any(
            graph.is_out_channel_pruning_fn(item.dep.handler) and getattr(
                item.dep.target, 'grad_fn', None) in self._prediction_fns
            for item in group) or any(n in self._prediction_layers
                                      for n in producers)
        return producers if reaches else []

    # ------------------------------------------------------------------ #
    def _to_unit(self, graph, group, names: Dict[nn.Module, str],
                 model: nn.Module) -> Tuple[UnitSpec, Optional[str]]:
        """The unit of one DepGraph group, and why it is not prunable.

        Returns:
            tuple: The :class:`UnitSpec` (its sites and tied blocks) and the
            first reason found against pruning it (``None``: prunable).
        """
        root = group[0].dep.target.module
        root_name = names.get(root, str(root))
        num_channels = len(group[0].idxs)
        spec = UnitSpec(root_name, num_channels)
        reasons = []
        ties = ChannelTies(num_channels)
        for item in group:
            target = item.dep.target
            if target.type == tp_ops.OPTYPE.OUTPUT:
                reasons.append('its channels are outputs of the model '
                               '(predictions are never pruned)')
            elif not isinstance(target.module, nn.Module) or \
                    target.module not in names:
                # Pseudo-ops of DepGraph (add, concat, reshape, ...).
                reasons.append(self._pseudo_op_reason(target, group, ties))
                if isinstance(target.module, nn.Parameter):
                    name = next((n for n, p in model.named_parameters()
                                 if p is target.module), '<unregistered>')
                    spec.bare_params.append(ChannelSite(
                        name, 'param', list(item.idxs),
                        list(item.root_idxs)))
            else:
                site, reason = self._site(graph, item, names[target.module],
                                          root_name, num_channels, ties)
                spec.sites.append(site)
                reasons.append(reason)
        reason = next((r for r in reasons if r is not None), None)
        if reason is None:
            spec.blocks, reason = ties.blocks()
        if ties.cuts:
            self._cut_units[spec.name] = ' and '.join(ties.cuts)
        return spec, reason or self._size_reason(spec)

    def _check_cuts(self, model: nn.Module, result: AnalysisResult) -> None:
        """Prune a copy of ``model``: one tied block of every unit cut into
        equal pieces. The graph shows equal pieces, not whether the model
        computes the cut from the tensor's size, from a module attribute
        (which the export updates, :func:`.channel_ops.fix_split_sizes`) or
        from a fixed number; a fixed cut point hands the layers behind it
        the wrong number of channels, so the copy's demo forward fails or
        changes the output shapes. Units that fail (tried one by one) move
        to ``skipped``."""
        units = [u for u in result.units if u.name in self._cut_units]
        if not units or self._probe(model, units) is None:
            return
        for unit in units:
            error = self._probe(model, [unit])
            if error is not None:
                result.units.remove(unit)
                result.skipped.append(SkippedUnit(
                    unit.name, unit.num_channels,
                    f'its channels are cut by {self._cut_units[unit.name]}, '
                    'but a copy of the model with one block of them '
                    'removed ' + error + ': the model cuts at a fixed '
                    'number of channels, which removing channels would '
                    'move'))

    def _probe(self, model: nn.Module,
               units: List[UnitSpec]) -> Optional[str]:
        """Remove the first block of each unit from a copy of ``model`` and
        run the demo forward; what went wrong, or ``None``."""
        pruned = copy.deepcopy(model)
        modules = dict(pruned.named_modules())
        try:
            graph = self.build_graph(pruned)
            for unit in units:
                module = modules[unit.name]
                pruner = graph.get_pruner_of_module(module)
                # No blocks: ties that the coupling already made (a
                # channel shuffle's pieces), so one channel is a block.
                get_pruning_group(graph, module, pruner.prune_out_channels,
                                  unit.blocks[0] if unit.blocks else
                                  [0]).prune()
            # As the export does: splits get the new piece size.
            fix_split_sizes(pruned, self.forward_fn,
                            getattr(graph, 'mmifso_cut_pieces', None))
            with eval_mode(pruned), torch.no_grad():
                shapes = _shapes(self.forward_fn(pruned))
        except ChannelCutError as e:  # says which split and why, in full
            return f'failed ({type(e).__name__}: {e})'
        except Exception as e:  # any failure is the answer
            return f'failed ({type(e).__name__}: {str(e)[:120]})'
        finally:
            self._outputs = self._model_outputs = None
        if shapes != self._output_shapes:
            return (f'gave outputs of shapes {shapes}, not '
                    f'{self._output_shapes}')
        return None

    def _pseudo_op_reason(self, target, group,
                          ties: ChannelTies) -> Optional[str]:
        """Why channels crossing a DepGraph pseudo-op (add, concat, split,
        reshape, a bare parameter, an opaque layer) cannot be pruned, or
        ``None``. A cut into equal pieces ties the channels of the pieces
        instead (see :mod:`.channel_ties`)."""
        split = _channel_split(target)
        if split and split_is_ambiguous(target):
            return (f'its channels are cut by {split}, and one layer or op '
                    'reads several of the pieces, so the analysis cannot '
                    'tell which channels it reads')
        if split:
            pieces = _equal_pieces(target)
            if pieces is not None:
                return _tie_pieces(target, split, *pieces, group, ties)
            return (f'its channels are cut by {split} into unequal pieces; '
                    'the model computes the cut points from fixed sizes, '
                    'which removing channels would move (the exported model '
                    'would mix channels)')
        shuffle = channel_shuffle(target)
        if shuffle:
            return _tie_shuffle(target, shuffle[0], shuffle[1], group, ties)
        if isinstance(target.module, nn.Parameter):
            return per_channel_parameter_reason(target)
        fn = getattr(target, 'grad_fn', None)
        if fn is not None and fn.name().startswith(_FUNCTIONAL_NORMS) and \
                fn not in getattr(self, '_module_norm_fns', ()):
            return (f'its channels cross a functional norm ({fn.name()}, '
                    'not a LayerNorm/GroupNorm module), whose statistics '
                    'may mix channels, which masking cannot reproduce')
        opaque_fns = getattr(self, '_opaque_fns', {})
        if getattr(target, 'grad_fn', None) in opaque_fns:
            return (f'its channels cross {opaque_fns[target.grad_fn]}, a '
                    'layer the channel analyzer does not understand')
        return None

    def _site(self, graph, item, name: str, root_name: str,
              num_channels: int,
              ties: ChannelTies) -> Tuple[ChannelSite, Optional[str]]:
        """The channel site of one layer of a group, and the first reason
        found against pruning the group at this layer (``None``: none).

        Raises:
            FrozenUnitError: The layer has frozen parameters and the
                analyzer's ``frozen`` is ``'error'``.
        """
        dep, idxs, root_idxs = item.dep, list(item.idxs), list(item.root_idxs)
        module = dep.target.module
        is_out = graph.is_out_channel_pruning_fn(dep.handler)
        # In the order they are reported; the ties record the layer's tied
        # channels as a side effect, so they are asked in this order too.
        reasons = self._layer_reasons(name, module, is_out)
        if isinstance(module, nn.GroupNorm):
            reasons.append(ties.group_norm(name, module, idxs, root_idxs))
        if is_grouped(module):
            reasons.append(
                ties.grouped_conv(name, module, is_out, idxs, root_idxs))
        reasons.append(self._frozen_reason(name, module, root_name))
        if graph.is_in_channel_pruning_fn(dep.handler):
            reasons.append(_ungateable_reason(name, module))
        role = _site_role(module, is_out)
        reasons += _index_reasons(name, module, role, idxs, root_idxs,
                                  num_channels)
        ties.shared_indices(name, idxs, root_idxs)
        reason = next((r for r in reasons if r is not None), None)
        return ChannelSite(name, role, idxs, root_idxs), reason

    def _layer_reasons(self, name: str, module: nn.Module,
                       is_out: bool) -> List[Optional[str]]:
        """Why the layer ``name`` itself keeps its group from being pruned:
        its output channels are model outputs, or it normalises across
        channels where the gated recomputation cannot replace it."""
        reasons: List[Optional[str]] = []
        if name in getattr(self, '_output_layers', ()) and is_out:
            reasons.append(f'its channels are outputs of the model ({name} '
                           'returns them; predictions are never pruned)')
        if isinstance(module, CROSS_CHANNEL_NORMS):
            # The mutator recomputes it with statistics over the alive
            # channels (.channel_norms) where its calls allow that.
            why = getattr(self, '_norm_reasons', {}).get(
                name, 'it did not run in the demo forward')
            if why is not None:
                reasons.append(
                    f'{name} ({type(module).__name__}) normalises across '
                    f'channels and cannot be recomputed over the alive '
                    f'channels only: {why}')
        return reasons

    def _frozen_reason(self, name: str, module: nn.Module,
                       root_name: str) -> Optional[str]:
        """Why a layer with frozen parameters is left out (``frozen='skip'``),
        or ``None`` when it has none.

        Raises:
            FrozenUnitError: It has some and ``frozen`` is ``'error'``.
        """
        frozen = [
            n for n, p in module.named_parameters(recurse=False)
            if not p.requires_grad
        ]
        if not frozen:
            return None
        msg = (f'{name} has frozen parameters ({", ".join(frozen)}); '
               'unfreeze them (e.g. backbone.frozen_stages=-1) or set '
               "the mutator's frozen='skip' to leave such units out")
        if self.frozen == 'error':
            raise FrozenUnitError(f'unit {root_name}: {msg}')
        return msg

    def _size_reason(self, spec: UnitSpec) -> Optional[str]:
        """Why a unit whose layers all allow pruning is still left out: too
        few channels, tied blocks too large, or no consumer."""
        n = spec.num_channels
        if n <= self.min_channels:
            return (f'it has {n} channel(s), not more than '
                    f'min_channels={self.min_channels}')
        block = max(len(b) for b in spec.blocks) if spec.blocks else 0
        if spec.blocks is not None and n - block < self.min_channels:
            return (f'its channels are tied in blocks of {block}; removing '
                    f'one would leave fewer than min_channels='
                    f'{self.min_channels}')
        if not any(s.role == 'in' for s in spec.sites):
            return ('no conv/linear layer consumes its channels (they reach '
                    'the model output, and predictions are never pruned)')
        return None

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


def _call_counter(names: Dict[nn.Module, str], call_counts: Dict[str, int],
                  out_fns: Dict[str, set]) -> Callable:
    """A forward hook for conv/linear layers that counts each layer's calls
    in ``call_counts`` and collects the grad_fns of its outputs in
    ``out_fns`` (both keyed by the layer's name in ``names``)."""

    def count(module, inputs, output):
        call_counts[names[module]] = call_counts.get(names[module], 0) + 1
        out_fns.setdefault(names[module], set()).update(
            t.grad_fn for t in _tensors(output) if t.grad_fn is not None)

    return count


def _ungateable_reason(name: str, module: nn.Module) -> Optional[str]:
    """Why a layer that consumes a group's channels cannot take them
    masked, or ``None`` when it can."""
    if isinstance(module, GATEABLE_TYPES + PER_CHANNEL_TYPES +
                  CROSS_CHANNEL_NORMS + (nn.GroupNorm, )):
        return None
    return (f'{name} ({type(module).__name__}) consumes the channels but '
            'cannot be gated')


def _site_role(module: nn.Module, is_out: bool) -> str:
    """The :class:`ChannelSite` role of a layer of a group: ``'out'``,
    ``'in'`` or ``'param'`` (a per-channel layer such as a norm)."""
    if not isinstance(module, GATEABLE_TYPES):
        return 'param'
    if is_depthwise(module) or not is_out:
        # Depthwise: in and out are the same channels; the input gate
        # removes both.
        return 'in'
    return 'out'


def _index_reasons(name: str, module: nn.Module, role: str, idxs: List[int],
                   root_idxs: list, num_channels: int) -> List[str]:
    """Why DepGraph's channel indices at a layer cannot be trusted: they
    fall outside the layer's channels or outside the unit's."""
    reasons = []
    size = _channels_of(module, role)
    if size is not None and idxs and (max(idxs) >= size or min(idxs) < 0):
        # DepGraph's index mapping went wrong (seen after chained
        # split/add/concat, e.g. Res2Net): the unit cannot be trusted.
        reasons.append(
            f'DepGraph mapped its channels to indices up to {max(idxs)} '
            f'of {name} ({type(module).__name__}), which has {size} '
            f'{"input" if role == "in" else "output"} channels (index '
            'mapping through split/concat failed)')
    if any(r is None or not 0 <= r < num_channels for r in root_idxs):
        reasons.append(f'DepGraph mapped channels of {name} to channels '
                       f'outside the {num_channels} of the unit')
    return reasons


def _channels_of(module: nn.Module, role: str) -> Optional[int]:
    """Channels of ``module`` on the side a site of ``role`` indexes."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if role == 'out' else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if role == 'out' else module.in_features
    for attr in ('num_features', 'num_channels', 'num_parameters'):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return None


def _channel_split(node) -> Optional[str]:
    """``'torch.split'`` etc. when a DepGraph node cuts the channel dim."""
    kinds = {
        tp_ops.OPTYPE.SPLIT: 'torch.split/chunk',
        tp_ops.OPTYPE.SLICE: 'channel slicing',
        tp_ops.OPTYPE.UNBIND: 'torch.unbind'
    }
    if getattr(node, 'type', None) not in kinds:
        return None
    if not cuts_channels(getattr(node, 'grad_fn', None)):
        return None  # spatial slicing (e.g. YOLOX's Focus)
    return kinds[node.type]


def _equal_pieces(node) -> Optional[Tuple[int, int]]:
    """``(size, n)`` when a channel split cuts its input into ``n >= 2``
    equal pieces of ``size`` channels (``x.chunk(n, 1)``, ``x.split(C // n,
    1)``, ``x.split([s] * n, 1)``), or a channel slice takes one half of its
    input (``x[:, :C // 2]``, ``x[:, C // 2:]``: ``n = 2``); else ``None``.
    """
    fn = getattr(node, 'grad_fn', None)
    if node.type == tp_ops.OPTYPE.SPLIT:
        sizes = split_sizes(fn)
        if sizes and len(sizes) >= 2 and len(set(sizes)) == 1:
            return sizes[0], len(sizes)
        return None
    sizes = getattr(fn, '_saved_self_sym_sizes', None)
    dim = getattr(fn, '_saved_dim', None)
    if node.type != tp_ops.OPTYPE.SLICE or sizes is None or dim is None or \
            not 0 <= dim < len(sizes):
        return None
    channels = int(sizes[dim])
    half = channels // 2
    if channels % 2 or not half:
        return None
    cut = (fn._saved_start, min(fn._saved_end, channels))
    return (half, 2) if fn._saved_step == 1 and cut in (
        (0, half), (half, channels)) else None


#: DepGraph nodes whose group indices are not those of their output
#: tensor (a split's are its input's; reshapes change the channel count).
_NOT_OUTPUT_INDEXED = (tp_ops.OPTYPE.SPLIT, tp_ops.OPTYPE.UNBIND,
                       tp_ops.OPTYPE.RESHAPE, tp_ops.OPTYPE.EXPAND)


def _tie_pieces(node, cut: str, size: int, num: int, group,
               ties: ChannelTies) -> Optional[str]:
    """Tie the ``num`` equal pieces of the tensor ``node`` cuts (a split's
    indices in the group are its input's; a slice's are its output's, so
    its input node's are used), or say why not."""
    if node.type == tp_ops.OPTYPE.SLICE:
        node = node.inputs[0] if len(node.inputs) == 1 else None
        if node is None or node.type in _NOT_OUTPUT_INDEXED:
            return (f'its channels are cut into halves by {cut}, of a '
                    'tensor whose channels the analysis cannot follow')
    idxs, roots = [], []
    for item in group:
        if item.dep.target is not node:
            continue
        if isinstance(node.module, GATEABLE_TYPES) and \
                not is_depthwise(node.module) and \
                not group._DG.is_out_channel_pruning_fn(item.dep.handler):
            continue  # a layer's input channels: another tensor
        idxs += list(item.idxs)
        roots += list(item.root_idxs)
    fn = getattr(node, 'grad_fn', None)
    key = (fn._sequence_nr(), node) if hasattr(fn, '_sequence_nr') else None
    return ties.pieces(cut, size, num, idxs, roots, key)


def _tie_shuffle(node, groups: int, first, group,
                 ties: ChannelTies) -> Optional[str]:
    """Tie channel ``b`` of every piece of a channel shuffle's input (the
    transpose ``node``'s indices are the input's): the index mapping
    (:class:`.tp_patches._ShuffleIndexMapping`) already couples them, this
    checks that the unit holds every piece's channel ``b`` and lets the
    analysis probe a pruned copy (a view at a fixed size would break), or
    says why the shuffle cannot be followed."""
    cut = f'a channel shuffle ({groups} groups)'
    if getattr(first.module, 'mmifso_shuffle', None) != groups:
        return (f'its channels cross {cut}: view, transpose, view, whose '
                'permutation the analysis could not map')
    channels = int(first.grad_fn._saved_self_sym_sizes[1])
    idxs, roots = [], []
    for item in group:
        if item.dep.target is node:
            idxs += list(item.idxs)
            roots += list(item.root_idxs)
    return ties.pieces(cut, channels // groups, groups, idxs, roots)


#: grad_fns of norms whose statistics span several channels.
_FUNCTIONAL_NORMS = ('NativeLayerNormBackward', 'NativeGroupNormBackward')


def _norm_fns(output, depth: int = 4) -> set:
    """The layer/group-norm grad_fns among the last ``depth`` ops of
    ``output`` (a norm module's own op behind its permutes and copies)."""
    found, todo = set(), [(t.grad_fn, 0) for t in _tensors(output)
                          if t.grad_fn is not None]
    while todo:
        fn, d = todo.pop()
        if fn.name().startswith(_FUNCTIONAL_NORMS):
            found.add(fn)
        if d < depth:
            todo.extend((f, d + 1) for f, _ in fn.next_functions
                        if f is not None)
    return found


def _shapes(x) -> List[Tuple[int, ...]]:
    """The shapes of the tensors of a (nested) output."""
    return [tuple(t.shape) for t in _tensors(x)]


def _grad_fns(x) -> set:
    """The grad_fns of the tensors of a (nested) output."""
    return {t.grad_fn for t in _tensors(x) if t.grad_fn is not None}


def _tensors(x) -> List[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _warn_not_prunable(skipped: List[SkippedUnit], opaque: List[str]) -> None:
    """Say which units are left out and why, and which layers with
    parameters the analyzer does not understand."""
    for s in skipped:
        print_log(
            f'[mmifso] unit {s.name} ({s.num_channels} channels) is not '
            f'prunable: {s.reason}',
            logger='current',
            level=logging.WARNING)
    if opaque:
        print_log(
            '[mmifso] these modules have parameters but are not understood '
            'by the channel analyzer; units whose channels cross them are '
            'not prunable: ' + ', '.join(opaque) +
            '. Check the model with tools/analysis/coverage.py.',
            logger='current',
            level=logging.WARNING)
