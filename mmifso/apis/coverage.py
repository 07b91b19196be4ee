"""Which models mmifso can prune: analyse, prune at random, export, compare.

:func:`check_config` is what ``tools/analysis/coverage.py`` runs for each
config: the model is built without weights (nothing is downloaded), its
channel units are found with a demo input (``DetDemoInput`` for mmdet
detectors, ``DemoInput`` otherwise), every prunable unit loses a random
fraction of its channels (:func:`random_prune`, whole blocks where channels
are tied), the masked model is exported to a physically smaller one and both
run on the same demo input. A config passes (``export_ok``) when the exported
model runs, its outputs have the masked model's shapes and differ by at most
``atol`` (relative to the largest output when that exceeds 1), and the FLOPs
counted on it equal the masked count.
"""
import contextlib
import copy
import os
import signal
import time
import traceback
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

from mmifso.models.algorithms import PruningAlgorithm
from mmifso.models.algorithms.pruning_algorithm import build_architecture
from mmifso.models.mutators import ChannelMutator, export_pruned_model
from mmifso.models.task_modules import (DemoInput, DetDemoInput,
                                        count_resources, record_layers)
from mmifso.models.utils import (max_abs_diff, max_abs_value, outputs_agree,
                                 preserved_modes, randomise_norm_parameters)
from mmifso.utils import pipeline_input_size
from .api_check import check_upstream_apis
from .runner import load_config

# Demo image size when neither the user nor the config's test pipeline sets
# one.
FALLBACK_SIZE = dict(cls=64, det=128)


def is_detector_config(cfg: Config) -> bool:
    """Whether ``cfg`` is an mmdet config (its default scope)."""
    return cfg.get('default_scope') == 'mmdet'


def build_model_without_weights(cfg: Config, unfreeze: bool) -> nn.Module:
    """The config's model (the architecture of a prune config), without
    weights (``init_weights`` is not run, nothing is downloaded).

    Args:
        cfg (Config): The config.
        unfreeze (bool): Make every parameter trainable (and frozen backbone
            stages unfrozen) first.

    Returns:
        nn.Module: The model.
    """
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model_cfg = architecture_config(cfg, unfreeze)
    model = build_architecture(model_cfg, cfg.get('data_preprocessor'))
    if unfreeze:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def architecture_config(cfg: Config, unfreeze: bool) -> Dict:
    """The model config :func:`build_model_without_weights` builds: the
    config's model (the architecture of a prune config), with frozen
    backbone stages unfrozen when ``unfreeze``."""
    model_cfg = copy.deepcopy(cfg.model)
    if str(model_cfg.get('type', '')).endswith('PruningAlgorithm'):
        model_cfg = model_cfg['architecture']
    if unfreeze and 'frozen_stages' in model_cfg.get('backbone', {}):
        model_cfg['backbone']['frozen_stages'] = -1
    return model_cfg


def randomise_norms(model: nn.Module, demo: DemoInput, seed: int) -> None:
    """Random norm affine parameters, then BatchNorm statistics calibrated
    on random images (two forwards of ``demo`` with the norms in train
    mode).

    With BN bias != 0 a removed channel's activation is not zero, so masking
    must really remove it. Calibrating the statistics (forwards with the
    norms in train mode, cumulative average) keeps activations near unit
    scale, so a float32 comparison of masked and exported outputs is
    meaningful (the models are built without weights: with default
    statistics, activations of deep multi-branch nets such as MobileOne
    reach 1e6 and round-off alone exceeds any absolute tolerance).

    Args:
        model (nn.Module): Changed in place (train/eval modes restored).
        demo (DemoInput): The demo input (a batch of at least two images is
            used for calibration).
        seed (int): Seed of the random values and images.
    """
    g = torch.Generator().manual_seed(seed)
    randomise_norm_parameters(model, g)
    norms = []
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) \
                and getattr(m, 'running_mean', None) is not None:
            m.reset_running_stats()
            norms.append((m, m.momentum))
            m.momentum = None  # cumulative average
    if not norms:
        return
    shape = (max(2, demo.input_shape[0]), ) + tuple(demo.input_shape[1:])
    calib = copy.copy(demo)
    calib.input_shape = shape
    try:
        with preserved_modes(model), torch.no_grad():
            # Only the norms whose statistics are calibrated train (not
            # model.train(), which norm_eval overrides): dropout and drop
            # paths stay off, and heads that refuse train mode (LeViT's
            # distillation head) run as they do in the comparison.
            calibrated = {id(m) for m, _ in norms}
            for m in model.modules():
                m.training = id(m) in calibrated
            for i in range(2):
                torch.manual_seed(seed + 1 + i)
                calib(model)
    finally:
        for m, momentum in norms:
            m.momentum = momentum


