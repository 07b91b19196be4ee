r"""How well do pruning criteria predict the loss change of removing a channel?

Usage::

    python tools/analysis/loss_change_fidelity.py CONFIG CHECKPOINT \
        [--criteria NAME[:key=value,...] ...] [--out FILE.json] \
        [--num-samples 100] [--retrain-steps 10] [--lr LR] \
        [--eval-batches 4] [--score-batches 4] [--topk K] [--seed 0]
    python tools/analysis/loss_change_fidelity.py CONFIG CHECKPOINT \
        --retrain converged [--converge-start] [--fit-samples 512] \
        [--grad-tol 1e-6] [--max-iter 3000] [--mask-steps 1] [--lam LAM] ...

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

**Converged mode** (``--retrain converged``), the regime of IFSO's theory:
the truth is the change of the *regularised* objective ``J(w, m) = L(w, m)
+ lam/2 ||w||^2`` at its retrained optimum, ``J(w*(m'), m') - J(w*(1),
1)`` (``spearman``), and of its data-loss part (``spearman_data``). ``L`` is
the mean loss over one fixed batch of ``--fit-samples`` training samples,
``w`` the conv/linear weights the criteria score (the ``w`` of IFSO's
``H_ww``; BatchNorm affine parameters and biases stay fixed), ``lam``
IFSO's (the weight decay of those weights in the config's optimizer, or
``--lam``). BatchNorm runs in **eval mode** (running statistics): in train
mode it makes the preceding conv weights scale-invariant, so ``lam/2
||w||^2`` has no minimiser. Everything is float64; each retrain is
full-batch, from ``w0`` until ``||grad_w J||_2 <= --grad-tol``, by L-BFGS
with a strong-Wolfe line search (``--optimizer lbfgs``, the default) or a
trust-region Newton-Krylov method on exact Hessian-vector products
(``--optimizer newton``), each finished by Newton polishing, and every retrain's final gradient norm is
in the JSON. A run where any retrain missed the tolerance is refused
(nothing written). ``w0`` must be a converged point of ``J``: pass
``--converge-start`` to converge the unmasked model first (criteria are
then scored there, on the same batch, in eval mode); without it a checkpoint
whose ``||grad J||`` exceeds the tolerance is refused, saying by how much.
``--retrain-params REGEX`` retrains only the conv/linear weights whose
names (in the architecture, e.g. ``head.fc.weight``) match; every other
parameter is frozen, so the criteria's ``w`` (and IFSO's ``H_ww``) is the
same subset. With the classifier alone, ``J`` is strictly convex in ``w``
for every mask (logistic regression on the masked features plus
``lam/2 ||w||^2``): ``w*(m)`` is unique and reached in seconds, the regime
where the implicit-function argument holds exactly.
``--mask-steps S`` lowers the removed channels' mask ``1 -> 0`` in ``S``
steps, re-converging after each (following the locally continued optimum
rather than jumping). IFSO variants whose Neumann series diverges are
reported as ``diverged`` with the error; CG variants report
``last_residual``.

``CONFIG`` is either a plain model config (e.g. an mmpretrain classifier;
it is wrapped in ``mmifso.PruningAlgorithm`` with a demo input of the
training batches' shape) or a pruning config (``mmifso.PruningAlgorithm``);
``CHECKPOINT`` a plain or masked checkpoint (channels already removed are
not sampled).
"""
import argparse
import ast
import copy
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


def build_importance(cfg: dict, algo, optim_wrapper_cfg: dict):
    """Build a criterion bound to the config's optimizer (IFSO's
    ``lam=None`` takes the weight decay of the scored weights), as
    :class:`mmifso.PruningHook` does."""
    from mmengine.optim import build_optim_wrapper

    from mmifso.apis.pruning import build_criterion
    from mmifso.models.importance import ScoringContext
    imp = build_criterion(cfg)
    imp.bind_optimizer(
        build_optim_wrapper(algo, copy.deepcopy(optim_wrapper_cfg)),
        ScoringContext(algo.architecture, algo.mutator))
    return imp


