"""The channel mutator: builds units, gates consumers, counts resources."""
import copy
import logging
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn.bricks import wrappers as mmcv_wrappers
from mmengine.logging import print_log
from mmengine.model import BaseModule

from mmifso.registry import MODELS, TASK_UTILS
from mmifso.structures import make_structure
from mmifso.utils import check_choice
from ..mutables import MutableChannelUnit
from ..task_modules.channel_analyzer import ChannelAnalyzer
from ..task_modules.channel_norms import masked_layer_norm, norm_channel_dim
from ..task_modules.channel_units import AnalysisResult, SkippedUnit
from ..task_modules.resource import count_resources, record_layers
from ..task_modules.structure_pruner import apply_structure
from ..utils import (eval_mode, max_abs_diff, max_abs_value,
                     randomise_norm_parameters)
from .export_check import export_mismatch, failing_items


class NoPrunableUnitsError(RuntimeError):
    """The analysis found nothing that can be pruned."""


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


class InputGate:
    """Forward pre-hook multiplying a layer's input by its units' masks.

    Each part is ``(unit, idxs, root_idxs)``: input channels ``idxs`` of the
    layer carry channels ``root_idxs`` of ``unit``. The masks are read at call
    time, so loading a checkpoint or pruning updates the gate at once, and the
    product is differentiable w.r.t. the masks (used by the criteria).
    """

    def __init__(self, num_channels: int, channel_dim: int,
                 parts: List[tuple]) -> None:
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.parts = parts
        # One unit covering the layer's channels in order: the mask is the
        # gate, no indexing needed (the common case; keeps overhead low).
        unit, idxs, root = parts[0]
        self.identity = (
            len(parts) == 1 and unit.num_channels == num_channels
            and idxs.tolist() == list(range(num_channels))
            and root.tolist() == list(range(num_channels)))

    def gate(self, like: torch.Tensor) -> torch.Tensor:
        """``(C, )``, or ``(N, C)`` while a unit has per-sample gates."""
        if self.identity:
            return self.parts[0][0].effective_mask.to(like.dtype)
        parts = [(u.effective_mask, i.to(like.device), r.to(like.device))
                 for u, i, r in self.parts]
        return compose_gate(self.num_channels, parts, like)

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]
        gate = self.gate(x)
        dim = self.channel_dim % x.dim()
        shape = [1] * x.dim()
        shape[dim] = self.num_channels
        if gate.dim() == 2:  # per-sample gates: batch is dim 0
            shape[0] = gate.shape[0]
        return (x * gate.view(shape), ) + tuple(args[1:])


#: Layer types whose forward uses ``self.weight`` linearly in every input
#: channel and nothing else of it, so gating input channel ``c`` equals
#: scaling the weight entries that read ``c``: the exact types only (a
#: subclass may transform its weight, e.g. weight standardisation).
WEIGHT_GATE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                     nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
                     mmcv_wrappers.Conv2d, mmcv_wrappers.Conv3d,
                     mmcv_wrappers.ConvTranspose2d,
                     mmcv_wrappers.ConvTranspose3d, mmcv_wrappers.Linear)


