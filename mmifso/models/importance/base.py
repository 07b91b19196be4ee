"""The criterion interface and the safe loss evaluation it runs on."""
import contextlib
from typing import Dict, Iterable, Iterator, List, Optional

import torch
import torch.nn as nn
from mmengine.dist import all_reduce

from ..mutators import ChannelMutator

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

    Args:
        model (nn.Module): A model with ``data_preprocessor``, ``parse_losses``
            and a ``mode='loss'`` forward (an mmengine ``BaseModel``), whose
            consumers are gated by ``mutator``.
        mutator (ChannelMutator): Holds the units to score.
    """

    def __init__(self, model: nn.Module, mutator: ChannelMutator) -> None:
        self.model = model
        self.mutator = mutator
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

    @contextlib.contextmanager
    def session(self, masks_require_grad: bool = True) -> Iterator[None]:
        """Scope of one scoring run; restores norm buffers and masks."""
        norms = [m for m in self.model.modules() if isinstance(m, _NORM_TYPES)]
        saved = [{k: v.clone()
                  for k, v in m._buffers.items() if v is not None}
                 for m in norms]
        masks = [u.mask.detach().clone() for u in self.units]
        try:
            for u in self.units:
                u.mask.requires_grad_(masks_require_grad)
            with torch.autocast('cpu', enabled=False), \
                    torch.autocast('cuda', enabled=False):
                yield
        finally:
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
        if isinstance(data, dict):
            return data
        return dict(inputs=data[0], data_samples=data[1])

    def per_sample_mask_grads(self, data: dict) -> List[torch.Tensor]:
        """Gradients of each sample's loss w.r.t. the unit masks.

        Every unit gets a per-sample gate of ones, shape ``(N, C_u)``; the
        gradient of the mean loss w.r.t. row n is ``dl_n/dm / N``. This is the
        sum over the unit's consumers of activation x gradient over positions
        (Group Fisher's statistic), from one backward pass.

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


def dot(xs: Iterable[torch.Tensor], ys: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of elementwise products over lists of tensors."""
    return sum((x * y).sum() for x, y in zip(xs, ys))


class BaseImportance:
    """A pruning criterion: per-channel scores for every unit.

    Lower scores are pruned first. Data-driven criteria implement
    :meth:`batch_scores`; scores of several batches are averaged (and summed
    over ranks in distributed runs). Data-free criteria set
    ``requires_data = False`` and implement :meth:`static_scores`.
    """

    requires_data: bool = True

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
        """Mean score over the batches seen on all ranks.

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
        out, offset = [], 0
        for s in self._sum:
            out.append((flat[offset:offset + len(s)] / total).cpu())
            offset += len(s)
        return out

    def score(self, ctx: ScoringContext,
              data_batches: Iterable[dict] = ()) -> List[torch.Tensor]:
        """Reset, score ``data_batches`` and return the mean scores."""
        self.reset()
        for batch in data_batches:
            self.update(ctx, batch)
        return self.compute(ctx)

    def state_dict(self) -> Dict:
        return dict(sum=self._sum, count=self._count)

    def load_state_dict(self, state: Dict) -> None:
        self._sum, self._count = state['sum'], state['count']