def random_prune(mutator: ChannelMutator, fraction: float, seed: int,
                 round_to: int = 1) -> None:
    """Remove about ``fraction`` of every unit's channels at random.

    Tied channels (``unit.blocks``, e.g. GroupNorm groups) go as whole
    blocks; every unit keeps at least ``unit.min_channels`` (and one).

    Args:
        mutator (ChannelMutator): A prepared mutator; its units are pruned.
        fraction (float): Share of each unit's channels to remove.
        seed (int): Seed of the choice.
        round_to (int): Every unit keeps a multiple of ``round_to``
            channels (the nearest to ``1 - fraction``; blocks larger than
            one channel may leave a few more); a unit of at most
            ``round_to`` channels stays whole, as
            :class:`~mmifso.models.mutators.ChannelSelector` keeps it.
    """
    g = torch.Generator().manual_seed(seed)
    for unit in mutator.units:
        blocks = unit.blocks or [[c] for c in range(unit.num_channels)]
        want = int(round(unit.num_channels * fraction))
        if round_to > 1:
            keep = max(round_to, int(round(
                (unit.num_channels - want) / round_to)) * round_to)
            want = max(unit.num_channels - keep, 0)
        removed: List[int] = []
        for k in torch.randperm(len(blocks), generator=g).tolist():
            b = blocks[k]
            if len(removed) >= want:
                break
            if unit.num_channels - len(removed) - len(b) < max(
                    unit.min_channels, 1):
                continue
            removed.extend(b)
        if removed:
            unit.prune(removed)


def output_shapes(x):
    """The shapes of a (nested) model output, in the same nesting."""
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (list, tuple)):
        return [output_shapes(v) for v in x]
    if isinstance(x, dict):
        return {k: output_shapes(v) for k, v in x.items()}
    return None


class ModuleTracker:
    """Knows which module was running when an exception was raised.

    Args:
        model (nn.Module): The model whose forward is tracked.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: List[str] = []
        self.failed: Optional[str] = None

    @contextlib.contextmanager
    def track(self):
        """Within it, a failing forward sets :attr:`failed` to
        ``'name (Type)'`` of the innermost running module."""
        names = {m: n for n, m in self.model.named_modules()}
        handles = []

        def pre(module, args):
            # A module the model does not hold as a submodule (e.g. one
            # created in forward) is named by its type alone.
            name = names.get(module)
            self.stack.append(f'{name or "<model>"} ({type(module).__name__})'
                              if name is not None else
                              f'<unnamed> ({type(module).__name__})')

        def post(module, args, output):
            if self.stack:
                self.stack.pop()

        for m in self.model.modules():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        self.stack, self.failed = [], None
        try:
            yield self
        except Exception:
            if self.stack:
                self.failed = self.stack[-1]
            raise
        finally:
            for h in handles:
                h.remove()


def describe(exc: BaseException, limit: int = 400) -> str:
    """``'Type: message (caused by ...)'`` on one line, at most ``limit``
    characters."""
    msg = f'{type(exc).__name__}: {exc}'.strip()
    cause = exc.__cause__
    if cause is not None and str(cause) not in msg:
        msg += f' (caused by {type(cause).__name__}: {cause})'
    msg = ' '.join(msg.split())
    return msg if len(msg) <= limit else msg[:limit] + '...'


class ConfigTimeout(Exception):
    """:func:`time_limit` ran out."""


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise :class:`ConfigTimeout` in the block after ``seconds`` (0: no
    limit; only where SIGALRM exists, i.e. not on Windows)."""
    if not seconds or not hasattr(signal, 'SIGALRM'):
        yield
        return

    def handler(signum, frame):
        raise ConfigTimeout(f'did not finish within {seconds} s')

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def new_record(config: str) -> Dict:
    """An empty coverage record of ``config`` (the keys of
    :func:`check_config`'s result)."""
    return dict(config=config, units=0, prunable_channels=0, export_ok=False,
                max_abs_diff=None, error=None, skipped=[], flops_ratio=None,
                input_shape=None, seconds=None)