def score_criterion(algo, imp, batches: Sequence[dict], seed: int,
                    mode: str = 'train') -> Tuple[List[torch.Tensor], float]:
    """Scores of ``imp`` on ``batches``.

    Args:
        algo (PruningAlgorithm): The gated model.
        imp (BaseImportance): A fresh criterion.
        batches (Sequence[dict]): Raw scoring batches.
        seed (int): Batch ``b`` is scored with seed ``seed + b``.
        mode (str): ``'train'`` (as in the hooks) or ``'eval'`` (BatchNorm
            running statistics: the converged objective's mode).

    Returns:
        tuple: Per-unit scores (float64, ``(num_channels, )``) and the
        scoring time in seconds.
    """
    from mmifso.models.importance import ScoringContext
    algo.train(mode == 'train')
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
# Metrics (the maths lives in mmifso.apis.fidelity)
# ---------------------------------------------------------------------- #
from mmifso.apis.fidelity import rank_metrics, topk_overlap  # noqa: E402,F401


def plot_scatter(true: Sequence[float], pred: Sequence[float], label: str,
                 metrics: Dict, xlabel: str, path: str) -> None:
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
    ax.set_xlabel(xlabel, fontsize=8)
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
# Converged retraining (the regime of IFSO's theory)
# ---------------------------------------------------------------------- #
class ConvergedMeter:
    """Retrains the surviving conv/linear weights to convergence.

    The objective is :class:`mmifso.apis.fidelity.RegularisedObjective`:
    the data loss over one fixed batch (eval mode: BatchNorm running
    statistics fixed) plus ``lam/2 ||w||^2`` over the criteria's ``w`` (the
    conv/linear weights of :class:`ScoringContext`), in float64; Newton-Krylov (or
    L-BFGS) until ``||grad J|| <= tol``.

    Args:
        algo (PruningAlgorithm): The gated model (float64) at ``w0``.
        fit_data (dict): The pre-processed batch of the objective.
        lam (float): Weight decay of the objective.
        tol (float): Gradient-norm tolerance.
        max_iter (int): Newton steps (L-BFGS iterations) per retrain.
        mask_steps (int): Continuation steps from mask 1 to 0.
        method (str): ``'lbfgs'`` or ``'newton'`` (trust-region
            Newton-Krylov on exact Hessian-vector products), see
            :func:`mmifso.apis.fidelity.converge`.
    """

    def __init__(self, algo, fit_data: dict, lam: float, tol: float,
                 max_iter: int, mask_steps: int = 1,
                 method: str = 'lbfgs') -> None:
        from mmifso.apis.fidelity import RegularisedObjective
        from mmifso.models.importance import ScoringContext
        self.algo = algo
        weights = ScoringContext(algo.architecture, algo.mutator).weights
        self.objective = RegularisedObjective(algo, [fit_data], weights, lam)
        self.tol, self.max_iter, self.mask_steps = tol, max_iter, mask_steps
        self.method = method
        self.state = copy.deepcopy(algo.state_dict())

    def reset(self) -> None:
        """Back to ``w0`` (weights, BN statistics, masks)."""
        self.algo.load_state_dict(self.state)

    def converge_start(self) -> Dict:
        """Converge the unmasked model; ``w0`` becomes the minimiser."""
        from mmifso.apis.fidelity import converge
        self.reset()

        def log(it: int, norm: float, value: float) -> None:
            print_log(f'[fidelity] converging w0: iteration {it}, J '
                      f'{value:.8g}, ||grad J|| {norm:.3g}', logger='current')

        res = converge(self.objective, self.tol, self.max_iter,
                       method=self.method, callback=log)
        self.state = copy.deepcopy(self.algo.state_dict())
        return res.to_dict()

    def measure(self, block: Optional[Block]) -> Dict:
        """Retrain with ``block`` removed (``None``: the control).

        Returns:
            dict: ``objective``/``data_loss`` at ``w0`` masked (``*_r0``)
            and after retraining, and the evidence of every step.
        """
        from mmifso.apis.fidelity import converge, retrain_masked
        self.reset()
        if block is not None:
            self.algo.mutator.units[block[0]].prune(block[1])
        r0 = self.objective.value()
        if block is None:
            steps = [converge(self.objective, self.tol, self.max_iter,
                              method=self.method)]
        else:
            unit, channels = self.algo.mutator.units[block[0]], block[1]

            def set_mask(value: float) -> None:
                with torch.no_grad():
                    unit.mask[channels] = value

            steps = retrain_masked(self.objective, set_mask, self.mask_steps,
                                   tol=self.tol, max_iter=self.max_iter,
                                   method=self.method)
        last = steps[-1]
        return dict(objective_r0=r0['objective'], data_loss_r0=r0['data_loss'],
                    objective=last.objective, data_loss=last.data_loss,
                    retrain=[s.to_dict() for s in steps])


