"""Which models mmifso can prune: analyse, randomly prune, export, compare.

Usage:
    python tools/analysis/coverage.py CONFIG [CONFIG ...] --out FILE.json
        [--targets] [--fraction 0.3] [--seed 0] [--cls-size 64]
        [--det-size 128] [--num-proposals 32] [--timeout 300]
        [--frozen unfreeze|skip] [--markdown FILE.md]

``CONFIG`` is a config file or an upstream config such as
``mmdet::retinanet/retinanet_r50_fpn_1x_coco.py`` or
``mmpretrain::resnet/resnet18_8xb32_in1k.py``, optionally with ``@SIZE`` for
its demo image size (``...vgg16bn_8xb32_in1k.py@224``); ``--targets`` adds the
list of models tracked in ``docs/coverage.md``. For each config the model is
built without weights (nothing is downloaded), its channel units are found with
the demo input (``DetDemoInput`` for mmdet detectors, ``DemoInput`` otherwise,
at a small image size), every prunable unit loses a random ``--fraction`` of
its channels (whole blocks where channels are tied), the masked model is
exported to a physically smaller one and both are run on the same demo input. A
config passes (``export_ok``) when the exported model runs, its outputs have
the masked model's shapes and differ by at most ``--atol`` (1e-4; relative to
the largest output when that exceeds 1), and the FLOPs counted on it equal the
masked count. Norm layers get random affine parameters and BatchNorm statistics
calibrated on random images first, so activations stay near unit scale and
removed channels are not zero before the gates.

One JSON record per config: ``config``, ``units``, ``prunable_channels``,
``export_ok``, ``max_abs_diff``, ``error`` (the stage, module and op that
blocked it), plus ``skipped`` (groups left out, with reasons),
``prunable_share`` (share of all conv/linear output channels that are in a
prunable unit), ``blocked_units`` (units with tied channel blocks),
``flops_ratio`` (after the random pruning), ``output_scale``, ``input_shape``
and ``seconds``.
"""
import argparse
import contextlib
import copy
import json
import os
import os.path as osp
import signal
import sys
import time
import traceback
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

#: The models tracked in docs/coverage.md.
TARGETS = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'mmdet::atss/atss_r50_fpn_1x_coco.py',
    'mmdet::gfl/gfl_r50_fpn_1x_coco.py',
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py',
    'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
    'mmpretrain::resnet/resnet18_8xb32_in1k.py',
    'mmpretrain::resnet/resnet50_8xb32_in1k.py',
    'mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py',
    'mmpretrain::seresnet/seresnet50_8xb32_in1k.py',
    'mmpretrain::res2net/res2net50-w14-s8_8xb32_in1k.py',
    'mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py',
    'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
    'mmpretrain::mobilenet_v3/mobilenet-v3-small_8xb128_in1k.py',
    'mmpretrain::mobilenet_v3/mobilenet-v3-large_8xb128_in1k.py',
    'mmpretrain::shufflenet_v2/shufflenet-v2-1x_16xb64_in1k.py',
    'mmpretrain::efficientnet/efficientnet-b0_8xb32_in1k.py',
    # VGG's classifier expects 7x7 maps: the image must be 224.
    'mmpretrain::vgg/vgg16bn_8xb32_in1k.py@224',
    'mmpretrain::densenet/densenet121_4xb256_in1k.py',
    'mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py',
    'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py',
    'mmpretrain::hrnet/hrnet-w18_4xb32_in1k.py',
    'mmpretrain::cspnet/cspresnet50_8xb32_in1k.py',
    'mmpretrain::mobileone/mobileone-s0_8xb32_in1k.py',
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Channel-pruning coverage: analyse, prune randomly, '
        'export and compare each model')
    parser.add_argument('configs', nargs='*', help='config files or '
                        'pkg::path upstream configs')
    parser.add_argument('--out', required=True, help='JSON file to write')
    parser.add_argument(
        '--targets', action='store_true',
        help='add the models tracked in docs/coverage.md')
    parser.add_argument('--fraction', type=float, default=0.3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cls-size', type=int, default=64,
                        help='demo image size for classifiers')
    parser.add_argument('--det-size', type=int, default=128,
                        help='demo image size for detectors')
    parser.add_argument('--num-proposals', type=int, default=32,
                        help='RoIs per image for two-stage detectors')
    parser.add_argument('--atol', type=float, default=1e-4)
    parser.add_argument('--timeout', type=int, default=300,
                        help='seconds per config (0: none)')
    parser.add_argument(
        '--frozen', choices=['unfreeze', 'skip'], default='unfreeze',
        help="'unfreeze': make every parameter trainable first (measures "
        "what the analyzer can do); 'skip': keep the config's frozen layers "
        "and leave their units out (what a prune config with "
        "frozen='skip' gets)")
    parser.add_argument('--markdown', help='also write a markdown table')
    args = parser.parse_args(argv)
    if args.targets:
        args.configs = list(args.configs) + [
            t for t in TARGETS if t not in args.configs
        ]
    if not args.configs:
        parser.error('give at least one config, or --targets')
    return args