def check_config(config: str, fraction: float = 0.3, seed: int = 0,
                 cls_size: Optional[int] = None,
                 det_size: Optional[int] = None,
                 num_proposals: int = 32, atol: float = 1e-4,
                 timeout: int = 300, frozen: str = 'unfreeze',
                 check_apis: bool = False) -> Dict:
    """Analyse, randomly prune, export and compare one config.

    Args:
        config (str): A config file or ``pkg::path`` (:func:`load_config`),
            optionally with ``@SIZE``, its demo image size.
        fraction (float): Share of every unit's channels removed.
        seed (int): Seed of the weights, the pruning and the inputs.
        cls_size (int, optional): Demo image size of classifiers; None: the
            config's test size (:func:`demo_size`).
        det_size (int, optional): Demo image size of detectors; None: the
            config's test size.
        num_proposals (int): RoIs per image of two-stage detectors.
        atol (float): Largest masked/exported difference, relative to the
            largest output when that exceeds 1.
        timeout (int): Seconds for the whole check (0: none).
        frozen (str): ``'unfreeze'``: every parameter trainable first;
            ``'skip'``: keep the config's frozen layers, leave their units
            out.
        check_apis (bool): Also write the export as
            ``tools/export_pruned.py`` does and use it through mmdet's /
            mmpretrain's own inference APIs
            (:func:`mmifso.apis.api_check.check_upstream_apis`; the result
            is the record's ``apis``).

    Returns:
        dict: ``config``, ``units``, ``prunable_channels``, ``export_ok``,
        ``max_abs_diff``, ``error`` (the stage, module and op that blocked
        it; every failure is recorded, none raised), ``skipped`` (groups
        left out, with reasons), ``opaque_modules``, ``prunable_share``
        (share of the hidden conv/linear output channels in a prunable
        unit, predictions left out), ``prunable_share_all`` (of all of
        them), ``output_layers``, ``blocked_units``, ``flops_ratio``
        (after the random pruning), ``output_scale``, ``input_shape`` and
        ``seconds``; with ``check_apis``, ``apis``.
    """
    start = time.time()
    record = new_record(config)
    try:
        with time_limit(timeout):
            _run_check(record, config, fraction, seed, cls_size, det_size,
                       num_proposals, atol, frozen, check_apis)
    except Exception as e:  # every failure becomes part of the record
        record['error'] = record['error'] or describe(e)
        if os.environ.get('MMIFSO_COVERAGE_DEBUG'):
            traceback.print_exc()
    record['seconds'] = round(time.time() - start, 1)
    return record


@contextlib.contextmanager
def _stage(record: Dict,
           name: str,
           tracker: Optional[ModuleTracker] = None):
    """Record a failure of the block as ``'<stage> in <module>: <error>'``
    and re-raise it."""
    try:
        if tracker is None:
            yield
        else:
            with tracker.track():
                yield
    except Exception as e:
        where = f' in {tracker.failed}' if tracker and tracker.failed else ''
        record['error'] = f'{name}{where}: {describe(e)}'
        raise


