"""Torch-Pruning's group importances as mmifso criteria (external baselines).

The criterion evaluates the real Torch-Pruning classes
(``torch_pruning.importance.GroupTaylorImportance``,
``GroupMagnitudeImportance``, ``GroupHessianImportance``) on the DepGraph
group of every mmifso unit, so their scores go through mmifso's selection,
cost normalisation and schedule hooks like every other criterion.
"""
import contextlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp
from mmengine.dist import all_reduce
from torch_pruning import _helpers
from torch_pruning.dependency.group import Group

from mmifso.registry import TASK_UTILS
from mmifso.utils import check_choice
from ..task_modules.channel_analyzer import ChannelAnalyzer
from ..task_modules.groups import get_pruning_group
from ..task_modules.layer_types import is_depthwise
from .base import BaseImportance, ScoringContext, grad_or_zeros


@TASK_UTILS.register_module()
class TorchPruningImportance(BaseImportance):
    """Torch-Pruning 1.6.1's group importances, run on mmifso's units.

    For each unit, the DepGraph group rooted at the unit's producer (the same
    group the channel analyzer turned into the unit) is handed to the
    Torch-Pruning importance object, which returns one score per channel.
    What Torch-Pruning computes, with ``W`` every weight tensor of the group
    sliced at the channel (conv/linear output rows, consumer input columns,
    BatchNorm/LayerNorm affine scales; biases only with ``bias=True``),
    summed per layer over the slice, then reduced over the layers of the
    group (``group_reduction``, default the mean) and divided by the
    group's mean (``normalizer='mean'``):

    * ``kind='magnitude'`` (``GroupMagnitudeImportance``, data free):
      ``sum |W|^p`` (``p=2`` by default; no square root).
    * ``kind='taylor'`` (``GroupTaylorImportance``, Molchanov et al. 2019):
      ``sum |W * dL/dW|`` (``multivariable=True``: ``|sum W * dL/dW|``)
      with the gradient left in ``.grad`` by ``loss.backward()``. Here the
      gradient is that of the mean loss over the scoring batches (what TP's
      examples get by calling ``backward()`` once per batch, up to a constant
      factor that the normaliser removes). **Quirk**: its BatchNorm branch
      tests the GroupNorm handler, so BatchNorm parameters never contribute
      to the Taylor score; only conv/linear weights (and LayerNorm) do.
    * ``kind='hessian'`` (``GroupHessianImportance``, "grouped OBD"):
      ``sum W^2 * h`` with ``h`` meant to be the diagonal empirical Fisher
      ``mean_n (dl_n/dW)^2`` over per-sample gradients, fed through
      ``accumulate_grad(model)`` after each sample's backward. **Known bug
      in 1.6.1** (also at upstream commit e80127d): ``accumulate_grad`` tests
      ``name not in self._accu_grad`` but stores under the parameter object,
      so every call overwrites the buffer and the counter stays 1: ``h`` is
      the squared gradient of the *last sample* only. With
      ``hessian_accumulation='as_shipped'`` (default) TP's real method runs
      after every sample, bug included, so the scores are those of TP as
      users get them; ``'fixed'`` accumulates the mean of the squared
      per-sample gradients itself and hands it to TP's ``__call__`` (TP's
      scoring code path, correct statistic).

    Masked channels: TP removes channels physically, so its normaliser and
    its filter norms only see the channels that remain. The criterion
    reproduces that on the masked model: each group is restricted to the
    unit's alive channels and every weight entry of a removed channel
    (producer rows, consumer input columns, norm parameters) counts as zero
    while TP scores. Removed channels get the score 0 (selection never
    considers them).

    Side effects: none. Gradients come from :func:`torch.autograd.grad`
    inside :meth:`ScoringContext.session` (BatchNorm buffers and masks
    restored); TP reads them from ``.grad``, so while TP's ``__call__`` runs
    ``.grad`` holds them and afterwards every parameter gets its original
    ``.grad`` object back. The DepGraph is traced once per model with masks
    not requiring grad, inside a session.

    Statistics and cost per scoring batch: magnitude none; Taylor one
    forward and backward (``O(P)`` memory for the accumulated gradient);
    Hessian one forward and ``N`` backward passes (one per sample,
    ``retain_graph``), ``O(P)`` extra memory. The Hessian per-sample losses
    need an mmpretrain classifier (``extract_feat`` + a head with a
    ``loss_module``); their mean is checked against the training loss on
    the first batch. Taylor uses the gradient averaged over ranks in a
    distributed run; Hessian per-sample statistics are per rank and the
    ranks' scores are averaged.

    Args:
        kind (str): ``'taylor'``, ``'magnitude'`` or ``'hessian'``.
        p (int): Norm degree of ``kind='magnitude'``. Defaults to 2.
        group_reduction (str): TP's reduction over the group's layers
            (``'mean'``, ``'sum'``, ``'max'``, ``'prod'``, ``'first'``).
            Defaults to ``'mean'``.
        normalizer (str, optional): TP's per-group normaliser (``'mean'``,
            ``'max'``, ``'sum'``, ``'standarization'``, ``'gaussian'``,
            ``'lamp'``, ``None``). Defaults to ``'mean'``.
        bias (bool): Include biases. Defaults to False (TP's default; TP's
            Hessian BatchNorm-bias branch raises with True).
        multivariable (bool): Taylor: ``|sum W g|`` instead of
            ``sum |W g|``. Defaults to False.
        hessian_accumulation (str): ``'as_shipped'`` or ``'fixed'``, see
            above. Defaults to ``'as_shipped'``.
    """

    KINDS = ('taylor', 'magnitude', 'hessian')

    example_kwargs = (dict(kind='taylor'), dict(kind='magnitude'),
                      dict(kind='hessian'))

    def __init__(self,
                 kind: str = 'taylor',
                 p: int = 2,
                 group_reduction: str = 'mean',
                 normalizer: Optional[str] = 'mean',
                 bias: bool = False,
                 multivariable: bool = False,
                 hessian_accumulation: str = 'as_shipped') -> None:
        check_choice('kind', kind, self.KINDS)
        check_choice('hessian_accumulation', hessian_accumulation,
                     ('as_shipped', 'fixed'))
        self.kind = kind
        self.hessian_accumulation = hessian_accumulation
        imp = tp.importance
        if kind == 'magnitude':
            self.tp_importance = imp.GroupMagnitudeImportance(
                p=p, group_reduction=group_reduction, normalizer=normalizer,
                bias=bias)
        elif kind == 'taylor':
            self.tp_importance = imp.GroupTaylorImportance(
                group_reduction=group_reduction, normalizer=normalizer,
                multivariable=multivariable, bias=bias)
        else:
            self.tp_importance = imp.GroupHessianImportance(
                group_reduction=group_reduction, normalizer=normalizer,
                bias=bias)
        # Instance attributes: the hooks read them from the instance.
        self.requires_data = kind != 'magnitude'
        # Hessian statistics are per sample of each rank (ranks averaged).
        self.distributed_exact = kind != 'hessian'
        self._graph_key: Optional[Tuple] = None
        self._groups: List[Group] = []
        self._loss_checked = False
        super().__init__()

    # ------------------------------------------------------------------ #
    # Accumulation
    # ------------------------------------------------------------------ #
    def reset(self) -> None:
        super().reset()
        #: Per parameter: the gradient sum (Taylor) or the sum of squared
        #: per-sample gradients (Hessian, 'fixed').
        self._acc: Optional[List[torch.Tensor]] = None
        self._acc_count = 0
        if self.kind == 'hessian':
            self.tp_importance.zero_grad()

    @staticmethod
    def _params(ctx: ScoringContext) -> List[nn.Parameter]:
        return [p for p in ctx.model.parameters() if p.requires_grad]

    def _add(self, tensors: List[torch.Tensor], count: int) -> None:
        if self._acc is None:
            self._acc = [t.detach().clone() for t in tensors]
        else:
            for a, t in zip(self._acc, tensors):
                a.add_(t)
        self._acc_count += count

    def update(self,
               ctx: ScoringContext,
               data_batch: dict,
               seed: Optional[int] = None) -> None:
        """Accumulate the statistics TP needs from one raw batch (see
        :meth:`BaseImportance.update` for the arguments)."""
        if not self.requires_data:
            return
        params = self._params(ctx)
        with ctx.session():
            data = ctx.prepare(data_batch, seed)
            if self.kind == 'taylor':
                # The global batch's gradient (averaged over ranks).
                self._add(ctx.grad(ctx.loss(data), params), 1)
            else:
                self._accumulate_per_sample(ctx, data, params)
        self._count += 1

    def _accumulate_per_sample(self, ctx: ScoringContext, data: dict,
                               params: List[nn.Parameter]) -> None:
        self._restore_tp_acc(params)
        losses = self._per_sample_losses(ctx, data)
        for n in range(len(losses)):
            grads = grad_or_zeros(losses[n], params, retain_graph=True)
            if self.hessian_accumulation == 'fixed':
                self._add([g * g for g in grads], 1)
                continue
            # TP's own accumulate_grad reads .grad of model.named_parameters.
            with _grads_set(ctx.model, dict(zip(params, grads))):
                self.tp_importance.accumulate_grad(ctx.model)

    def _per_sample_losses(self, ctx: ScoringContext,
                           data: dict) -> torch.Tensor:
        """Loss of every sample from one batch forward, shape ``(N, )``.

        Raises:
            ValueError: if the model is not an mmpretrain-style classifier or
                the mean of the per-sample losses is not its training loss.
        """
        model = ctx.model
        head = getattr(model, 'head', None)
        loss_module = getattr(head, 'loss_module', None)
        if not hasattr(model, 'extract_feat') or loss_module is None:
            raise ValueError(
                "TorchPruningImportance(kind='hessian') needs per-sample "
                'losses: supported for classifiers with extract_feat() and '
                f'head.loss_module (mmpretrain), not {type(model).__name__}')
        samples = data['data_samples']
        if 'gt_score' in samples[0]:
            target = torch.stack([s.gt_score for s in samples])
        else:
            target = torch.cat([s.gt_label for s in samples])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx._seed)  # the seed of ctx.loss's passes
            scores = head(model.extract_feat(data['inputs']))
        losses = loss_module(
            scores, target.to(scores.device),
            reduction_override='none').float()
        if losses.dim() != 1 or len(losses) != len(samples):
            raise ValueError(f'per-sample losses of shape '
                             f'{tuple(losses.shape)} for {len(samples)} '
                             'samples')
        if not self._loss_checked:
            with torch.no_grad():
                full = float(ctx.loss(data))
            mean = float(losses.detach().mean())
            if abs(mean - full) > 1e-4 * max(1.0, abs(full)):
                raise ValueError(
                    f'the per-sample losses average {mean:.6g} but the '
                    f'training loss is {full:.6g}: the loss has terms the '
                    'head loss_module does not give per sample')
            self._loss_checked = True
        return losses

    # ------------------------------------------------------------------ #
    # Scores
    # ------------------------------------------------------------------ #
    def compute(self, ctx: ScoringContext) -> List[torch.Tensor]:
        """TP's scores of every unit's alive channels.

        Returns:
            list[Tensor]: Per unit, float64, shape ``(num_channels, )``;
            removed channels score 0.
        """
        if self.requires_data and self._count == 0:
            raise RuntimeError(
                f'{type(self).__name__} has seen no data batch: the scoring '
                'dataloader is empty or update() was never called.')
        groups = self.unit_groups(ctx)
        params = self._params(ctx)
        grads: Dict[nn.Parameter, torch.Tensor] = {}
        if self.kind == 'taylor' or (self.kind == 'hessian' and
                                     self.hessian_accumulation == 'fixed'):
            grads = {p: a / self._acc_count for p, a in zip(params, self._acc)}
        elif self.kind == 'hessian':
            # TP fills .grad from its (buggy) buffer on the first call and
            # needs a .grad to assign to.
            self._restore_tp_acc(params)
            grads = {p: torch.zeros_like(p) for p in params}
        scores = []
        # TP's Hessian empties its buffer when it scores: keep a copy so
        # compute() can be called again (e.g. after a skipped step).
        tp_state = dict(getattr(self.tp_importance, '_accu_grad', {})), \
            dict(getattr(self.tp_importance, '_counter', {}))
        try:
            with _grads_set(ctx.model, grads), _dead_channels_zeroed(ctx), \
                    torch.no_grad():
                for unit, group in zip(ctx.units, groups):
                    alive = unit.alive.nonzero().flatten().cpu().tolist()
                    imp = self.tp_importance(_restrict(group, alive))
                    if imp is None:
                        raise RuntimeError('Torch-Pruning scored no layer of '
                                           f'unit {unit.name}')
                    full = torch.zeros(unit.num_channels, dtype=torch.float64)
                    full[alive] = imp.detach().double().cpu()
                    scores.append(full)
        finally:
            if self.kind == 'hessian':
                self.tp_importance._accu_grad, self.tp_importance._counter = \
                    tp_state
        if self.kind == 'hessian':
            # Per-sample statistics are per rank: average the ranks' scores.
            flat = torch.cat(scores)
            all_reduce(flat, op='mean')
            scores = list(flat.split([len(s) for s in scores]))
        return scores

    def static_scores(self, ctx: ScoringContext) -> List[torch.Tensor]:
        return self.compute(ctx)

    def unit_groups(self, ctx: ScoringContext) -> List[Group]:
        """The DepGraph group of every unit (all its channels).

        The model is traced once (cached while the model and its units stay
        the same) with the mutator's demo input, inside a scoring session so
        the trace leaves BatchNorm statistics untouched.

        Raises:
            RuntimeError: if a group does not cover its unit's layers.
        """
        key = (id(ctx.model), tuple((u.name, u.num_channels)
                                    for u in ctx.units))
        if key == self._graph_key:
            return self._groups
        analyzer = ChannelAnalyzer(ctx.mutator.demo_input)
        with ctx.session(masks_require_grad=False):
            graph = analyzer.build_graph(ctx.model)
        names = {m: n for n, m in ctx.model.named_modules()}
        groups = []
        for unit in ctx.units:
            root = ctx.model.get_submodule(unit.name)
            pruner = graph.get_pruner_of_module(root)
            group = get_pruning_group(graph, root, pruner.prune_out_channels,
                                      list(range(unit.num_channels)))
            covered = {names.get(dep.target.module) for dep, _ in group}
            missing = {s.module for s in unit.sites} - covered
            if missing:
                raise RuntimeError(
                    f'the DepGraph group of unit {unit.name} does not reach '
                    f'{sorted(missing)}; it does not match the unit')
            groups.append(group)
        self._graph_key, self._groups = key, groups
        return groups

    # ------------------------------------------------------------------ #
    def state_dict(self) -> Dict:
        tp_acc = None
        if self.kind == 'hessian' and self.tp_importance._accu_grad:
            tp_acc = dict(
                grads=list(self.tp_importance._accu_grad.values()),
                counts=list(self.tp_importance._counter.values()))
        return dict(super().state_dict(), acc=self._acc,
                    acc_count=self._acc_count, tp_acc=tp_acc)

    def load_state_dict(self, state: Dict) -> None:
        super().load_state_dict(state)
        self._acc, self._acc_count = state['acc'], state['acc_count']
        # TP's buffer is keyed by parameter objects, which only the next
        # update/compute knows (see _restore_tp_acc).
        self._pending_tp_acc = state.get('tp_acc')

    def _restore_tp_acc(self, params: List[nn.Parameter]) -> None:
        """Re-key a loaded TP Hessian buffer by the model's parameters (TP
        fills it in ``model.parameters()`` order, the order of ``params``)."""
        pending = getattr(self, '_pending_tp_acc', None)
        if pending is None:
            return
        self._pending_tp_acc = None
        self.tp_importance._accu_grad = dict(zip(params, pending['grads']))
        self.tp_importance._counter = dict(zip(params, pending['counts']))