# --------------------------------------------------------------------- #
def load_config(path: str):
    """A config file, or ``pkg::rel/path.py`` of an installed OpenMMLab
    package (its ``.mim/configs``)."""
    from mmengine.config import Config
    if '::' in path:
        from mmengine.utils import get_installed_path
        package, rel = path.split('::', 1)
        full = osp.join(get_installed_path(package), '.mim', 'configs', rel)
        if not osp.isfile(full):
            raise FileNotFoundError(f'{path}: no such config ({full})')
        return Config.fromfile(full)
    return Config.fromfile(path)


def is_detector_config(cfg) -> bool:
    return cfg.get('default_scope') == 'mmdet'


def build_architecture(cfg, unfreeze: bool) -> nn.Module:
    """The config's model, without weights (``init_weights`` is not run)."""
    from mmengine.registry import init_default_scope

    import mmifso  # noqa: F401
    from mmifso.models.algorithms.pruning_algorithm import \
        build_architecture as build
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model_cfg = copy.deepcopy(cfg.model)
    if str(model_cfg.get('type', '')).endswith('PruningAlgorithm'):
        model_cfg = model_cfg['architecture']
    if unfreeze and 'frozen_stages' in model_cfg.get('backbone', {}):
        model_cfg['backbone']['frozen_stages'] = -1
    model = build(model_cfg, cfg.get('data_preprocessor'))
    if unfreeze:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def randomise_norms(model: nn.Module, demo, seed: int) -> None:
    """Random norm affine parameters, then BatchNorm statistics calibrated
    on random images.

    With BN bias != 0 a removed channel's activation is not zero, so masking
    must really remove it. Calibrating the statistics (train-mode forwards,
    cumulative average) keeps activations near unit scale, so a float32
    comparison of masked and exported outputs is meaningful (the models are
    built without weights: with default statistics, activations of deep
    multi-branch nets such as MobileOne reach 1e6 and round-off alone
    exceeds any absolute tolerance).
    """
    g = torch.Generator().manual_seed(seed)
    norms = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Layer scales (ConvNeXt's gamma starts at 1e-6, which would hide
            # any error of the branch it scales).
            if name.split('.')[-1] in ('gamma', 'layer_scale') and \
                    p.dim() == 1:
                p.uniform_(0.5, 1.5, generator=g)
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                if getattr(m, 'weight', None) is not None:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.uniform_(-0.3, 0.3, generator=g)
                if getattr(m, 'running_mean', None) is not None:
                    m.reset_running_stats()
                    norms.append((m, m.momentum))
                    m.momentum = None  # cumulative average
    if not norms:
        return
    shape = (max(2, demo.input_shape[0]), ) + tuple(demo.input_shape[1:])
    calib = copy.copy(demo)
    calib.input_shape = shape
    modes = {m: m.training for m in model.modules()}
    try:
        for m in model.modules():  # not model.train(): norm_eval
            m.training = True
        with torch.no_grad():
            for i in range(2):
                torch.manual_seed(seed + 1 + i)
                calib(model)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, momentum in norms:
            m.momentum = momentum


def random_prune(mutator, fraction: float, seed: int) -> None:
    """Remove about ``fraction`` of every unit's channels, whole blocks."""
    g = torch.Generator().manual_seed(seed)
    for unit in mutator.units:
        blocks = unit.blocks or [[c] for c in range(unit.num_channels)]
        want = int(round(unit.num_channels * fraction))
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


def shapes(x):
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (list, tuple)):
        return [shapes(v) for v in x]
    if isinstance(x, dict):
        return {k: shapes(v) for k, v in x.items()}
    return None