def _run_check(record: Dict, config: str, fraction: float, seed: int,
               cls_size: Optional[int], det_size: Optional[int],
               num_proposals: int, atol: float,
               frozen: str, check_apis: bool = False) -> None:
    """The steps of :func:`check_config`; fills ``record``."""
    size = None
    if '@' in config:
        config, size = config.rsplit('@', 1)
        size = int(size)
    with _stage(record, 'build'):
        cfg = load_config(config)
        det = is_detector_config(cfg)
        torch.manual_seed(seed)
        model = build_model_without_weights(cfg, unfreeze=frozen == 'unfreeze')
    hw = demo_size(cfg, size or (det_size if det else cls_size), det)
    shape = (1, 3) + hw
    record['input_shape'] = list(shape)
    demo = DetDemoInput(shape, num_proposals) if det else DemoInput(shape)
    with _stage(record, 'analysis', ModuleTracker(model)):
        mutator = ChannelMutator(demo_input=demo, frozen='skip')
        algo = PruningAlgorithm(architecture=model, mutator=mutator)
    arch = algo.architecture
    record.update(analysis_summary(mutator))
    randomise_norms(arch, demo, seed)
    random_prune(mutator, fraction, seed)
    arch.eval()
    res = mutator.resources()
    record['flops_ratio'] = round(res['flops_ratio'], 4)
    expected, actual, pruned, structure = _masked_and_exported_outputs(
        record, arch, mutator, demo, seed)
    record['error'] = _export_error(record, expected, actual, pruned, demo,
                                    res['flops'], atol)
    record['export_ok'] = record['error'] is None
    if check_apis:
        record['apis'] = _api_record(record, cfg, frozen, det, shape,
                                     num_proposals, arch, mutator, pruned,
                                     structure, seed, atol)


def _api_record(record: Dict, cfg: Config, frozen: str, det: bool,
                shape: Tuple[int, ...], num_proposals: int, arch: nn.Module,
                mutator: ChannelMutator, pruned: nn.Module, structure: Dict,
                seed: int, atol: float) -> Dict:
    """:func:`~mmifso.apis.api_check.check_upstream_apis` on the export
    (not run when the export check failed)."""
    if not record['export_ok']:
        return dict(ok=False, works={}, mismatch={},
                    error='not run: the export check failed')
    demo_cfg = dict(type='mmifso.DemoInput', input_shape=shape)
    if det:
        demo_cfg.update(type='mmifso.DetDemoInput',
                        num_proposals=num_proposals)
    summary = dict(
        flops=mutator.resources()['flops'],
        params=sum(p.numel() for p in pruned.parameters()),
        flops_unpruned=count_resources(mutator.layer_records)['flops'],
        params_unpruned=sum(p.numel() for p in arch.parameters()),
        max_abs_diff=record['max_abs_diff'])
    return check_upstream_apis(
        cfg, architecture_config(cfg, frozen == 'unfreeze'), demo_cfg, arch,
        pruned, structure, summary, tuple(shape[2:]), seed=seed, atol=atol)


def demo_size(cfg: Config, size: Optional[int],
              det: bool) -> Tuple[int, int]:
    """``(H, W)`` of the coverage check's demo input.

    Args:
        cfg (Config): The model's config.
        size (int, optional): The size asked for (square); None: the size of
            the config's test pipeline
            (:func:`mmifso.utils.pipeline_input_size`), else
            :data:`FALLBACK_SIZE` (a pipeline without a resize or crop, e.g.
            CIFAR's).
        det (bool): Whether the config is a detector's.

    Returns:
        tuple[int, int]: ``(H, W)``.
    """
    if size is not None:
        return size, size
    fallback = FALLBACK_SIZE['det' if det else 'cls']
    return pipeline_input_size(cfg) or (fallback, fallback)


