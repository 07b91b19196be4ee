r"""How well do pruning criteria predict the loss change of removing a channel?

Usage::

    python tools/analysis/loss_change_fidelity.py CONFIG CHECKPOINT \
        [--criteria NAME[:key=value,...] ...] [--out FILE.json] \
        [--num-samples 100] [--retrain-steps 10] [--lr LR] \
        [--eval-batches 4] [--score-batches 4] [--topk K] [--seed 0]

For a random sample of channels of a trained model (``--num-samples``,
uniform over the alive channels of all prunable units; whole blocks where a
unit's channels are tied by GroupNorm groups or grouped convolutions) it
measures the **true loss change**::

    delta_c = L(retrain_R(w0, mask without c)) - L(retrain_R(w0, all masks))

``retrain_R`` runs ``R = --retrain-steps`` training steps (train mode,
``model.train_step`` with the optimizer of the config's ``optim_wrapper``
built afresh, constant learning rate ``--lr``) from the checkpoint weights
``w0``; the removed channel's mask stays zero throughout (the mutator's
gates, as during pruning). Both runs see the same ``R`` batches in the same
order with the same random seed, so the mask is their only difference. ``L``
is the mean training loss (the model's ``loss`` mode, without weight decay)
over a fixed set of ``--eval-batches`` training batches, measured in **eval
mode** (BatchNorm uses its running statistics), so it is deterministic. With
``R = 0`` the delta is the plain masked-minus-unmasked loss; that value is
recorded for every sample as well (``delta_r0``).

Every criterion (registry names of ``mmifso.registry.TASK_UTILS``; default
all registered criteria with their default options) is scored on the same
``--score-batches`` training batches (fixed seeds) through its normal
interface (``ScoringContext``, ``update`` per batch, ``compute``), in train
mode, exactly as the pruning hooks do. The prediction of a sample is the
score the global selection ranks by (``score / cost^p``, ``--cost`` and
``--cost-power``, default ``p = 0``: the criterion alone; the mean over the
block for tied channels). Lower means "pruned first", i.e. a smaller
predicted loss change; signed scores (GraSP) are kept signed, as selection
uses them. Per criterion the JSON reports Spearman and Kendall rank
correlations between prediction and true delta (with p-values and a 95 %
interval for Spearman), and the overlap of the ``k`` samples the criterion
would prune first with the ``k`` of least true loss change (random choice
overlaps ``k / n`` on average). A scatter plot per criterion is written next
to the JSON.

``CONFIG`` is either a plain model config (e.g. an mmpretrain classifier;
it is wrapped in ``mmifso.PruningAlgorithm`` with a demo input of the
training batches' shape) or a pruning config (``mmifso.PruningAlgorithm``);
``CHECKPOINT`` a plain or masked checkpoint (channels already removed are
not sampled).
"""
import argparse
import ast
import copy
import json
import math
import os
import os.path as osp
import re
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

#: (unit index, channels removed together) -- one sampled removal.
Block = Tuple[int, List[int]]


# ---------------------------------------------------------------------- #
# Criteria
# ---------------------------------------------------------------------- #
def registered_criteria() -> List[str]:
    """Names of every criterion registered in ``mmifso`` ``TASK_UTILS``."""
    import mmifso  # noqa: F401  (registers the criteria)
    from mmifso.models.importance import registered_criteria as registered
    return registered()