def _restrict(group: Group, alive: List[int]) -> Group:
    """``group`` restricted to the root channels ``alive``.

    Root indices are renumbered ``0 .. len(alive) - 1`` (TP scatters the
    layers' scores into a vector of the group's length, as after physical
    pruning) and each layer's entries are sorted by index, because TP's
    Taylor and Hessian importances sort ``idxs`` in place without reordering
    ``root_idxs``.
    """
    pos = {r: k for k, r in enumerate(alive)}
    out = Group()
    out._DG = getattr(group, '_DG', None)
    for item in group:
        pairs = sorted((int(i), pos[int(r)])
                       for i, r in zip(item.idxs, item.root_idxs)
                       if r is not None and int(r) in pos)
        sub = _helpers.GroupItem(item.dep, [i for i, _ in pairs])
        sub.root_idxs = [r for _, r in pairs]
        out._group.append(sub)
    return out


@contextlib.contextmanager
def _grads_set(model: nn.Module,
               grads: Dict[nn.Parameter, torch.Tensor]) -> Iterator[None]:
    """Give ``model``'s parameters the ``.grad`` in ``grads`` (clones; None
    for the others) and put every original ``.grad`` object back on exit."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            g = grads.get(p)
            p.grad = None if g is None else g.detach().clone().to(p.dtype)
        yield
    finally:
        for p, g in saved:
            p.grad = g


@contextlib.contextmanager
def _dead_channels_zeroed(ctx: ScoringContext) -> Iterator[None]:
    """Zero every weight entry of removed channels (restored on exit).

    Producer rows, consumer input columns, depthwise filters and per-channel
    parameters of removed channels are what physical pruning deletes; TP's
    filter norms of the *remaining* channels include e.g. the consumer rows
    of a remaining input column, so these entries must not count.
    """
    saved: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def zero(t: torch.Tensor, index: tuple) -> None:
        if id(t) not in saved:
            saved[id(t)] = (t, t.detach().clone())
        t[index] = 0

    try:
        with torch.no_grad():
            for unit in ctx.units:
                dead = (~unit.alive).cpu()
                if not bool(dead.any()):
                    continue
                for site in unit.sites:
                    idxs = [i for i, r in zip(site.idxs, site.root_idxs)
                            if bool(dead[r])]
                    if not idxs:
                        continue
                    module = ctx.model.get_submodule(site.module)
                    if site.role == 'param':
                        for t in module.parameters(recurse=False):
                            if t.dim() >= 1 and t.shape[0] > max(idxs):
                                zero(t, (idxs, ))
                    elif site.role == 'out' or is_depthwise(module):
                        zero(module.weight, (idxs, ))
                        if site.role == 'out' and module.bias is not None:
                            zero(module.bias, (idxs, ))
                    else:  # input columns; grouped convs: within the group
                        w = module.weight
                        groups = getattr(module, 'groups', 1)
                        per_in, per_out = w.shape[1], w.shape[0] // groups
                        for c in idxs:
                            g = c // per_in
                            zero(w, (slice(g * per_out, (g + 1) * per_out),
                                     c % per_in))
        yield
    finally:
        with torch.no_grad():
            for t, orig in saved.values():
                t.copy_(orig)