def as_float64(algo) -> None:
    """Cast the model to float64 and its inputs with it (a forward pre-hook
    on the architecture), so retraining can reach tight tolerances."""
    algo.double()

    def cast(module, args, kwargs):
        x = kwargs.get('inputs', args[0] if args else None)
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x = x.double()
            if 'inputs' in kwargs:
                kwargs['inputs'] = x
            else:
                args = (x, ) + tuple(args[1:])
        return args, kwargs

    algo.architecture.register_forward_pre_hook(cast, with_kwargs=True)


def freeze_except(algo, pattern: str) -> List[str]:
    """Freeze every parameter of the architecture except the conv/linear
    weights whose names match ``pattern`` (``re.search``).

    The criteria's ``w`` (:class:`ScoringContext` takes the trainable
    conv/linear weights) and the objective's variables become that subset.

    Returns:
        list[str]: The names of the weights left trainable.

    Raises:
        ValueError: No conv/linear weight matches.
    """
    regex = re.compile(pattern)
    weights = {
        f'{name}.weight' if name else 'weight'
        for name, m in algo.architecture.named_modules()
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))
    }
    kept = sorted(n for n in weights if regex.search(n))
    if not kept:
        raise ValueError(
            f'--retrain-params {pattern!r} matches no conv/linear weight of '
            f'the model (they are: {", ".join(sorted(weights)[:8])}'
            f'{", ..." if len(weights) > 8 else ""})')
    for name, p in algo.architecture.named_parameters():
        p.requires_grad_(name in kept)
    print_log(f'[fidelity] retraining {len(kept)} weight tensors '
              f'({", ".join(kept[:4])}{", ..." if len(kept) > 4 else ""}); '
              'every other parameter is frozen', logger='current')
    return kept


def objective_lam(args, algo, optim_wrapper_cfg: dict) -> float:
    """``--lam``, or IFSO's ``lam``: the weight decay of the scored weights
    (:meth:`IFSOImportance.bind_optimizer`)."""
    if args.lam is not None:
        return args.lam
    imp = build_importance(dict(type='mmifso.IFSOImportance'), algo,
                           optim_wrapper_cfg)
    return float(imp.lam)


def check_converged(results: Sequence[Tuple[str, Dict]], tol: float) -> None:
    """Raise :class:`NotConvergedError` naming every retrain above ``tol``."""
    from mmifso.apis.fidelity import NotConvergedError
    bad = [(name, step['grad_norm']) for name, r in results
           for step in r['retrain'] if not step['converged']]
    if bad:
        worst = max(g for _, g in bad)
        raise NotConvergedError(
            f'{len(bad)} retraining run(s) did not reach ||grad J|| <= '
            f'{tol:g} (worst {worst:.3g}; first: {bad[0][0]}); nothing was '
            'written. Raise --max-iter, loosen --grad-tol, or lower the mask '
            'in steps (--mask-steps)')


def measure_converged(args, algo, meter: ConvergedMeter,
                      blocks: Sequence[Block]) -> Tuple[List[Dict], Dict]:
    """The control and every block retrained to convergence.

    Returns:
        tuple: Per block ``dict(true_delta, true_delta_data, delta_r0,
        ...)`` and the control's record.
    """
    from mmengine.utils import ProgressBar
    control = meter.measure(None)
    records, bar = [], ProgressBar(len(blocks))
    for u, channels in blocks:
        records.append(meter.measure((u, channels)))
        bar.update()
    sys.stdout.write('\n')
    check_converged([('control', control)] + [
        (f'{algo.mutator.units[u].name}{channels}', r)
        for (u, channels), r in zip(blocks, records)
    ], args.grad_tol)
    meter.reset()
    samples = []
    for (u, channels), r in zip(blocks, records):
        samples.append(dict(
            unit=algo.mutator.units[u].name, unit_index=u, channels=channels,
            true_delta=r['objective'] - control['objective'],
            true_delta_data=r['data_loss'] - control['data_loss'],
            delta_r0=r['objective_r0'] - control['objective_r0'],
            loss=r['objective'], loss_r0=r['objective_r0'],
            grad_norm=r['retrain'][-1]['grad_norm'],
            iterations=sum(s['iterations'] for s in r['retrain']),
            distance=r['retrain'][-1]['distance'],
            retrain_seconds=sum(s['seconds'] for s in r['retrain'])))
    return samples, control


