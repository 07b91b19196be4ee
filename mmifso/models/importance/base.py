"""The criterion interface and the safe loss evaluation it runs on."""
import contextlib
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine.dist import all_reduce, get_world_size

from mmifso.registry import TASK_UTILS
from ..mutators import ChannelMutator
from ..utils import (DifferentiableSyncBatchNorm,
                     TwiceDifferentiableHardsigmoid, dot)

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm,
               nn.modules.instancenorm._InstanceNorm)


class ScoringContext:
    """Loss evaluations of a gated model for pruning criteria.

    A context never steps an optimizer and never writes ``.grad``: gradients
    are taken with :func:`torch.autograd.grad`. Inside :meth:`session`
    BatchNorm running statistics are restored on exit, masks require grad,
    and losses are computed in fp32 with a fixed random seed per batch so that
    repeated passes (finite differences) see the same dropout and batch
    augmentation.

    **Several processes.** Each rank scores its own share of the global
    batch. Every quantity that is linear in the samples -- the gradient of
    the loss, every Hessian-vector product ``H v``, any per-batch sum -- is
    averaged over the ranks (weighted by the ranks' batch sizes) by
    :meth:`grad`, :meth:`hvp` and :meth:`reduce` *before* a criterion
    combines it nonlinearly (absolute values, products, the inverse of
    IFSO). Since ``H_global v`` is the weighted mean of the ranks' ``H_r v``
    for the same ``v``, and every ``v`` built from reduced quantities is
    identical on all ranks, a criterion built on these primitives computes
    the scores of the global batch. BatchNorm layers converted to SyncBN
    (``sync_bn='torch'``) normalise with the global batch statistics during
    scoring too (through autograd-aware collectives, so double backprop
    works; see :class:`~mmifso.models.utils.DifferentiableSyncBatchNorm`); then
    the scores equal those of one process scoring the whole batch. Every
    rank must call the primitives in the same order (they are collectives);
    the ranks' control flow may only depend on reduced values.

    Args:
        model (nn.Module): A model with ``data_preprocessor``, ``parse_losses``
            and a ``mode='loss'`` forward (an mmengine ``BaseModel``), whose
            consumers are gated by ``mutator``.
        mutator (ChannelMutator): Holds the units to score.
        sync_ranks (bool): Average the primitives over the ranks of a
            distributed run (a no-op in one process). False scores each
            rank's batch on its own (criteria then average per-rank scores).
    """

    def __init__(self,
                 model: nn.Module,
                 mutator: ChannelMutator,
                 sync_ranks: bool = True) -> None:
        self.model = model
        self.mutator = mutator
        self.sync_ranks = sync_ranks
        self._batch_size = 1
        self.units = list(mutator.units)
        #: Conv/linear weights being trained: the ``w`` of the criteria.
        self.weights: List[nn.Parameter] = [
            m.weight for m in model.modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
            and m.weight.requires_grad
        ]
        self._seed = 0

    @property
    def masks(self) -> List[torch.Tensor]:
        return [u.mask for u in self.units]

    def directions(self) -> List[torch.Tensor]:
        """The all-ones mask direction restricted to alive channels."""
        return [u.alive.to(u.mask.dtype) for u in self.units]

    # ------------------------------------------------------------------ #
    # Cross-rank reduction of quantities linear in the samples
    # ------------------------------------------------------------------ #
    @property
    def distributed(self) -> bool:
        """Whether the primitives average over several ranks."""
        return self.sync_ranks and torch_dist.is_available() and \
            torch_dist.is_initialized() and get_world_size() > 1

    def reduce(self,
               tensors: List[torch.Tensor],
               weight: Optional[float] = None) -> List[torch.Tensor]:
        """Weighted mean over the ranks of quantities linear in the samples.

        ``sum_r w_r x_r / sum_r w_r`` with ``w_r`` the rank's batch size (the
        batch last given to :meth:`prepare`), so the mean of per-rank mean
        losses' gradients is the gradient of the global mean loss also when
        the ranks' batches differ in size. One collective for the whole
        list; identity in one process. The results are detached and
        identical on every rank.

        Args:
            tensors (list[Tensor]): Per-rank values (same shapes on all
                ranks); ``None`` entries are kept.
            weight (float, optional): This rank's weight; default its batch
                size.

        Returns:
            list[Tensor]: The means, in the inputs' dtypes and devices.
        """
        tensors = [None if t is None else t.detach() for t in tensors]
        if not self.distributed:
            return tensors
        w = float(self._batch_size if weight is None else weight)
        present = [t for t in tensors if t is not None]
        device = present[0].device if present else torch.device('cpu')
        # float64 so the mean adds no rounding of its own.
        flat = torch.cat([t.reshape(-1).to(device, torch.float64) * w
                          for t in present] +
                         [torch.tensor([w], dtype=torch.float64,
                                       device=device)])
        torch_dist.all_reduce(flat)
        flat = flat[:-1] / flat[-1]
        out, offset = [], 0
        for t in tensors:
            if t is None:
                out.append(None)
                continue
            n = t.numel()
            out.append(flat[offset:offset + n].view_as(t).to(t.device,
                                                              t.dtype))
            offset += n
        return out

    def grad(self, outputs: torch.Tensor, inputs: List[torch.Tensor],
             **kwargs) -> List[torch.Tensor]:
        """Gradient of this rank's ``outputs`` w.r.t. ``inputs``, averaged
        over the ranks (:meth:`reduce`): the gradient for the global batch.

        Args:
            outputs (Tensor): A scalar of this rank's batch (its mean loss,
                or ``g . v`` for a Hessian-vector product).
            inputs (list[Tensor]): Tensors to differentiate w.r.t.
            **kwargs: Passed to :func:`torch.autograd.grad` (e.g.
                ``retain_graph``; ``create_graph`` is not allowed, the result
                is detached).

        Returns:
            list[Tensor]: Detached, zeros for inputs outside the graph.
        """
        if kwargs.get('create_graph'):
            raise ValueError('ScoringContext.grad returns reduced, detached '
                             'gradients; use grad_or_zeros for create_graph')
        return self.reduce(grad_or_zeros(outputs, inputs, **kwargs))

    def hvp(self,
            grads: List[torch.Tensor],
            inputs: List[torch.Tensor],
            vec: List[torch.Tensor],
            retain_graph: bool = True) -> List[torch.Tensor]:
        """Hessian-vector product of the global batch.

        ``d/d inputs (grads . vec)`` on this rank, averaged over the ranks.

        Args:
            grads (list[Tensor]): This rank's gradients taken with
                ``create_graph=True``.
            inputs (list[Tensor]): What to differentiate w.r.t.
            vec (list[Tensor]): ``v``, shaped like ``grads``; it must be the
                same on every rank (e.g. built from reduced quantities).
            retain_graph (bool): Keep the graph for more products.

        Returns:
            list[Tensor]: ``H v``, detached.
        """
        prod = dot(grads, vec)
        if not isinstance(prod, torch.Tensor) or not prod.requires_grad:
            return self.reduce([torch.zeros_like(x) for x in inputs])
        return self.grad(prod, inputs, retain_graph=retain_graph)

    # ------------------------------------------------------------------ #
    @contextlib.contextmanager
    def session(self, masks_require_grad: bool = True) -> Iterator[None]:
        """Scope of one scoring run; restores norm buffers and masks.

        In a distributed run (and :attr:`sync_ranks`), torch SyncBatchNorm
        layers use autograd-aware collectives here, so the scores can take
        second derivatives through global batch statistics. ``nn.Hardsigmoid``
        layers compute the same values with operations that have second
        derivatives (:class:`TwiceDifferentiableHardsigmoid`; torch has none
        for its hard sigmoid kernel).
        """
        norms = [m for m in self.model.modules() if isinstance(m, _NORM_TYPES)]
        hard_sigmoids = [
            m for m in self.model.modules() if type(m) is nn.Hardsigmoid
        ]
        saved = [{k: v.clone()
                  for k, v in m._buffers.items() if v is not None}
                 for m in norms]
        masks = [u.mask.detach().clone() for u in self.units]
        swapped = []
        try:
            if self.distributed:
                for m in norms:
                    if type(m) is nn.SyncBatchNorm:
                        m.__class__ = DifferentiableSyncBatchNorm
                        swapped.append(m)
            for m in hard_sigmoids:
                m.__class__ = TwiceDifferentiableHardsigmoid
            for u in self.units:
                u.mask.requires_grad_(masks_require_grad)
            with torch.autocast('cpu', enabled=False), \
                    torch.autocast('cuda', enabled=False):
                yield
        finally:
            for m in swapped:
                m.__class__ = nn.SyncBatchNorm
            for m in hard_sigmoids:
                m.__class__ = nn.Hardsigmoid
            with torch.no_grad():
                for m, buffers in zip(norms, saved):
                    for k, v in buffers.items():
                        m._buffers[k].copy_(v)
                for u, m in zip(self.units, masks):
                    u.mask.requires_grad_(False)
                    u.mask.copy_(m)

    def prepare(self, data_batch: dict, seed: Optional[int] = None) -> dict:
        """Pre-process a data batch once (the result is reused by passes).

        Args:
            data_batch (dict): A raw batch as the dataloader yields it.
            seed (int, optional): Seed of the batch augmentation and of every
                loss pass on this batch (dropout); drawn from the global RNG
                when not given. Hooks pass a seed derived from the iteration
                so a resumed run scores exactly like an uninterrupted one.
        """
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self._seed = int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            data = self.model.data_preprocessor(data_batch, True)
        if not isinstance(data, dict):
            data = dict(inputs=data[0], data_samples=data[1])
        self._batch_size = batch_size(data)  # this rank's weight in reduce
        return data

    def per_sample_mask_grads(self, data: dict) -> List[torch.Tensor]:
        """Gradients of each sample's loss w.r.t. the unit masks.

        Every unit gets a per-sample gate of ones, shape ``(N, C_u)``; the
        gradient of the mean loss w.r.t. row n is ``dl_n/dm / N``. This is the
        sum over the unit's consumers of activation x gradient over positions
        (Group Fisher's statistic), from one backward pass. The gradients are
        per sample, so they are not reduced over ranks: a criterion summing
        them over samples sets ``rank_reduction = 'sum'``. With global
        (SyncBN) statistics in a distributed run, the gradient reaching a
        sample's gate includes, through the autograd-aware collectives, the
        other ranks' mean losses: the gradient of ``(N / n) x`` the global
        mean loss, so ``n x`` it is exactly ``N x`` the gate gradient one
        process computes for the whole batch of ``N`` (equal per-rank batch
        sizes ``n``).

        Returns:
            list[Tensor]: Per unit, shape ``(N, C_u)``: ``dl_n / dm``.
        """
        n = batch_size(data)
        gates = [
            torch.ones(n, u.num_channels, dtype=u.mask.dtype,
                       device=u.mask.device, requires_grad=True)
            for u in self.units
        ]
        try:
            for u, g in zip(self.units, gates):
                u.sample_gate = g
            loss = self.loss(data)
            grads = grad_or_zeros(loss, gates)
        finally:
            for u in self.units:
                u.sample_gate = None
        return [g.detach() * n for g in grads]

    def loss(self, data: dict) -> torch.Tensor:
        """Training loss (no weight decay) of pre-processed ``data``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            losses = self.model(**data, mode='loss')
        loss, _ = self.model.parse_losses(losses)
        return loss.float()


def batch_size(data: dict) -> int:
    """Number of samples of a pre-processed batch."""
    inputs = data['inputs']
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    return len(inputs)


def grad_or_zeros(outputs: torch.Tensor,
                  inputs: List[torch.Tensor],
                  **kwargs) -> List[torch.Tensor]:
    """:func:`torch.autograd.grad` with zeros for inputs outside the graph."""
    grads = torch.autograd.grad(
        outputs, inputs, allow_unused=True, **kwargs)
    return [
        torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)
    ]


class BaseImportance:
    """A pruning criterion: per-channel scores for every unit.

    Lower scores are pruned first. Data-driven criteria implement
    :meth:`batch_scores`; scores of several batches are averaged. Data-free
    criteria set ``requires_data = False`` and implement
    :meth:`static_scores`.

    In a distributed run :meth:`compute` combines the ranks according to
    :attr:`rank_reduction`:

    * ``'mean'``: the mean over ranks and batches. A criterion that builds
      its batch scores from the reduced primitives of
      :class:`ScoringContext` (:meth:`~ScoringContext.grad`,
      :meth:`~ScoringContext.hvp`, :meth:`~ScoringContext.reduce`) holds the
      global batch's scores on every rank, and the mean leaves them as they
      are; a criterion that does not averages per-rank scores.
    * ``'sum'``: for batch scores that are sums over the rank's samples
      (Group Fisher's per-sample terms): summed over ranks, so a batch's
      score covers the samples of all ranks, then averaged over batches.
    """

    requires_data: bool = True
    #: How :meth:`compute` combines the ranks: ``'mean'`` or ``'sum'``.
    rank_reduction: str = 'mean'
    #: Whether a distributed run scores exactly as one process with the
    #: whole batch (criteria built on the reduced primitives of
    #: :class:`ScoringContext`, data-free criteria). A criterion or variant
    #: whose statistics stay per rank sets it False (class or instance).
    distributed_exact: bool = True
    #: Constructor arguments of small configurations that together take the
    #: criterion's code paths (its variants). The tests that cover every
    #: registered criterion (no side effects, a pruning step in a real
    #: Runner, distributed scoring) build one criterion per entry, so a new
    #: criterion is tested as soon as it is registered.
    example_kwargs: Tuple[Dict, ...] = ({}, )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated batches."""
        self._sum: Optional[List[torch.Tensor]] = None
        self._count = 0

    def batch_scores(self, ctx: ScoringContext,
                     data: dict) -> List[torch.Tensor]:
        """Scores from one pre-processed batch; shape ``(C_u, )`` per unit."""
        raise NotImplementedError

    def static_scores(self, ctx: ScoringContext) -> List[torch.Tensor]:
        """Scores that need no data (weights only)."""
        raise NotImplementedError

    def update(self,
               ctx: ScoringContext,
               data_batch: dict,
               seed: Optional[int] = None) -> None:
        """Score one raw data batch (as yielded by a dataloader).

        Args:
            ctx (ScoringContext): The model to score.
            data_batch (dict): Raw batch.
            seed (int, optional): See :meth:`ScoringContext.prepare`.
        """
        if not self.requires_data:
            return
        with ctx.session():
            data = ctx.prepare(data_batch, seed)
            scores = [s.detach().double() for s in self.batch_scores(ctx, data)]
        if self._sum is None:
            self._sum = scores
        else:
            self._sum = [a + b for a, b in zip(self._sum, scores)]
        self._count += 1

    def compute(self, ctx: ScoringContext) -> List[torch.Tensor]:
        """Mean score over the batches seen on all ranks (see
        :attr:`rank_reduction`).

        Returns:
            list[Tensor]: Per unit, float64, shape ``(num_channels, )``.
        """
        if not self.requires_data:
            with torch.no_grad():
                return [s.detach().double() for s in self.static_scores(ctx)]
        if self._sum is None:
            raise RuntimeError(
                f'{type(self).__name__} has seen no data batch: the scoring '
                'dataloader is empty or update() was never called.')
        flat = torch.cat(self._sum + [torch.tensor([float(self._count)],
                                                   dtype=torch.float64,
                                                   device=self._sum[0].device)])
        all_reduce(flat, op='sum')
        total = flat[-1]
        if self.rank_reduction == 'sum':
            # Sums over samples add up over ranks; average over the batches
            # of one rank (every rank scores as many batches).
            total = total / get_world_size()
        out, offset = [], 0
        for s in self._sum:
            out.append((flat[offset:offset + len(s)] / total).cpu())
            offset += len(s)
        return out

    def score(self,
              ctx: ScoringContext,
              data_batches: Iterable[dict] = (),
              seed: Optional[int] = None) -> List[torch.Tensor]:
        """Reset, score ``data_batches`` and return the mean scores.

        Args:
            ctx (ScoringContext): The model to score.
            data_batches (Iterable[dict]): Raw batches.
            seed (int, optional): Batch ``b`` is prepared with seed
                ``seed + b`` (see :meth:`ScoringContext.prepare`).

        Returns:
            list[Tensor]: Per unit, shape ``(num_channels, )``.
        """
        self.reset()
        for b, batch in enumerate(data_batches):
            self.update(ctx, batch, None if seed is None else seed + b)
        return self.compute(ctx)

    # ------------------------------------------------------------------ #
    # Hooks a criterion may override; callers never check for subclasses.
    # ------------------------------------------------------------------ #
    #: Whether :meth:`after_prune` changes weights (then a distributed
    #: pruning step broadcasts rank 0's parameters afterwards).
    updates_weights: bool = False

    def bind_optimizer(self, optimizer, ctx: ScoringContext) -> None:
        """Take what the criterion needs from the training optimizer (e.g.
        IFSO's ``lam`` from the weight decay). Called once before scoring
        by the hooks, the Python API and the tools; default: nothing.

        Args:
            optimizer: A :class:`torch.optim.Optimizer` or an mmengine
                ``OptimWrapper``.
            ctx (ScoringContext): The model to be scored.
        """

    def after_prune(self, ctx: ScoringContext,
                    removed: List) -> None:
        """Called after the channels ``removed`` (``(unit, channel)``
        pairs) were pruned, e.g. for WoodFisher's OBS weight update.
        Default: nothing."""

    def state_dict(self) -> Dict:
        return dict(sum=self._sum, count=self._count)

    def load_state_dict(self, state: Dict) -> None:
        self._sum, self._count = state['sum'], state['count']


def registered_criteria() -> List[str]:
    """Names (without scope) of every criterion registered in mmifso's
    ``TASK_UTILS``, sorted."""
    return sorted(k for k, cls in TASK_UTILS.module_dict.items()
                  if isinstance(cls, type) and issubclass(cls, BaseImportance))


def weight_decay_of(optimizer, params: List[torch.Tensor]) -> float:
    """The weight decay the optimizer applies to ``params``.

    Only the parameter groups that hold ``params`` count (with mmengine's
    ``paramwise_cfg`` the first group may hold a bias or a norm layer with
    another decay).

    Args:
        optimizer: A :class:`torch.optim.Optimizer` or an mmengine
            ``OptimWrapper`` around one.
        params (list[Tensor]): The parameters whose decay is wanted.

    Returns:
        float: Their common weight decay.

    Raises:
        ValueError: No group holds them, or the groups disagree.
    """
    optimizer = getattr(optimizer, 'optimizer', optimizer)
    wanted = {id(p) for p in params}
    decays = {
        float(group.get('weight_decay', 0) or 0)
        for group in optimizer.param_groups
        if any(id(p) in wanted for p in group['params'])
    }
    if not decays:
        raise ValueError('none of the scored conv/linear weights is in the '
                         "optimizer's parameter groups")
    if len(decays) > 1:
        raise ValueError(
            'the optimizer applies different weight decays '
            f'{sorted(decays)} to the scored conv/linear weights '
            '(paramwise_cfg), so lambda is ambiguous')
    return decays.pop()