def analysis_summary(mutator: ChannelMutator) -> Dict:
    """What the analysis found, as coverage record fields.

    Args:
        mutator (ChannelMutator): A prepared mutator.

    Returns:
        dict: ``skipped``, ``opaque_modules``, ``units``,
        ``prunable_channels``, ``prunable_share`` (share of the *hidden*
        conv/linear output channels that are in a prunable unit: layers
        whose outputs are model outputs, ``analysis.output_layers``, are
        left out, since predictions are never pruned; depthwise convs count
        with their input), ``prunable_share_all`` (the same share of all
        conv/linear output channels, predictions included),
        ``output_layers`` (their number) and ``blocked_units`` (units with
        tied channel blocks).
    """
    analysis = mutator.analysis
    layers = {n: r for n, r in mutator.layer_records.items() if r.spatial}
    covered = {
        s.module
        for u in mutator.units for s in u.sites
        if s.module in layers and (s.role == 'out' or layers[s.module]
                                   .depthwise)
    }
    outputs = set(analysis.output_layers)
    hidden = [n for n in layers if n not in outputs]

    def share(names) -> float:
        total = sum(layers[n].out_channels for n in names)
        return round(
            sum(layers[n].out_channels
                for n in names if n in covered) / max(total, 1), 3)

    return dict(
        skipped=[
            dict(name=s.name, channels=s.num_channels, reason=s.reason)
            for s in analysis.skipped
        ],
        opaque_modules=list(analysis.opaque_modules),
        units=len(mutator.units),
        prunable_channels=sum(u.num_channels for u in mutator.units),
        prunable_share=share(hidden),
        prunable_share_all=share(layers),
        output_layers=len(outputs & set(layers)),
        blocked_units=sum(u.blocks is not None for u in mutator.units))


def _masked_and_exported_outputs(
        record: Dict, arch: nn.Module, mutator: ChannelMutator,
        demo: DemoInput,
        seed: int) -> Tuple[object, object, nn.Module, Dict]:
    """Run the masked model, export it, run the exported one (same input);
    a failing stage is recorded with the module that raised. Returns both
    outputs, the exported model and its structure."""
    tracker = ModuleTracker(arch)
    with torch.no_grad(), _stage(record, 'masked forward', tracker):
        torch.manual_seed(seed)
        expected = demo(arch)
    # Untracked: the export runs a copy, whose modules the tracker cannot
    # name (and which would keep its hooks); its errors name the module.
    with _stage(record, 'export'):
        pruned, structure = export_pruned_model(arch, mutator)
    pruned.eval()
    with torch.no_grad(), _stage(record, 'exported forward',
                                 ModuleTracker(pruned)):
        torch.manual_seed(seed)
        actual = demo(pruned)
    return expected, actual, pruned, structure


def _export_error(record: Dict, expected, actual, pruned: nn.Module,
                  demo: DemoInput, masked_flops: int,
                  atol: float) -> Optional[str]:
    """Why the exported model is not the masked one (None if it is);
    records ``max_abs_diff`` and ``output_scale``."""
    if output_shapes(expected) != output_shapes(actual):
        return ('output shapes differ: masked '
                f'{output_shapes(expected)} vs exported '
                f'{output_shapes(actual)}')
    diff = max_abs_diff(expected, actual)
    scale = max_abs_value(expected)
    record['max_abs_diff'] = float(f'{diff:.3g}')
    record['output_scale'] = float(f'{scale:.3g}')
    with torch.no_grad():
        counted = count_resources(record_layers(pruned, demo))['flops']
    if counted != masked_flops:
        return (f'FLOPs counted on the exported model ({counted}) differ '
                f'from the masked count ({masked_flops})')
    if not outputs_agree(diff, scale, atol):
        return (f'masked and exported outputs differ by {diff:.3g} > {atol} '
                f'(x the largest output {scale:.3g} when above 1)')
    return None