def prepare_converged(args, cfg, algo,
                      fit_batch: dict) -> Tuple[Dict, ConvergedMeter]:
    """float64, the objective, and a converged ``w0``.

    Without ``--converge-start`` a checkpoint that is not a stationary point
    of the objective is refused (the control would move too).
    """
    from mmifso.apis.fidelity import NotConvergedError
    as_float64(algo)
    if args.retrain_params is not None:
        freeze_except(algo, args.retrain_params)
    lam = objective_lam(args, algo, cfg.optim_wrapper)
    with torch.no_grad():
        fit_data = algo.data_preprocessor(copy.deepcopy(fit_batch), False)
    meter = ConvergedMeter(algo, fit_data, lam, args.grad_tol,
                           args.max_iter, args.mask_steps, args.optimizer)
    start = dict(lam=lam, grad_norm_checkpoint=meter.objective.grad_norm())
    if args.converge_start:
        res = meter.converge_start()
        if not res['converged']:
            raise NotConvergedError(
                f'--converge-start: the unmasked model reached ||grad J|| = '
                f"{res['grad_norm']:.3g} > --grad-tol {args.grad_tol:g} in "
                f'{args.max_iter} iterations; nothing was written. Raise '
                '--max-iter or loosen --grad-tol')
        start['converge_start'] = res
    elif start['grad_norm_checkpoint'] > args.grad_tol:
        raise NotConvergedError(
            f'the checkpoint is not a converged point of the regularised '
            f"objective: ||grad J|| = {start['grad_norm_checkpoint']:.3g} > "
            f'--grad-tol {args.grad_tol:g} ('
            f"{start['grad_norm_checkpoint'] / args.grad_tol:.3g}x); pass "
            '--converge-start to converge it first (criteria are then scored '
            'there), or loosen --grad-tol')
    return start, meter


# ---------------------------------------------------------------------- #
def parse_args(argv=None) -> argparse.Namespace:
    """The command line: one ``add_argument`` per flag, then the range
    checks of :func:`_check_args`.

    Long on purpose: a flat list of flags reads best in one place.
    """
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
    parser.add_argument(
        '--retrain', choices=['steps', 'converged'], default='steps',
        help='steps: R SGD steps (--retrain-steps), data loss; converged: '
        '--optimizer to ||grad J|| <= --grad-tol on J = data loss + '
        'lam/2 ||w||^2 (one fixed batch, BN in eval mode, float64)')
    parser.add_argument('--retrain-steps', type=int, default=10,
                        help='R: training steps after masking (0: none)')
    parser.add_argument(
        '--lr', type=float, default=None,
        help='learning rate of the retraining (default: 0.1 x the '
        "config's optimizer lr)")
    parser.add_argument('--eval-batches', type=int, default=4,
                        help='training batches the loss is measured on')
    parser.add_argument('--score-batches', type=int, default=4,
                        help='training batches every criterion scores '
                        '(converged mode: the fit batch)')
    parser.add_argument('--fit-samples', type=int, default=512,
                        help='converged: samples of the objective\'s fixed '
                        'batch (the criteria score this batch)')
    parser.add_argument('--grad-tol', type=float, default=1e-6,
                        help='converged: tolerance on ||grad J||_2')
    parser.add_argument('--max-iter', type=int, default=3000,
                        help='converged: Newton steps (L-BFGS iterations) '
                        'per retrain')
    parser.add_argument(
        '--optimizer', choices=['lbfgs', 'newton'], default='lbfgs',
        help='converged: L-BFGS (strong Wolfe) or trust-region '
        'Newton-Krylov on exact Hessian-vector products, each finished by '
        'Newton polishing')
    parser.add_argument('--mask-steps', type=int, default=1,
                        help='converged: lower the mask to 0 in this many '
                        'steps, re-converging after each (continuation)')
    parser.add_argument('--converge-start', action='store_true',
                        help='converged: first converge the unmasked model '
                        'and score every criterion there')
    parser.add_argument(
        '--retrain-params', default=None, metavar='REGEX',
        help='converged: retrain (and score with) only the conv/linear '
        'weights whose names in the architecture match REGEX (re.search, '
        "e.g. '^head\\.'); every other parameter is frozen")
    parser.add_argument('--lam', type=float, default=None,
                        help="converged: lam of the objective, also given "
                        "to IFSO criteria without their own (default: "
                        "IFSO's, the weight decay of the scored weights)")
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
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser,
                args: argparse.Namespace) -> None:
    """Exit through ``parser.error`` for out-of-range or contradictory
    flags (counts below 1, non-positive lr/lam/tolerance, converged-mode
    flags without ``--retrain converged``)."""
    for name in ('num_samples', 'eval_batches', 'score_batches',
                 'fit_samples', 'max_iter', 'mask_steps'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.retrain_steps < 0:
        parser.error('--retrain-steps must be >= 0')
    for name in ('lr', 'lam'):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f'--{name} must be > 0')
    if args.grad_tol <= 0:
        parser.error('--grad-tol must be > 0')
    if args.topk is not None and args.topk < 1:
        parser.error('--topk must be >= 1')
    if args.retrain != 'converged' and (
            args.converge_start or args.lam is not None
            or args.retrain_params is not None):
        parser.error('--converge-start, --lam and --retrain-params need '
                     '--retrain converged')
    if args.retrain_params is not None:
        try:
            re.compile(args.retrain_params)
        except re.error as e:
            parser.error(f'--retrain-params {args.retrain_params!r} is not '
                         f'a regular expression: {e}')