def max_abs(x) -> float:
    if isinstance(x, torch.Tensor):
        return float(x.abs().max()) if x.numel() else 0.0
    if isinstance(x, (list, tuple)):
        return max([max_abs(v) for v in x] or [0.0])
    if isinstance(x, dict):
        return max([max_abs(v) for v in x.values()] or [0.0])
    return 0.0


class ModuleTracker:
    """Knows which module was running when an exception was raised."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: List[str] = []
        self.failed: Optional[str] = None

    @contextlib.contextmanager
    def track(self):
        names = {m: n for n, m in self.model.named_modules()}
        handles = []

        def pre(module, args):
            self.stack.append(names.get(module, '?'))

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
                name = self.stack[-1]
                module = self.model.get_submodule(name) if name else \
                    self.model
                self.failed = f'{name or "<model>"} ({type(module).__name__})'
            raise
        finally:
            for h in handles:
                h.remove()


def describe(exc: BaseException, limit: int = 400) -> str:
    msg = f'{type(exc).__name__}: {exc}'.strip()
    cause = exc.__cause__
    if cause is not None and str(cause) not in msg:
        msg += f' (caused by {type(cause).__name__}: {cause})'
    msg = ' '.join(msg.split())
    return msg if len(msg) <= limit else msg[:limit] + '...'


class ConfigTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
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


# --------------------------------------------------------------------- #
def check_config(config: str,
                 fraction: float = 0.3,
                 seed: int = 0,
                 cls_size: int = 64,
                 det_size: int = 128,
                 num_proposals: int = 32,
                 atol: float = 1e-4,
                 timeout: int = 300,
                 frozen: str = 'unfreeze') -> Dict:
    """Analyse, randomly prune, export and compare one config."""
    start = time.time()
    record = dict(
        config=config,
        units=0,
        prunable_channels=0,
        export_ok=False,
        max_abs_diff=None,
        error=None,
        skipped=[],
        flops_ratio=None,
        input_shape=None,
        seconds=None)
    try:
        with time_limit(timeout):
            _check(record, config, fraction, seed, cls_size, det_size,
                   num_proposals, atol, frozen)
    except Exception as e:  # every failure becomes part of the record
        record['error'] = record['error'] or describe(e)
        if os.environ.get('MMIFSO_COVERAGE_DEBUG'):
            traceback.print_exc()
    record['seconds'] = round(time.time() - start, 1)
    return record


def _check(record: Dict, config: str, fraction: float, seed: int,
           cls_size: int, det_size: int, num_proposals: int, atol: float,
           frozen: str) -> None:
    from mmifso.apis.export import max_abs_diff
    from mmifso.models.algorithms import PruningAlgorithm
    from mmifso.models.mutators import ChannelMutator
    from mmifso.models.task_modules import (DemoInput, DetDemoInput,
                                            count_resources, record_layers)
    from mmifso.structures import export_pruned_model

    def fail(stage: str, exc: BaseException, tracker=None) -> None:
        where = f' in {tracker.failed}' if tracker and tracker.failed else ''
        record['error'] = f'{stage}{where}: {describe(exc)}'
        raise exc

    size = None
    if '@' in config:
        config, size = config.rsplit('@', 1)
        size = int(size)
    try:
        cfg = load_config(config)
        det = is_detector_config(cfg)
        torch.manual_seed(seed)
        model = build_architecture(cfg, unfreeze=frozen == 'unfreeze')
    except Exception as e:
        fail('build', e)
    size = size or (det_size if det else cls_size)
    shape = (1, 3, size, size)
    record['input_shape'] = list(shape)
    demo = DetDemoInput(shape, num_proposals) if det else DemoInput(shape)
    tracker = ModuleTracker(model)
    try:
        with tracker.track():
            mutator = ChannelMutator(demo_input=demo, frozen='skip')
            algo = PruningAlgorithm(architecture=model, mutator=mutator)
    except Exception as e:
        fail('analysis', e, tracker)
    analysis = mutator.analysis
    record['skipped'] = [
        dict(name=s.name, channels=s.num_channels, reason=s.reason)
        for s in analysis.skipped
    ]
    record['opaque_modules'] = list(analysis.opaque_modules)
    record['units'] = len(mutator.units)
    record['prunable_channels'] = sum(u.num_channels for u in mutator.units)
    # Share of the output channels of all conv/linear layers that are in a
    # prunable unit (depthwise convs count with their input).
    layers = {n: r for n, r in mutator.layer_records.items() if r.spatial}
    covered = {
        s.module
        for u in mutator.units for s in u.sites
        if s.module in layers and (s.role == 'out' or layers[s.module]
                                   .depthwise)
    }
    total = sum(r.out_channels for r in layers.values())
    record['prunable_share'] = round(
        sum(layers[n].out_channels for n in covered) / max(total, 1), 3)
    record['blocked_units'] = sum(u.blocks is not None for u in mutator.units)
    arch = algo.architecture
    randomise_norms(arch, demo, seed)
    random_prune(mutator, fraction, seed)
    arch.eval()
    res = mutator.resources()
    record['flops_ratio'] = round(res['flops_ratio'], 4)
    try:
        with torch.no_grad(), tracker.track():
            torch.manual_seed(seed)
            expected = demo(arch)
    except Exception as e:
        fail('masked forward', e, tracker)
    try:
        with tracker.track():
            pruned, _ = export_pruned_model(arch, mutator)
    except Exception as e:
        fail('export', e, tracker)
    pruned.eval()
    tracker = ModuleTracker(pruned)
    try:
        with torch.no_grad(), tracker.track():
            torch.manual_seed(seed)
            actual = demo(pruned)
    except Exception as e:
        fail('exported forward', e, tracker)
    if shapes(expected) != shapes(actual):
        record['error'] = ('output shapes differ: masked '
                           f'{shapes(expected)} vs exported {shapes(actual)}')
        return
    diff = max_abs_diff(expected, actual)
    scale = max_abs(expected)
    record['max_abs_diff'] = float(f'{diff:.3g}')
    record['output_scale'] = float(f'{scale:.3g}')
    with torch.no_grad():
        counted = count_resources(record_layers(pruned, demo))['flops']
    if counted != res['flops']:
        record['error'] = (f'FLOPs counted on the exported model ({counted}) '
                           f'differ from the masked count ({res["flops"]})')
        return
    if not diff <= atol * max(1.0, scale):
        record['error'] = (f'masked and exported outputs differ by '
                           f'{diff:.3g} > {atol} (x the largest output '
                           f'{scale:.3g} when above 1)')
        return
    record['export_ok'] = True


def markdown_table(records: List[Dict]) -> str:
    rows = [
        '| config | units | prunable channels (share) | export ok | '
        'max abs diff | '
        'FLOPs after 30% | skipped groups | error |',
        '|---|---|---|---|---|---|---|---|'
    ]
    for r in records:
        name = r['config'].split('::')[-1].split('/')[-1].replace('.py', '')
        ratio = '' if r['flops_ratio'] is None else f'{r["flops_ratio"]:.2f}'
        diff = '' if r['max_abs_diff'] is None else f'{r["max_abs_diff"]:.1e}'
        err = (r['error'] or '').replace('|', '/')
        share = r.get('prunable_share')
        share = f' ({share:.0%})' if share is not None else ''
        rows.append(
            f'| {name} | {r["units"]} | {r["prunable_channels"]}{share} | '
            f'{"yes" if r["export_ok"] else "**no**"} | {diff} | {ratio} | '
            f'{len(r["skipped"])} | {err[:160]} |')
    return '\n'.join(rows) + '\n'


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    import logging

    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    records = []
    for config in args.configs:
        record = check_config(
            config,
            fraction=args.fraction,
            seed=args.seed,
            cls_size=args.cls_size,
            det_size=args.det_size,
            num_proposals=args.num_proposals,
            atol=args.atol,
            timeout=args.timeout,
            frozen=args.frozen)
        records.append(record)
        status = 'ok ' if record['export_ok'] else 'FAIL'
        print(f'[{status}] {config}: {record["units"]} units, '
              f'{record["prunable_channels"]} channels, diff '
              f'{record["max_abs_diff"]}, {record["seconds"]} s'
              + (f'\n       {record["error"]}' if record['error'] else ''),
              flush=True)
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(records, f, indent=2)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(markdown_table(records))
    passed = sum(r['export_ok'] for r in records)
    print(f'{passed}/{len(records)} configs export exactly; wrote {args.out}')
    return records


if __name__ == '__main__':
    main()
