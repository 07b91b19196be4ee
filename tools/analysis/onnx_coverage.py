"""ONNX Runtime parity and speed-up of the exported models of coverage.

Usage:
    python tools/analysis/onnx_coverage.py [CONFIG ...] [--targets]
        --out FILE.json [--fraction 0.3] [--cls-size 224] [--det-size 320]
        [--time-rounds 10] [--markdown FILE.md]

For each config (``--targets``: the models of docs/coverage.md, the list of
``tools/analysis/coverage.py``) the model is built without weights, norms
randomised as in the coverage check, every unit loses a random
``--fraction`` of its channels, and the physically pruned model and the
unpruned one are exported to ONNX (raw ``mode='tensor'`` outputs) with
:func:`mmifso.apis.onnx.export_module_onnx`, which checks every output
against PyTorch with ONNX Runtime (<= ``--rtol`` relative). With
``--time-rounds`` both ONNX models are then timed in ONNX Runtime
interleaved (medians) and the speed-up is reported next to the FLOPs
speed-up. Two-stage detectors need data samples for their RoI stage and
are recorded as not exportable in tensor mode.
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import tempfile
import time
from typing import Dict, Optional, Tuple

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def coverage_targets():
    """The TARGETS list of tools/analysis/coverage.py."""
    spec = importlib.util.spec_from_file_location(
        'mmifso_coverage_tool', osp.join(ROOT, 'tools', 'analysis',
                                         'coverage.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TARGETS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='*')
    parser.add_argument('--targets', action='store_true')
    parser.add_argument('--out', required=True)
    parser.add_argument('--markdown')
    parser.add_argument('--fraction', type=float, default=0.3)
    parser.add_argument('--cls-size', type=int, default=224)
    parser.add_argument('--det-size', type=int, default=320)
    parser.add_argument('--rtol', type=float, default=1e-4)
    parser.add_argument(
        '--round-to', type=int, default=1,
        help='pruned units keep multiples of this many channels (8: the '
        'widths the blocked kernels run fastest, docs/benchmarks.md)')
    parser.add_argument('--time-rounds', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.targets:
        args.configs += coverage_targets()
    if not args.configs:
        parser.error('give CONFIGs or --targets')
    return args


def parse_config(config: str) -> Tuple[str, Optional[int]]:
    """``NAME@SIZE`` (or ``NAME``) as the config name and the input size
    (None: ``--cls-size`` / ``--det-size``)."""
    if '@' in config:
        name, size = config.rsplit('@', 1)
        return name, int(size)
    return config, None


def ort_timings(paths: Dict[str, str], shape: Tuple[int, ...],
                flops_ratio: float, args: argparse.Namespace) -> Dict:
    """The pruned and unpruned ONNX models timed interleaved in ONNX
    Runtime (``--time-rounds`` medians) and their speed-up next to the
    FLOPs speed-up.

    Args:
        paths (dict): ``pruned`` and ``unpruned`` ONNX files.
        shape (tuple): Input shape.
        flops_ratio (float): Pruned / unpruned FLOPs.
        args (argparse.Namespace): The parsed arguments.

    Returns:
        dict: The record's ``ort_*``, ``flops_speedup`` and ``threads``
        fields.
    """
    from mmifso.models.task_modules.latency import time_interleaved
    threads = args.threads or torch.get_num_threads()
    x = torch.randn(shape)
    fns = {k: runner_for_path(p, x, threads) for k, p in paths.items()}
    med = time_interleaved(fns, args.time_rounds, 3, 5e-3, args.seed)
    return dict(ort_unpruned_ms=med['unpruned'] * 1e3,
                ort_pruned_ms=med['pruned'] * 1e3,
                ort_speedup=med['unpruned'] / med['pruned'],
                flops_speedup=1 / flops_ratio,
                threads=threads)


def check(config: str, args: argparse.Namespace, work: str) -> Dict:
    """Build ``config`` without weights, prune a random ``--fraction`` of
    every unit, export the pruned and the unpruned model to ONNX (parity
    checked in ONNX Runtime) into ``work`` and, with ``--time-rounds``,
    time them.

    Returns:
        dict: The config's record (``ok``, ``error``, errors, timings).
    """
    from mmifso.apis.coverage import (build_model_without_weights,
                                      is_detector_config, load_config,
                                      randomise_norms, random_prune)
    from mmifso.apis.onnx import OnnxExportError, export_module_onnx
    from mmifso.models.algorithms import PruningAlgorithm
    from mmifso.models.mutators import (ChannelMutator, export_pruned_model,
                                        strip_gates)
    from mmifso.models.task_modules import DemoInput
    rec = dict(config=config, ok=False, error=None)
    name, size = parse_config(config)
    cfg = load_config(name)
    det = is_detector_config(cfg)
    if det and cfg.model.get('roi_head') is not None:
        rec['error'] = ('two-stage detector: its mode="tensor" forward needs '
                        'data samples (image shapes) for the RoI stage, so '
                        'it has no raw tensor-only graph to export')
        return rec
    size = size or (args.det_size if det else args.cls_size)
    shape = (1, 3, size, size)
    rec['input_shape'] = list(shape)
    torch.manual_seed(args.seed)
    model = build_model_without_weights(cfg, unfreeze=True)
    demo = DemoInput(shape)
    algo = PruningAlgorithm(
        architecture=model,
        mutator=ChannelMutator(demo_input=demo, frozen='skip'))
    arch = algo.architecture.eval()
    randomise_norms(arch, demo, args.seed)
    random_prune(algo.mutator, args.fraction, args.seed, args.round_to)
    rec['flops_ratio'] = algo.mutator.resources()['flops_ratio']
    pruned, _ = export_pruned_model(arch, algo.mutator)
    unpruned = arch
    for u in algo.mutator.units:
        u.mask.fill_(1)
    strip_gates(unpruned)
    paths = {}
    for label, m in (('pruned', pruned.eval()), ('unpruned', unpruned)):
        paths[label] = osp.join(work, f'{label}.onnx')
        try:
            res = export_module_onnx(m, paths[label], shape, rtol=args.rtol,
                                     seed=args.seed)
        except (OnnxExportError, RuntimeError, TypeError, ValueError) as e:
            rec['error'] = f'{label}: {type(e).__name__}: {str(e)[:300]}'
            # How far fp32 PyTorch itself is from fp64 on this (randomised)
            # model: parity cannot be tighter than the model's conditioning.
            rec[f'{label}_fp32_vs_fp64'] = fp32_vs_fp64(m, shape, args.seed)
            return rec
        rec[f'{label}_max_rel_err'] = max(res['max_rel_err'])
        rec[f'{label}_outputs'] = len(res['outputs'])
    rec['ok'] = True
    if args.time_rounds:
        rec.update(ort_timings(paths, shape, rec['flops_ratio'], args))
    return rec


def fp32_vs_fp64(model, shape, seed):
    """Largest ``max |fp32 - fp64| / max |fp64|`` over the outputs."""
    import copy

    from mmifso.apis.onnx import relative_errors
    from mmifso.models.task_modules.latency import TensorModeWrapper
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a = TensorModeWrapper(model)(x)
        b = TensorModeWrapper(copy.deepcopy(model).double())(x.double())
    return max(relative_errors(b, [t.double().numpy() for t in a]))


def runner_for_path(path, x, threads):
    from mmifso.apis.onnx import ort_session
    sess = ort_session(path, threads)
    feed = {'input': x.numpy()}
    return lambda: sess.run(None, feed)


def cond(r):
    """A note when the model is ill-conditioned in fp32."""
    v = [r[k] for k in ('pruned_fp32_vs_fp64', 'unpruned_fp32_vs_fp64')
         if k in r]
    return (f'fp32 PyTorch itself is {v[0]:.1e} from fp64: ' if v else '')


def markdown(records):
    rows = ['| config | input | ONNX ok | max rel. error (pruned) | FLOPs '
            'ratio | ORT speed-up | error |', '|---|---|---|---|---|---|---|']
    for r in records:
        sp = f'{r["ort_speedup"]:.2f}x' if 'ort_speedup' in r else ''
        err = r.get('pruned_max_rel_err')
        rows.append(
            f'| {r["config"].split("/")[-1]} | {r.get("input_shape", [0])[-1]}'
            f' | {"yes" if r["ok"] else "no"} | '
            f'{"" if err is None else f"{err:.1e}"} | '
            f'{r.get("flops_ratio", float("nan")):.2f} | {sp} | '
            f'{cond(r)}{(r["error"] or "")[:120]} |')
    return '\n'.join(rows) + '\n'


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmengine.logging import MMLogger
    from mmifso.utils import save_json, save_text
    MMLogger.get_current_instance().setLevel('ERROR')
    records = []
    load = os.getloadavg()
    for config in args.configs:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            try:
                rec = check(config, args, work)
            except Exception as e:  # noqa: BLE001 (recorded, next config)
                rec = dict(config=config, ok=False,
                           error=f'{type(e).__name__}: {str(e)[:300]}')
        rec['seconds'] = round(time.perf_counter() - t0, 1)
        records.append(rec)
        print(json.dumps(rec), flush=True)
    out = dict(loadavg_start=list(load), loadavg_end=list(os.getloadavg()),
               rtol=args.rtol, fraction=args.fraction,
               round_to=args.round_to, records=records)
    save_json(out, args.out)
    if args.markdown:
        save_text(markdown(records), args.markdown)
    print(f'{sum(r["ok"] for r in records)}/{len(records)} exported with '
          f'ONNX Runtime parity <= {args.rtol}')
    return out


if __name__ == '__main__':
    main()