class WeightGate(InputGate):
    """Gates a conv/linear layer's input channels through its weight.

    ``conv(x * g, W) = conv(x, W * g)`` with ``g`` broadcast over the weight
    entries that read each input channel (``W[:, c]``; for a grouped or
    depthwise convolution the entries of channel ``c``'s group, for a
    transposed convolution ``W[c]``). The product costs O(weights) instead of
    O(activations) and is exact, also for ``d loss / d mask`` and every
    higher derivative: the masks enter the graph through the same
    multilinear product. Before each forward the hook puts ``W * g`` in the
    module's parameter slot; :class:`WeightRestore` (a forward hook that
    always runs, also when the forward raises) puts the parameter back, so
    state-dict keys, module types and checkpoints do not change. While a
    unit has per-sample gates (``(N, C)``, per-sample mask gradients) a
    weight cannot carry them and the call gates the input instead.

    Args:
        module (nn.Module): The gated layer, one of :data:`WEIGHT_GATE_TYPES`.
        num_channels (int): Its input channels.
        channel_dim (int): The channel dimension of its input.
        parts (list[tuple]): See :class:`InputGate`.
    """

    def __init__(self, module: nn.Module, num_channels: int,
                 channel_dim: int, parts: List[tuple]) -> None:
        super().__init__(num_channels, channel_dim, parts)
        weight = module.weight
        # Per module object (replicas of one layer share this hook): the
        # weights to restore, a stack for re-entrant calls.
        self._saved: Dict[int, List[Optional[torch.Tensor]]] = {}
        transposed = getattr(module, 'transposed', False)
        groups = getattr(module, 'groups', 1)
        if isinstance(module, nn.Linear):
            self._view = (1, num_channels)
            self._groups = None
        elif transposed:  # weight (in, out / groups, *k)
            self._view = (num_channels, ) + (1, ) * (weight.dim() - 1)
            self._groups = None
        elif groups == 1:  # weight (out, in, *k)
            self._view = (1, num_channels) + (1, ) * (weight.dim() - 2)
            self._groups = None
        else:  # weight (out, in / groups, *k): channel g * ipg + j at [o, j]
            self._view = None
            self._groups = (groups, weight.shape[0] // groups,
                            num_channels // groups, weight.dim() - 2)

    def weight_gate(self, gate: torch.Tensor) -> torch.Tensor:
        """The ``(C, )`` input-channel gate shaped to multiply the weight."""
        if self._groups is None:
            return gate.view(self._view)
        groups, opg, ipg, k = self._groups
        full = gate.view(groups, 1, ipg).expand(groups, opg, ipg)
        return full.reshape((groups * opg, ipg) + (1, ) * k)

    def __call__(self, module: nn.Module, args: tuple):
        saved = self._saved.setdefault(id(module), [])
        # A replica of nn.DataParallel holds its weight outside
        # ``_parameters``: gate its input.
        weight = module._parameters.get('weight')
        gate = self.gate(args[0] if weight is None else weight)
        if weight is None or gate.dim() == 2:  # per-sample gates: the input
            saved.append(None)
            return super().__call__(module, args)
        saved.append(weight)
        module._parameters['weight'] = weight * self.weight_gate(gate)
        return None

    def restore(self, module: nn.Module) -> None:
        """Put the layer's own weight back (after its forward)."""
        saved = self._saved.get(id(module))
        if saved:
            weight = saved.pop()
            if weight is not None:
                module._parameters['weight'] = weight


class WeightRestore:
    """Forward hook of a :class:`WeightGate`: restores the layer's weight."""

    def __init__(self, gate: WeightGate) -> None:
        self.gate = gate

    def __call__(self, module: nn.Module, args: tuple, output) -> None:
        self.gate.restore(module)


class NormGate(InputGate):
    """Forward hook recomputing a LayerNorm over the alive channels only.

    A LayerNorm over the channel dim mixes channels through its statistics:
    while any of its channels is masked (or the masks require grad), its
    output is replaced by :func:`~..task_modules.channel_norms.
    masked_layer_norm`, whose mean and variance are weighted by the gate, so
    the masked model equals the exported one (whose norm lost the removed
    channels) and ``d loss / d mask`` includes each channel's effect on the
    statistics. The channel dim is read from every call (``data_format`` of
    mmpretrain's ``LayerNorm2d``). The removed channels' outputs are gated
    by the norm's consumers, as after a BatchNorm.

    Args:
        num_channels (int): The norm's channels.
        parts (list[tuple]): See :class:`InputGate`.
    """

    def __init__(self, num_channels: int, parts: List[tuple]) -> None:
        # One entry per unit and index pattern (DepGraph may list a norm
        # more than once in a group).
        unique = {(id(u), tuple(i.tolist()), tuple(r.tolist())): (u, i, r)
                  for u, i, r in parts}
        super().__init__(num_channels, -1, list(unique.values()))

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict,
                 output):
        x = args[0]
        gate = self.gate(x)
        if not gate.requires_grad and bool((gate == 1).all()):
            return None  # nothing masked: the norm's own output is exact
        dim = norm_channel_dim(module, args, kwargs)
        if dim is None:  # the analysis checked the demo calls
            raise RuntimeError(
                f'{type(module).__name__}: cannot tell which dim of its '
                f'input {tuple(x.shape)} it normalises, so the masked norm '
                'cannot be computed')
        return masked_layer_norm(module, x, dim, gate)