def _file_label(label: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')


def score_all(args, criteria, algo, batches: Sequence[dict],
              mode: str) -> Tuple[Dict, Dict, Dict]:
    """Every criterion's scores, seconds and notes (IFSO's residual, a
    diverging Neumann series)."""
    from mmifso.models.importance.ifso import NeumannDivergenceError
    scores, seconds, notes = {}, {}, {}
    for label, ccfg in criteria:
        imp = build_importance(ccfg, algo, args.optim_wrapper)
        try:
            scores[label], seconds[label] = score_criterion(
                algo, imp, batches, args.seed, mode)
            notes[label] = {}
        except NeumannDivergenceError as e:
            scores[label], seconds[label] = None, 0.0
            notes[label] = dict(diverged=True, error=str(e))
        if getattr(imp, 'last_residual', None) is not None:
            notes[label]['last_residual'] = imp.last_residual
        if getattr(imp, 'lam', None) is not None:
            notes[label]['lam'] = imp.lam
        print_log(f'[fidelity] {label}: scored in {seconds[label]:.1f} s'
                  + (' (diverged)' if scores[label] is None else ''),
                  logger='current')
    return scores, seconds, notes


def measure_steps(args, algo, train_b, eval_b,
                  blocks: Sequence[Block]) -> Tuple[List[Dict], Dict]:
    """The R-step data-loss change of every block (``--retrain steps``)."""
    from mmengine.utils import ProgressBar
    meter = LossChangeMeter(algo, args.optim_wrapper, train_b, eval_b,
                            args.lr_used, args.seed)
    print_log(
        f'[fidelity] {len(blocks)} samples x ({args.retrain_steps} steps + '
        f'{args.eval_batches} eval batches), lr {args.lr_used:g}',
        logger='current')
    base_before, base_after = meter.losses(None, args.retrain_steps)
    samples, bar = [], ProgressBar(len(blocks))
    for u, channels in blocks:
        before, after = meter.losses((u, channels), args.retrain_steps)
        samples.append(
            dict(unit=algo.mutator.units[u].name, unit_index=u,
                 channels=channels, true_delta=after - base_after,
                 delta_r0=before - base_before, loss=after, loss_r0=before))
        bar.update()
    sys.stdout.write('\n')
    meter.reset()  # leave the model at w0
    return samples, dict(before_retrain=base_before, after_retrain=base_after)


def summarise(args, criteria, algo, blocks, samples, scores, seconds,
              notes, k: int, out_dir: str, stem: str, seeds: Dict) -> Dict:
    """Per criterion: rank metrics against every truth, and a plot."""
    truths = dict(spearman='true_delta', spearman_r0='delta_r0')
    if args.retrain == 'converged':
        truths['spearman_data'] = 'true_delta_data'
        xlabel = 'retrained change of J = L + lam/2 ||w||^2 (converged)'
    else:
        xlabel = f'true loss change after {args.retrain_steps} steps'
    results = {}
    for label, ccfg in criteria:
        entry = dict(config=ccfg, retrain=args.retrain,
                     retrain_steps=args.retrain_steps, seeds=seeds,
                     score_seconds=round(seconds[label], 3), **notes[label])
        if scores[label] is None:
            entry.update(rank_metrics([0.0] * len(blocks),
                                      [float('nan')] * len(blocks), k))
            results[label] = entry
            continue
        pred = predictions(algo.mutator, scores[label], blocks, args.cost,
                           args.cost_power)
        for s, p in zip(samples, pred):
            s.setdefault('predictions', {})[label] = p
        for key, field in truths.items():
            m = rank_metrics([s[field] for s in samples], pred, k,
                             seed=args.seed)
            if key == 'spearman':
                entry.update(m)
            else:
                suffix = key[len('spearman'):]
                entry.update({key: m['spearman'],
                              f'kendall{suffix}': m['kendall'],
                              f'topk_overlap{suffix}': m['topk_overlap']})
        entry['plot'] = f'{stem}_{_file_label(label)}.png'
        plot_scatter([s['true_delta'] for s in samples], pred, label, entry,
                     xlabel, osp.join(out_dir, entry['plot']))
        results[label] = entry
    return results


def _print_table(results: Dict, k: int, n: int, tail: str) -> None:
    fmt = (lambda v: '  n/a' if v is None else f'{v:5.2f}')
    rows = [f'{"criterion":<48} spearman kendall top-{k}  data    R=0 '
            'score s']
    for label, r in results.items():
        rows.append(f'{label:<48} {fmt(r["spearman"]):>8} '
                    f'{fmt(r["kendall"]):>7} {fmt(r["topk_overlap"]):>6} '
                    f'{fmt(r.get("spearman_data")):>5} '
                    f'{fmt(r.get("spearman_r0")):>6} '
                    f'{r["score_seconds"]:7.1f}')
    print_log('\n' + '\n'.join(rows) + f'\n{n} samples, top-k random '
              f'overlap {k / n:.2f}; {tail}', logger='current')


def split_batches(args: argparse.Namespace, cfg: Config
                  ) -> Tuple[List[dict], List[dict], List[dict], List[dict]]:
    """The seeded training batches of the run.

    Converged mode draws one batch of ``--fit-samples`` samples (the
    objective's fixed batch, which the criteria score too). Steps mode
    draws one seeded stream: scoring, then evaluation, then the ``R``
    retraining steps (disjoint unless the data set is tiny).

    Returns:
        tuple: All batches, the scoring, the evaluation and the retraining
        ones (the last two empty in converged mode).
    """
    if args.retrain == 'converged':
        fit_cfg = copy.deepcopy(cfg)
        fit_cfg.train_dataloader['batch_size'] = args.fit_samples
        batches = draw_batches(fit_cfg, 1, args.seed)
        return batches, batches, [], []
    batches = draw_batches(
        cfg, args.score_batches + args.eval_batches +
        max(args.retrain_steps, 1), args.seed)
    score_b = batches[:args.score_batches]
    eval_b = batches[args.score_batches:args.score_batches +
                     args.eval_batches]
    train_b = batches[args.score_batches + args.eval_batches:]
    return batches, score_b, eval_b, train_b


def score_and_measure(args: argparse.Namespace, cfg: Config, criteria,
                      algo, blocks: Sequence[Block], batches: List[dict],
                      score_b: List[dict], eval_b: List[dict],
                      train_b: List[dict]) -> Tuple[Dict, Dict, Dict,
                                                    List[Dict], Dict]:
    """Score every criterion, then measure every block's true change.

    Converged mode first checks (or reaches, ``--converge-start``) the
    converged ``w0`` and scores there; steps mode sets ``args.lr_used``.
    Scoring restores BN buffers and masks itself, so it runs before the
    measurement from the same ``w0``.

    Returns:
        tuple: Scores, seconds and notes per criterion (see
        :func:`score_all`), the samples and the mode's extra JSON fields
        (``objective``, ``control``, ``num_negative_delta`` or
        ``baseline_loss``).
    """
    converged = args.retrain == 'converged'
    extra = {}
    if converged:
        extra['objective'], meter = prepare_converged(args, cfg, algo,
                                                      batches[0])
    else:
        lr = cfg.optim_wrapper.get('optimizer', {})['lr']
        args.lr_used = args.lr if args.lr is not None else 0.1 * float(lr)
    scores, seconds, notes = score_all(args, criteria, algo, score_b,
                                       'eval' if converged else 'train')
    if converged:
        samples, control = measure_converged(args, algo, meter, blocks)
        extra['control'] = control
        deltas = [s['true_delta'] for s in samples]
        extra['num_negative_delta'] = sum(d < 0 for d in deltas)
    else:
        samples, extra['baseline_loss'] = measure_steps(
            args, algo, train_b, eval_b, blocks)
    return scores, seconds, notes, samples, extra


def run(args: argparse.Namespace) -> Dict:
    """Measure and write the JSON and the plots; returns the JSON dict."""
    from mmifso.utils import save_json
    start, load_start = time.time(), os.getloadavg()
    criteria = parse_criteria(args.criteria)  # fail before any work
    if args.lam is not None:  # the objective's lam is IFSO's lam
        for _, ccfg in criteria:
            if ccfg['type'] == 'mmifso.IFSOImportance':
                ccfg.setdefault('lam', args.lam)
    cfg = Config.fromfile(args.config)
    import mmifso  # noqa: F401
    args.optim_wrapper = cfg.optim_wrapper
    converged = args.retrain == 'converged'
    batches, score_b, eval_b, train_b = split_batches(args, cfg)
    algo = build_algorithm(cfg, args.checkpoint, batches[0])
    blocks = sample_blocks(algo.mutator, args.num_samples, args.seed)
    n = len(blocks)
    k = args.topk or max(1, round(0.1 * n))
    if k > n:
        raise ValueError(f'--topk {k} exceeds the {n} samples')
    scores, seconds, notes, samples, extra = score_and_measure(
        args, cfg, criteria, algo, blocks, batches, score_b, eval_b, train_b)
    out_dir = osp.dirname(osp.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    stem = osp.splitext(osp.basename(args.out))[0]
    seeds = dict(sample=args.seed, data=args.seed, retrain=args.seed,
                 scoring=list(range(args.seed, args.seed + len(score_b))))
    results = summarise(args, criteria, algo, blocks, samples, scores,
                        seconds, notes, k, out_dir, stem, seeds)
    result = dict(
        config=args.config, checkpoint=args.checkpoint,
        command='python tools/analysis/loss_change_fidelity.py ' +
        ' '.join(sys.argv[1:]) if sys.argv[0].endswith(
            'loss_change_fidelity.py') else None,
        num_samples=n, num_removable=len(removable_blocks(algo.mutator)),
        retrain=args.retrain, retrain_steps=args.retrain_steps, k=k,
        lr=getattr(args, 'lr_used', None),
        eval_batches=None if converged else args.eval_batches,
        eval_samples=sum(len(b['inputs']) for b in (
            batches if converged else eval_b)),
        score_batches=len(score_b), score_mode='eval' if converged else
        'train', grad_tol=args.grad_tol if converged else None,
        mask_steps=args.mask_steps if converged else None,
        retrain_params=args.retrain_params,
        cost=args.cost, cost_power=args.cost_power, seeds=seeds, **extra,
        criteria=results, samples=samples,
        seconds=round(time.time() - start, 1),
        loadavg=dict(start=list(load_start), end=list(os.getloadavg())),
        torch_threads=torch.get_num_threads())
    save_json(result, args.out)
    _print_table(results, k, n, f'{args.retrain}; {result["seconds"]} s; '
                 f'wrote {args.out}')
    return result


def main(argv=None) -> Dict:
    return run(parse_args(argv))


if __name__ == '__main__':
    from mmifso.apis import exit_on_errors
    from mmifso.apis.fidelity import NotConvergedError

    # The tool's refusals name their fix: one line, exit status 1.
    with exit_on_errors('tools/analysis/loss_change_fidelity.py',
                        FileNotFoundError, KeyError, ValueError,
                        NotConvergedError):
        main()
