"""Hooks and a sampler for the distributed tests (imported by their
configs through ``custom_imports``)."""
import math
import os.path as osp
from typing import Iterator, List, Optional

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import DATA_SAMPLERS, HOOKS
from torch.utils.data import Sampler


@HOOKS.register_module()
class MaskProbeHook(Hook):
    """Record every rank's masks after every iteration and, with
    ``record_scores``, the criterion's scores at every pruning step.

    Args:
        record_scores (bool): Wrap the PruningHook criterion's ``compute``
            and save what it returns (the scores selection sees).
    """

    priority = 'LOWEST'  # after the pruning hook

    def __init__(self, record_scores: bool = False) -> None:
        self.history: List[torch.Tensor] = []
        self.scores: List[torch.Tensor] = []
        self.record_scores = record_scores

    def before_train(self, runner) -> None:
        if not self.record_scores:
            return
        from mmifso.engine.hooks import PruningHook
        hook = next(h for h in runner.hooks if isinstance(h, PruningHook))
        compute = hook.importance.compute

        def recording(ctx):
            scores = compute(ctx)
            self.scores.append(torch.cat([s.clone() for s in scores]))
            return scores

        hook.importance.compute = recording

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        model = runner.model.module if hasattr(runner.model,
                                               'module') else runner.model
        self.history.append(
            torch.cat([u.mask.clone() for u in model.mutator.units]))

    def after_train(self, runner):
        from mmifso.engine.hooks import PruningHook
        rank = get_rank()
        hook = next(h for h in runner.hooks if isinstance(h, PruningHook))
        # The runner's seed (per rank with diff_rank_seed) and the base of
        # the per-batch scoring seeds (rank 0's).
        torch.save(dict(runner=runner.seed, scoring=hook._seed_base),
                   osp.join(runner.work_dir, f'seeds_rank{rank}.pt'))
        torch.save(
            torch.stack(self.history),
            osp.join(runner.work_dir, f'masks_rank{rank}.pt'))
        if self.record_scores:
            torch.save(self.scores,
                       osp.join(runner.work_dir, f'scores_rank{rank}.pt'))


@DATA_SAMPLERS.register_module()
class RankUnionSampler(Sampler):
    """One process seeing, batch by batch, the union of what the ranks of a
    ``world_size`` run with mmengine's ``DefaultSampler`` see.

    ``DefaultSampler`` shuffles with ``seed + epoch``, pads the indices to a
    multiple of the world size and gives rank ``r`` every ``world_size``-th
    index from ``r``. With a per-rank batch of ``rank_batch_size``, batch
    ``b`` of the distributed run is the ranks' slices ``[b * n, (b + 1) *
    n)``; this sampler yields them one after the other, so a single process
    with ``batch_size = world_size * rank_batch_size`` gets the same samples
    in every batch (rank 0's first).

    Args:
        dataset: The dataset.
        world_size (int): Ranks of the run to reproduce.
        rank_batch_size (int): Their per-rank batch size.
        shuffle (bool): As ``DefaultSampler``.
        seed (int, optional): As ``DefaultSampler`` (the runner passes its
            seed).
    """

    def __init__(self,
                 dataset,
                 world_size: int,
                 rank_batch_size: int,
                 shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        self.dataset = dataset
        self.world_size = world_size
        self.rank_batch_size = rank_batch_size
        self.shuffle = shuffle
        self.seed = 0 if seed is None else seed
        self.epoch = 0
        self.num_samples = math.ceil(len(dataset) / world_size)
        self.total_size = self.num_samples * world_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.dataset), generator=g).tolist()
        else:
            indices = list(range(len(self.dataset)))
        indices = (indices * int(self.total_size / len(indices) +
                                 1))[:self.total_size]
        per_rank = [indices[r:self.total_size:self.world_size]
                    for r in range(self.world_size)]
        n = self.rank_batch_size
        for start in range(0, self.num_samples, n):
            for r in range(self.world_size):
                yield from per_rank[r][start:start + n]

    def __len__(self) -> int:
        return self.total_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