def strip_gates(model: nn.Module) -> None:
    """Remove every gate hook (:class:`InputGate`, :class:`WeightGate` and
    its :class:`WeightRestore`, :class:`NormGate`) from ``model`` (e.g. a
    copy)."""
    for m in model.modules():
        for key in [k for k, h in m._forward_pre_hooks.items()
                    if isinstance(h, InputGate)]:
            del m._forward_pre_hooks[key]
        for key in [k for k, h in m._forward_hooks.items()
                    if isinstance(h, (WeightRestore, NormGate))]:
            del m._forward_hooks[key]
            m._forward_hooks_always_called.pop(key, None)
            m._forward_hooks_with_kwargs.pop(key, None)


def _probe_channels(unit: MutableChannelUnit) -> List[int]:
    """Every other block of ``unit`` (every other channel where channels are
    free), as many as ``min_channels`` allows: the export check removes
    many channels so that an op that mixes channels shows clearly."""
    blocks = unit.blocks or [[c] for c in range(unit.num_channels)]
    removed: List[int] = []
    for block in blocks[::2]:
        if unit.num_channels - len(removed) - len(block) < max(
                unit.min_channels, 1):
            break
        removed.extend(block)
    return removed


@MODELS.register_module()
class ChannelMutator(BaseModule):
    """Builds one :class:`MutableChannelUnit` per coupled channel group.

    Args:
        demo_input (dict): Config of the demo-input builder used to trace the
            model, e.g. ``dict(type='mmifso.DemoInput', input_shape=(1, 3, 32,
            32))``.
        min_channels (int): Channels every unit keeps at least.
        frozen (str): ``'error'`` or ``'skip'`` for units with frozen
            parameters; see :class:`ChannelAnalyzer`.
        gate (str): How masks reach their consumers. ``'weight'`` (default):
            a consumer of :data:`WEIGHT_GATE_TYPES` multiplies the weight
            entries reading each channel (:class:`WeightGate`, O(weights));
            any other consumer multiplies its input (:class:`InputGate`,
            O(activations)) and is named in one INFO line. ``'input'``:
            every consumer gates its input. Both give the same losses,
            gradients and Hessian-vector products (up to float rounding);
            checkpoints do not depend on it.
        check_export (bool): Check once, on a copy of the model with random
            norm parameters, that removing channels of each unit gives the
            outputs that masking them gives (every other block of every
            unit removed at once; failing units are found by bisection).
            Units that fail are left out with the reason, and a warning
            names them: an op the traced graph does not show (a channel
            count held in an attribute, a mean over the channels) would
            otherwise make the export differ from the trained masked model.
            Costs one export and two demo forwards when every unit passes.
        init_cfg (dict, optional): Unused; for the BaseModule interface.
    """

    def __init__(self,
                 demo_input: Union[dict, object] = dict(
                     type='mmifso.DemoInput', input_shape=(1, 3, 224, 224)),
                 min_channels: int = 1,
                 frozen: str = 'error',
                 gate: str = 'weight',
                 check_export: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        check_choice('gate', gate, ('weight', 'input'))
        self.gate = gate
        if not isinstance(check_export, bool):
            raise TypeError('check_export must be True or False, got '
                            f'{check_export!r}')
        self.check_export = check_export
        if isinstance(demo_input, dict):
            demo_input = TASK_UTILS.build(demo_input)
        self.demo_input = demo_input
        if min_channels < 1:
            raise ValueError(f'min_channels must be >= 1, got {min_channels}')
        self.min_channels = min_channels
        self.frozen = frozen
        self.units = nn.ModuleList()
        self.analysis: Optional[AnalysisResult] = None
        self._gated: Dict[str, List] = {}
        self._sites: Dict[str, Dict[str, List]] = {}

    # ------------------------------------------------------------------ #
    # Building
    # ------------------------------------------------------------------ #
    def prepare_from_supernet(self, model: nn.Module) -> None:
        """Analyse ``model``, create the units and install the input gates.

        Raises:
            NoPrunableUnitsError: if no unit can be pruned.
        """
        analyzer = ChannelAnalyzer(
            self.demo_input, frozen=self.frozen,
            min_channels=self.min_channels)
        self.analysis = analyzer.analyse(model)
        self._require_units(model)
        # Eval mode: a demo forward in train mode would overwrite BatchNorm
        # running statistics (and fails on 1x1 maps with batch size 1).
        with eval_mode(model), torch.no_grad():
            self.layer_records = record_layers(model, self.demo_input)
        self._build_units(model)
        if self.check_export:
            self._leave_out_inexact_units(model)
        print_log(
            f'[mmifso] {len(self.units)} prunable units, '
            f'{sum(u.num_channels for u in self.units)} channels; '
            f'{len(self.analysis.skipped)} groups not prunable.',
            logger='current',
            level=logging.INFO)

    def _require_units(self, model: nn.Module) -> None:
        if not self.analysis.units:
            skipped = '; '.join(f'{s.name}: {s.reason}'
                                for s in self.analysis.skipped) or 'none'
            raise NoPrunableUnitsError(
                f'{type(model).__name__} has no prunable channel units '
                f'(groups found and why they were skipped: {skipped}).')

    def _build_units(self, model: nn.Module) -> None:
        """Units and gates from ``self.analysis.units``."""
        self.units = nn.ModuleList(
            MutableChannelUnit.from_spec(spec, self.min_channels)
            for spec in self.analysis.units)
        self._install_gates(model)
        self._model_param_count = sum(p.numel() for p in model.parameters())
        self._per_channel_params = {
            name: self._params_per_channel(model.get_submodule(name))
            for name in self._sites['param']
        }
        # Bare per-channel parameters (one entry per channel): not gated,
        # but their removed entries count in the params estimate.
        for spec, unit in zip(self.analysis.units, self.units):
            for site in spec.bare_params:
                self._sites['bare'][site.module].append(
                    (unit, torch.tensor(site.idxs, dtype=torch.long),
                     torch.tensor(site.root_idxs, dtype=torch.long)))
                self._per_channel_params[site.module] = 1

    def _install_gates(self, model: nn.Module) -> None:
        sites: Dict[str, Dict[str, List]] = {
            'in': defaultdict(list),
            'out': defaultdict(list),
            'param': defaultdict(list),
            'bare': defaultdict(list)
        }
        for unit in self.units:
            for site in unit.sites:
                sites[site.role][site.module].append(
                    (unit, torch.tensor(site.idxs, dtype=torch.long),
                     torch.tensor(site.root_idxs, dtype=torch.long)))
        self._sites = sites
        input_gated = []
        for name, parts in sites['in'].items():
            module = model.get_submodule(name)
            if isinstance(module, nn.Linear):
                num, dim = module.in_features, -1
            else:
                num, dim = module.in_channels, 1
            if self.gate == 'weight' and type(module) in WEIGHT_GATE_TYPES \
                    and isinstance(module.weight, nn.Parameter):
                gate = WeightGate(module, num, dim, parts)
                module.register_forward_pre_hook(gate)
                module.register_forward_hook(
                    WeightRestore(gate), prepend=True, always_call=True)
                continue
            if self.gate == 'weight':
                input_gated.append(f'{name} ({type(module).__name__})')
            module.register_forward_pre_hook(InputGate(num, dim, parts))
        for name, parts in sites['param'].items():
            module = model.get_submodule(name)
            if isinstance(module, nn.LayerNorm):
                # Statistics over the alive channels (see NormGate).
                module.register_forward_hook(
                    NormGate(module.normalized_shape[0], parts),
                    with_kwargs=True)
        if input_gated:
            print_log(
                '[mmifso] input-side channel gates (weight-side gating is '
                'exact only for plain conv/linear layers) on: ' +
                ', '.join(input_gated),
                logger='current',
                level=logging.INFO)

    @staticmethod
    def _params_per_channel(module: nn.Module) -> int:
        channels = getattr(module, 'num_features', None) or getattr(
            module, 'num_channels', None) or getattr(module,
                                                     'num_parameters', None)
        if isinstance(module, nn.LayerNorm):
            channels = module.normalized_shape[-1]
        return sum(p.numel() // p.shape[0]
                   for p in module.parameters(recurse=False)
                   if p.dim() >= 1 and p.shape[0] == channels)

    # ------------------------------------------------------------------ #
    # Export
    # ------------------------------------------------------------------ #
    def pruned_copy(self, model: nn.Module,
                    resources: Optional[Dict] = None
                    ) -> Tuple[nn.Module, Dict]:
        """A physically pruned copy of ``model`` as the masks say.

        Args:
            model (nn.Module): The gated architecture (left unchanged).
            resources (dict, optional): Stored in the structure for
                reference.

        Returns:
            tuple: The pruned copy (no gates) and the structure dict.
        """
        structure = make_structure(self, resources)
        pruned = copy.deepcopy(model)
        strip_gates(pruned)
        apply_structure(pruned, structure, self.demo_input)
        return pruned, structure

    def _leave_out_inexact_units(self, model: nn.Module) -> None:
        """Leave out (and name) the units whose export does not give the
        masked model's outputs (see ``check_export``)."""
        # The probe's gates read these units' masks (shared, not copied).
        probe = copy.deepcopy(model, memo={id(u): u for u in self.units})
        randomise_norm_parameters(probe, torch.Generator().manual_seed(0))
        units = [u for u in self.units if _probe_channels(u)]
        failing = failing_items(units,
                                lambda part: self._export_trial(probe, part))
        if not failing:
            return
        reasons = {units[i].name: why for i, why in failing.items()}
        print_log(
            f'[mmifso] left out {len(reasons)} units: removing their '
            'channels does not give the masked model\'s outputs: ' +
            '; '.join(f'{n} ({why})' for n, why in reasons.items()),
            logger='current',
            level=logging.WARNING)
        self.analysis.skipped.extend(
            SkippedUnit(spec.name, spec.num_channels,
                        'removing its channels does not give the masked '
                        f'model\'s outputs: {reasons[spec.name]}')
            for spec in self.analysis.units if spec.name in reasons)
        self.analysis.units = [
            spec for spec in self.analysis.units if spec.name not in reasons
        ]
        strip_gates(model)
        self._require_units(model)
        self._build_units(model)

    def _export_trial(self, probe: nn.Module,
                      units: List[MutableChannelUnit]) -> Optional[str]:
        """Remove every other block of each of ``units`` from ``probe``;
        why its export differs from the masked forward, or None."""
        choices = self.get_choices()
        try:
            for unit in units:
                unit.prune(_probe_channels(unit))
            with torch.random.fork_rng(devices=[]), eval_mode(probe), \
                    torch.no_grad():
                torch.manual_seed(0)
                masked = self.demo_input(probe)
                try:
                    pruned, _ = self.pruned_copy(probe)
                    pruned.eval()
                    torch.manual_seed(0)
                    exported = self.demo_input(pruned)
                except Exception as e:  # any failure is the answer
                    # The model's own error, not the demo input's advice.
                    cause = e.__cause__ or e
                    return ('the exported model fails: '
                            f'{type(cause).__name__}: {str(cause)[:200]}')
        finally:
            self.set_choices(choices)
        return export_mismatch(
            max_abs_diff(masked, exported), max_abs_value(masked))

    # ------------------------------------------------------------------ #
    # Choices
    # ------------------------------------------------------------------ #
    def get_choices(self) -> Dict[str, List[int]]:
        """``{unit_name: kept_channel_indices}``."""
        return {u.name: u.current_choice for u in self.units}

    def set_choices(self, choices: Dict[str, Sequence[int]]) -> None:
        """Set the kept channels of the named units."""
        by_name = {u.name: u for u in self.units}
        unknown = set(choices) - set(by_name)
        if unknown:
            raise KeyError(f'unknown units {sorted(unknown)}; the model has '
                           f'{sorted(by_name)}')
        for name, kept in choices.items():
            by_name[name].current_choice = list(kept)

    # ------------------------------------------------------------------ #
    # Resources
    # ------------------------------------------------------------------ #
    def _alive(self, role: str, exclude: Optional[tuple] = None
               ) -> Dict[str, int]:
        """Alive channel counts of every layer with sites of ``role``."""
        out = {}
        for name, parts in self._sites[role].items():
            rec = self.layer_records.get(name)
            n = rec.in_channels if rec is not None and role == 'in' else (
                rec.out_channels if rec is not None else
                parts[0][0].num_channels)
            if rec is None:  # 'param', 'bare': size from the largest index
                n = max(int(i.max()) + 1 for _, i, _ in parts)
            dead = torch.zeros(n, dtype=torch.bool)
            for unit, idxs, root in parts:
                m = ~unit.alive.cpu()
                if exclude is not None and exclude[0] is unit:
                    m = m.clone()
                    m[exclude[1]] = True
                dead[idxs] |= m[root]
            out[name] = n - int(dead.sum())
        return out

    def resources(self, exclude: Optional[tuple] = None) -> Dict[str, float]:
        """FLOPs (conv/linear MACs per image) and params of the masked model.

        Args:
            exclude (tuple, optional): ``(unit, channel)`` counted as removed
                in addition to the current masks (for cost estimates).

        Returns:
            dict: ``flops``, ``params`` and their ratios to the unpruned
            model, ``flops_ratio`` and ``params_ratio``.
        """
        alive_in = self._alive('in', exclude)
        alive_out = self._alive('out', exclude)
        res = count_resources(self.layer_records, alive_in, alive_out)
        full = count_resources(self.layer_records)
        removed_params = full['layer_params'] - res['layer_params']
        for role in ('param', 'bare'):
            for name, n_alive in self._alive(role, exclude).items():
                parts = self._sites[role][name]
                n = max(int(i.max()) + 1 for _, i, _ in parts)
                removed_params += (n - n_alive) * \
                    self._per_channel_params[name]
        params = self._model_param_count - removed_params
        return dict(
            flops=res['flops'],
            params=params,
            flops_ratio=res['flops'] / max(full['flops'], 1),
            params_ratio=params / max(self._model_param_count, 1))

    def channel_costs(self, kind: str = 'acts') -> List[torch.Tensor]:
        """Cost of removing one more channel of each unit.

        Args:
            kind (str): ``'flops'`` (MACs saved), ``'acts'`` (activation
                elements per image the channel's producers write, IFSO's
                default) or ``'none'`` (all ones).

        Returns:
            list[Tensor]: Per unit, shape ``(num_channels, )``; the same value
            for every channel of a unit.
        """
        costs = []
        if kind == 'flops':
            base = self.resources()['flops']
        for unit in self.units:
            if kind == 'none':
                c = 1.0
            elif kind == 'acts':
                c = 0.0
                for site in unit.sites:
                    rec = self.layer_records.get(site.module)
                    if rec is not None and site.role == 'out':
                        c += rec.spatial * len(site.idxs) / unit.num_channels
                    elif rec is not None and rec.depthwise:
                        c += rec.spatial * len(site.idxs) / unit.num_channels
                c = max(c, 1.0)
            elif kind == 'flops':
                alive = unit.alive.nonzero().flatten()
                if len(alive) == 0:
                    c = 1.0
                else:
                    after = self.resources((unit, int(alive[0])))['flops']
                    c = max(base - after, 1)
            else:
                raise ValueError(
                    f"cost must be 'acts', 'flops' or 'none', got {kind!r}")
            costs.append(torch.full((unit.num_channels, ), float(c)))
        return costs

    def channel_counts(self) -> Dict[str, str]:
        """``{unit_name: 'alive/total'}`` for logging."""
        return {u.name: f'{u.num_alive}/{u.num_channels}' for u in self.units}