def _value(text: str):
    """A Python literal, or the text itself (``hessian=exact``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_criteria(specs: Optional[Sequence[str]]) -> List[Tuple[str, dict]]:
    """Criterion configs from ``NAME`` or ``NAME:key=value,key=value``.

    Args:
        specs (Sequence[str], optional): Registry names (with or without the
            ``mmifso.`` scope) and options; None or empty: every registered
            criterion with its defaults.

    Returns:
        list[tuple[str, dict]]: ``(label, config)``; the label is the spec
        without the scope (unique, used in the JSON and plot names).

    Raises:
        KeyError: a name is not a registered criterion; the message lists
            the valid names.
        ValueError: malformed options or a repeated label.
    """
    from mmifso.registry import TASK_UTILS
    valid = registered_criteria()
    if not specs:
        specs = valid
    out, labels = [], set()
    for spec in specs:
        name, _, opts = spec.partition(':')
        short = name.split('.')[-1]
        if short not in valid or TASK_UTILS.get(name) is None:
            raise KeyError(
                f'unknown criterion {name!r}; the registered criteria are '
                f'{", ".join(valid)} (with or without the "mmifso." prefix)')
        cfg = dict(type=f'mmifso.{short}')
        for item in filter(None, opts.split(',')):
            key, eq, val = item.partition('=')
            if not eq or not key.strip():
                raise ValueError(f'criterion option {item!r} of {spec!r} is '
                                 'not key=value')
            cfg[key.strip()] = _value(val.strip())
        label = short + (f':{opts}' if opts else '')
        if label in labels:
            raise ValueError(f'criterion {label!r} is given twice')
        labels.add(label)
        out.append((label, cfg))
    return out


def build_importance(cfg: dict, weight_decay: float):
    """Build a criterion; IFSO's ``lam=None`` takes the weight decay, as
    :class:`mmifso.PruningHook` does."""
    from mmifso.apis.pruning import build_criterion
    from mmifso.models.importance import lam_from_weight_decay
    imp = build_criterion(cfg)
    lam_from_weight_decay(imp, weight_decay, 'give lam=... in --criteria')
    return imp


def score_criterion(algo, imp, batches: Sequence[dict],
                    seed: int) -> Tuple[List[torch.Tensor], float]:
    """Scores of ``imp`` on ``batches`` (train mode, as in the hooks).

    Args:
        algo (PruningAlgorithm): The gated model.
        imp (BaseImportance): A fresh criterion.
        batches (Sequence[dict]): Raw scoring batches.
        seed (int): Batch ``b`` is scored with seed ``seed + b``.

    Returns:
        tuple: Per-unit scores (float64, ``(num_channels, )``) and the
        scoring time in seconds.
    """
    from mmifso.models.importance import ScoringContext
    algo.train()
    ctx = ScoringContext(algo.architecture, algo.mutator)
    start = time.perf_counter()
    scores = imp.score(ctx, batches, seed)
    return scores, time.perf_counter() - start


def predictions(mutator, scores: List[torch.Tensor], blocks: Sequence[Block],
                cost: str = 'none', cost_power: float = 0.0) -> List[float]:
    """The value global selection ranks each sampled block by.

    ``score / cost^p`` (:func:`~mmifso.models.mutators.normalised_scores`),
    averaged over the block's channels like
    :func:`~mmifso.models.mutators.select_channels` does for tied channels.

    Returns:
        list[float]: One prediction per block (lower = pruned first).
    """
    from mmifso.models.mutators.selection import normalised_scores
    norm = normalised_scores(mutator, scores, cost, cost_power)
    return [float(norm[u][channels].mean()) for u, channels in blocks]


# ---------------------------------------------------------------------- #
# Sampling and the true loss change
# ---------------------------------------------------------------------- #
def removable_blocks(mutator) -> List[Block]:
    """Every block that can be removed alone: alive, and the unit keeps
    ``min_channels``."""
    out = []
    for u, unit in enumerate(mutator.units):
        blocks = unit.blocks or [[c] for c in range(unit.num_channels)]
        alive = unit.alive.cpu()
        for block in blocks:
            if bool(alive[block].all()) and \
                    unit.num_alive - len(block) >= unit.min_channels:
                out.append((u, list(block)))
    return out


def sample_blocks(mutator, num: int, seed: int) -> List[Block]:
    """``num`` removable blocks drawn uniformly without replacement (all of
    them when there are fewer), sorted by unit and channel."""
    blocks = removable_blocks(mutator)
    if not blocks:
        raise RuntimeError('no channel can be removed: every unit is at '
                           'min_channels')
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(blocks), generator=g)[:num].sort().values
    return [blocks[i] for i in idx.tolist()]


def seed_everything(seed: int) -> None:
    """Seed torch and numpy (mmcv transforms draw from numpy)."""
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class LossChangeMeter:
    """Retrains copies of a gated model and measures their loss.

    Args:
        algo (PruningAlgorithm): The gated model at the weights ``w0``.
        optim_cfg (dict): The config's ``optim_wrapper``; its learning rate
            is replaced by ``lr``.
        train_batches (Sequence[dict]): Raw batches of the ``R`` steps, in
            order.
        eval_batches (Sequence[dict]): Raw batches of the loss measurement.
        lr (float): Learning rate of the retraining.
        seed (int): Seed set before every retraining run.
    """

    def __init__(self, algo, optim_cfg: dict, train_batches: Sequence[dict],
                 eval_batches: Sequence[dict], lr: float, seed: int) -> None:
        self.algo = algo
        self.optim_cfg = copy.deepcopy(optim_cfg)
        self.optim_cfg.setdefault('optimizer', {})['lr'] = lr
        self.train_batches = list(train_batches)
        self.seed = seed
        # The weights, BN statistics and masks every run starts from.
        self.state = copy.deepcopy(algo.state_dict())
        # Pre-processed once: the measurement is deterministic (no
        # augmentation in eval mode of the preprocessor).
        with torch.no_grad():
            self.eval_data = [algo.data_preprocessor(b, False)
                              for b in eval_batches]

    def eval_loss(self) -> float:
        """Mean loss per sample over the evaluation batches, eval mode."""
        from mmifso.models.importance.base import batch_size
        self.algo.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for data in self.eval_data:
                losses = self.algo(**data, mode='loss')
                loss, _ = self.algo.parse_losses(losses)
                n = batch_size(data)
                total += float(loss) * n
                count += n
        return total / count

    def reset(self, block: Optional[Block] = None) -> None:
        """Back to ``w0`` (weights, BN statistics, masks), ``block`` masked."""
        self.algo.load_state_dict(self.state)
        if block is not None:
            self.algo.mutator.units[block[0]].prune(block[1])

    def losses(self, block: Optional[Block],
               steps: int) -> Tuple[float, float]:
        """Loss with ``block`` masked, before and after ``steps`` steps.

        Returns:
            tuple[float, float]: ``(L at w0, L after retraining)``.
        """
        from mmengine.optim import build_optim_wrapper
        self.reset(block)
        before = self.eval_loss()
        if steps == 0:
            return before, before
        optim = build_optim_wrapper(self.algo, copy.deepcopy(self.optim_cfg))
        seed_everything(self.seed)
        self.algo.train()
        for i in range(steps):
            batch = self.train_batches[i % len(self.train_batches)]
            self.algo.train_step(batch, optim)
        return before, self.eval_loss()


# ---------------------------------------------------------------------- #
# Metrics
# ---------------------------------------------------------------------- #
def _finite(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def topk_overlap(true: Sequence[float], pred: Sequence[float],
                 k: int) -> float:
    """``|lowest k of pred & lowest k of true| / k`` (stable order: ties
    keep the sample order)."""
    lo_true = set(np.argsort(np.asarray(true), kind='stable')[:k].tolist())
    lo_pred = set(np.argsort(np.asarray(pred), kind='stable')[:k].tolist())
    return len(lo_true & lo_pred) / k


def rank_metrics(true: Sequence[float], pred: Sequence[float],
                 k: int) -> Dict:
    """Spearman, Kendall (tau-b) and top-k overlap of ``pred`` vs ``true``.

    The 95 % interval of Spearman's rho uses Fisher's z with the standard
    error ``1.06 / sqrt(n - 3)`` (Fieller, Hartley & Pearson, 1957). NaN
    predictions (a failing criterion) give None throughout.
    """
    from scipy import stats
    true = np.asarray(true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    n = len(true)
    out = dict(num_samples=n, k=k, spearman=None, spearman_p=None,
               spearman_ci95=None, kendall=None, kendall_p=None,
               topk_overlap=None, topk_overlap_random=k / n if n else None)
    if n < 2 or not np.isfinite(pred).all() or np.ptp(pred) == 0:
        return out
    rho, p_rho = stats.spearmanr(pred, true)
    tau, p_tau = stats.kendalltau(pred, true)
    out.update(spearman=_finite(rho), spearman_p=_finite(p_rho),
               kendall=_finite(tau), kendall_p=_finite(p_tau),
               topk_overlap=topk_overlap(true, pred, k))
    if n > 3 and out['spearman'] is not None and abs(rho) < 1:
        z, se = math.atanh(rho), 1.06 / math.sqrt(n - 3)
        out['spearman_ci95'] = [math.tanh(z - 1.96 * se),
                                math.tanh(z + 1.96 * se)]
    return out


def plot_scatter(true: Sequence[float], pred: Sequence[float], label: str,
                 metrics: Dict, steps: int, path: str) -> None:
    """True loss change (x) against the prediction (y), one point a sample."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.scatter(true, pred, s=10, alpha=0.7, color='#2e86de')
    ax.axvline(0, color='#bbbbbb', lw=0.8)
    # A few channels (the stem, trunk) change the loss by orders of
    # magnitude more than the rest: symmetric log axes keep both readable.
    for values, set_scale in ((true, ax.set_xscale), (pred, ax.set_yscale)):
        mags = np.abs(np.asarray(values, dtype=np.float64))
        mags = mags[np.isfinite(mags) & (mags > 0)]
        if len(mags) and mags.max() > 100 * np.percentile(mags, 10):
            set_scale('symlog', linthresh=float(np.percentile(mags, 10)))
    ax.set_xlabel(f'true loss change after {steps} retraining steps')
    ax.set_ylabel('prediction (lower = pruned first)')
    fmt = (lambda v: 'n/a' if v is None else f'{v:.2f}')
    ax.set_title(f'{label}\nSpearman {fmt(metrics["spearman"])}, Kendall '
                 f'{fmt(metrics["kendall"])}, top-{metrics["k"]} '
                 f'{fmt(metrics["topk_overlap"])}', fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------- #
# Model and data from the config
# ---------------------------------------------------------------------- #
def draw_batches(cfg: Config, num: int, seed: int) -> List[dict]:
    """``num`` consecutive raw batches of the config's training dataloader
    (shuffled with ``seed``, epochs chained)."""
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg['num_workers'] = 0
    loader_cfg['persistent_workers'] = False
    seed_everything(seed)
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    if len(loader) == 0:
        raise RuntimeError('the training dataloader yields no batch')
    out, epoch = [], 0
    while len(out) < num:
        if hasattr(loader.sampler, 'set_epoch'):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            out.append(batch)
            if len(out) == num:
                break
        epoch += 1
    return out


def build_algorithm(cfg: Config, checkpoint: str, batch: dict):
    """The gated model of ``cfg`` with the checkpoint's weights (and masks).

    A plain model config is wrapped in ``mmifso.PruningAlgorithm`` with a
    demo input of the shape of ``batch`` after pre-processing (as the
    pruning configs do with their ``mutator.demo_input``).
    """
    from mmengine.registry import init_default_scope

    from mmifso.apis.checks import (check_checkpoint_matches_config,
                                    model_kind)
    from mmifso.registry import MODELS
    from mmifso.utils import load_checkpoint_file
    init_default_scope(cfg.get('default_scope', None) or 'mmengine')
    check_checkpoint_matches_config(cfg, checkpoint)
    kind = model_kind(cfg)
    dp = cfg.get('data_preprocessor', None)
    if kind == 'masked':
        model_cfg = copy.deepcopy(cfg.model)
        if dp is not None:
            model_cfg.setdefault('data_preprocessor', dp)
    elif kind == 'plain':
        # Shape of the pre-processed batch, from the bare architecture.
        from mmifso.models.algorithms.pruning_algorithm import \
            build_architecture
        arch = build_architecture(cfg.model, dp)
        with torch.no_grad():
            inputs = arch.data_preprocessor(copy.deepcopy(batch),
                                            False)['inputs']
        shape = (1, ) + tuple(
            (inputs if isinstance(inputs, torch.Tensor) else inputs[0]).shape
            [-3:])
        demo = 'mmifso.DetDemoInput' if cfg.get(
            'default_scope', None) == 'mmdet' else 'mmifso.DemoInput'
        model_cfg = dict(
            type='mmifso.PruningAlgorithm',
            architecture=arch,
            mutator=dict(
                type='mmifso.ChannelMutator',
                demo_input=dict(type=demo, input_shape=shape)))
    else:
        raise ValueError(
            f'{cfg.filename}: an exported (mmifso.PrunedModel) config has '
            'no channel masks; give the plain or the pruning config')
    algo = MODELS.build(model_cfg)
    ckpt = load_checkpoint_file(checkpoint)
    algo.load_state_dict(ckpt.get('state_dict', ckpt), strict=True)
    return algo


# ---------------------------------------------------------------------- #
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Rank correlation of pruning criteria with the true '
        '(retrained) loss change of removing a channel')
    parser.add_argument('config', help='plain model or pruning config')
    parser.add_argument('checkpoint', help='trained (or masked) checkpoint')
    parser.add_argument(
        '--criteria',
        nargs='+',
        help='registry names, optionally with options: NAME or '
        'NAME:key=value,key=value (default: every registered criterion)')
    parser.add_argument(
        '--out', default='work_dirs/fidelity/fidelity.json',
        help='JSON file; the scatter plots go next to it')
    parser.add_argument('--num-samples', type=int, default=100,
                        help='channels (blocks) sampled')
    parser.add_argument('--retrain-steps', type=int, default=10,
                        help='R: training steps after masking (0: none)')
    parser.add_argument(
        '--lr', type=float, default=None,
        help='learning rate of the retraining (default: 0.1 x the '
        "config's optimizer lr)")
    parser.add_argument('--eval-batches', type=int, default=4,
                        help='training batches the loss is measured on')
    parser.add_argument('--score-batches', type=int, default=4,
                        help='training batches every criterion scores')
    parser.add_argument(
        '--topk', type=int, default=None,
        help='k of the top-k overlap (default: 10%% of the samples)')
    parser.add_argument('--cost', default='none',
                        choices=['none', 'acts', 'flops'],
                        help='cost of score / cost^p (selection)')
    parser.add_argument('--cost-power', type=float, default=0.0,
                        help='p of score / cost^p (0: the criterion alone)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the sample, the data and retraining')
    args = parser.parse_args(argv)
    for name in ('num_samples', 'eval_batches', 'score_batches'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.retrain_steps < 0:
        parser.error('--retrain-steps must be >= 0')
    if args.lr is not None and args.lr <= 0:
        parser.error('--lr must be > 0')
    if args.topk is not None and args.topk < 1:
        parser.error('--topk must be >= 1')
    return args


def _file_label(label: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')


def run(args: argparse.Namespace) -> Dict:
    """Measure and write the JSON and the plots; returns the JSON dict."""
    from mmengine.utils import ProgressBar
    start = time.time()
    load_start = os.getloadavg()
    criteria = parse_criteria(args.criteria)  # fail before any work
    cfg = Config.fromfile(args.config)
    import mmifso  # noqa: F401

    # One seeded stream of training batches: scoring, then evaluation, then
    # the R retraining steps (disjoint unless the data set is tiny).
    n_train = max(args.retrain_steps, 1)
    batches = draw_batches(
        cfg, args.score_batches + args.eval_batches + n_train, args.seed)
    score_b = batches[:args.score_batches]
    eval_b = batches[args.score_batches:args.score_batches +
                     args.eval_batches]
    train_b = batches[args.score_batches + args.eval_batches:]

    algo = build_algorithm(cfg, args.checkpoint, batches[0])
    mutator = algo.mutator
    optimizer = cfg.optim_wrapper.get('optimizer', {})
    lr = args.lr if args.lr is not None else 0.1 * float(optimizer['lr'])
    weight_decay = float(optimizer.get('weight_decay', 0) or 0)
    blocks = sample_blocks(mutator, args.num_samples, args.seed)
    n = len(blocks)
    k = args.topk or max(1, round(0.1 * n))
    if k > n:
        raise ValueError(f'--topk {k} exceeds the {n} samples')

    # Criteria first: scoring restores BN buffers and masks itself.
    scores, seconds = {}, {}
    for label, ccfg in criteria:
        imp = build_importance(ccfg, weight_decay)
        scores[label], seconds[label] = score_criterion(
            algo, imp, score_b, args.seed)
        print_log(f'[fidelity] {label}: scored in {seconds[label]:.1f} s',
                  logger='current')

    meter = LossChangeMeter(algo, cfg.optim_wrapper, train_b, eval_b, lr,
                            args.seed)
    print_log(
        f'[fidelity] {n} samples x ({args.retrain_steps} steps + '
        f'{args.eval_batches} eval batches), lr {lr:g}', logger='current')
    base_before, base_after = meter.losses(None, args.retrain_steps)
    samples = []
    bar = ProgressBar(n)
    for u, channels in blocks:
        before, after = meter.losses((u, channels), args.retrain_steps)
        samples.append(
            dict(unit=mutator.units[u].name, unit_index=u, channels=channels,
                 true_delta=after - base_after,
                 delta_r0=before - base_before, loss=after, loss_r0=before))
        bar.update()
    sys.stdout.write('\n')
    meter.reset()  # leave the model at w0

    true = [s['true_delta'] for s in samples]
    true_r0 = [s['delta_r0'] for s in samples]
    out_dir = osp.dirname(osp.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    stem = osp.splitext(osp.basename(args.out))[0]
    seeds = dict(sample=args.seed, data=args.seed, retrain=args.seed,
                 scoring=list(range(args.seed,
                                    args.seed + args.score_batches)))
    results = {}
    for label, ccfg in criteria:
        pred = predictions(mutator, scores[label], blocks, args.cost,
                           args.cost_power)
        for s, p in zip(samples, pred):
            s.setdefault('predictions', {})[label] = p
        metrics = rank_metrics(true, pred, k)
        r0 = rank_metrics(true_r0, pred, k)
        plot = f'{stem}_{_file_label(label)}.png'
        plot_scatter(true, pred, label, metrics, args.retrain_steps,
                     osp.join(out_dir, plot))
        results[label] = dict(
            config=ccfg, **metrics, retrain_steps=args.retrain_steps,
            seeds=seeds, score_seconds=round(seconds[label], 3),
            spearman_r0=r0['spearman'], kendall_r0=r0['kendall'],
            topk_overlap_r0=r0['topk_overlap'], plot=plot)
    result = dict(
        config=args.config,
        checkpoint=args.checkpoint,
        command='python tools/analysis/loss_change_fidelity.py ' +
        ' '.join(sys.argv[1:]) if sys.argv[0].endswith(
            'loss_change_fidelity.py') else None,
        num_samples=n,
        num_removable=len(removable_blocks(mutator)),
        retrain_steps=args.retrain_steps,
        k=k,
        lr=lr,
        eval_batches=args.eval_batches,
        eval_samples=sum(len(b['inputs']) for b in eval_b),
        score_batches=args.score_batches,
        cost=args.cost,
        cost_power=args.cost_power,
        seeds=seeds,
        baseline_loss=dict(before_retrain=base_before,
                           after_retrain=base_after),
        criteria=results,
        samples=samples,
        seconds=round(time.time() - start, 1),
        loadavg=dict(start=list(load_start), end=list(os.getloadavg())),
        torch_threads=torch.get_num_threads())
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    fmt = (lambda v: '  n/a' if v is None else f'{v:5.2f}')
    rows = [f'{"criterion":<40} spearman kendall top-{k}  (R=0: spearman) '
            'score s']
    for label, r in results.items():
        rows.append(f'{label:<40} {fmt(r["spearman"]):>8} '
                    f'{fmt(r["kendall"]):>7} {fmt(r["topk_overlap"]):>6}  '
                    f'{fmt(r["spearman_r0"]):>16} {r["score_seconds"]:7.1f}')
    print_log(
        '\n' + '\n'.join(rows) + f'\n{n} samples, R={args.retrain_steps}, '
        f'top-k random overlap {k / n:.2f}; {result["seconds"]} s; wrote '
        f'{args.out}', logger='current')
    return result


def main(argv=None) -> Dict:
    return run(parse_args(argv))


if __name__ == '__main__':
    main()
