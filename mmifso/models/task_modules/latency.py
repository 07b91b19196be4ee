"""A latency cost model measured on the device: the per-layer latency table.

Real latency does not follow FLOPs: narrow layers use the hardware badly, a
pruned model still pays for normalisations, activations and memory traffic.
:func:`build_latency_table` measures, on the current device and backend,
every conv/linear layer that a prunable unit touches *on its own* (same
kernel, stride, padding, groups and input size as in the model) at a grid of
alive input x output widths, and the whole model at two widths to calibrate
the rest (BatchNorm, activations, additions, pooling, framework overhead):

    latency(structure) = sum_layers L_l(c_in, c_out) + a + b * acts_ratio

``L_l`` is interpolated bilinearly between the measured widths (linearly
extrapolated below the narrowest), ``acts_ratio`` is the share of the
conv/linear output activations that remain, ``a`` and ``b`` come from the
whole model measured at full width and at half width (``b >= 0``: a
negative slope is noise and is clamped; ``a`` may be negative: the whole
model fuses what the isolated layers cannot). The table of a unit
(``unit_curves`` in the JSON) is the latency of the layers it touches as a
function of its alive channels, the other units at full width.

Measurement: eval mode, ``torch.no_grad()`` (``backend='torch'``, eager;
``'torchscript'``, the traced module frozen and optimised for inference,
see :func:`script_for_inference`; or ONNX Runtime with
``backend='onnxruntime'``, one session per layer and grid point, worker
threads not spinning: :data:`ORT_TIMING_CONFIG`), untimed warm-up calls,
each sample a loop long enough to be timed (>= ``min_sample_s``), the grid
points of all layers interleaved in a shuffled order in every round, and the
median over rounds.

Tables are cached as JSON keyed by the model (hash of its layer shapes and
units), the input shape, the device, the thread count, the backend and the
torch version; :meth:`LatencyTable.check_key` refuses a table whose key
differs and says which field.
"""
import hashlib
import io
import json
import platform
import random
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from mmifso.utils import save_json
from ..utils import forward_with_pre_hooks
from .resource import LayerRecord

BACKENDS = ('torch', 'torchscript', 'onnxruntime')
#: The backends that run in torch's own intra-op thread pool.
TORCH_BACKENDS = ('torch', 'torchscript')
#: Fractions of a layer's full width measured for each pruned dimension.
DEFAULT_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
#: Grid widths from 16 channels on are multiples of this: the widths the
#: blocked conv kernels of oneDNN and ONNX Runtime run fastest, so the table
#: predicts structures of such widths (``round_to``) best.
GRID_MULTIPLE = 8
#: 2: ONNX Runtime tables timed without spinning worker threads (those of
#: version 1 summed the layers to 10-12x the whole model and are void).
#: 3: a layer scale in the calibration (``scale``, see
#: :func:`calibrate`); version-2 ONNX Runtime tables fitted a negative
#: constant rest and under-predicted pruned models by 30-40 %.
TABLE_VERSION = 3


class LatencyTableMismatch(ValueError):
    """A latency table measured for another model, shape, device, thread
    count or backend."""


# --------------------------------------------------------------------------- #
# Keys
# --------------------------------------------------------------------------- #
def device_name(device: str = 'cpu') -> str:
    """The CPU model (``/proc/cpuinfo``) or the CUDA device name."""
    if str(device).startswith('cuda'):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def structure_hash(layer_records: Dict[str, LayerRecord],
                   units: Sequence) -> str:
    """sha256 of the layer shapes (channels, groups, kernel) and the units
    (names, sizes) of a model; the input size is a key field of its own."""
    desc = dict(
        layers=[[n, r.in_channels, r.out_channels, r.groups, r.kernel]
                for n, r in sorted(layer_records.items())],
        units=[[u.name, u.num_channels] for u in units])
    return hashlib.sha256(
        json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def latency_key(mutator, input_shape: Sequence[int], backend: str = 'torch',
                threads: Optional[int] = None, device: str = 'cpu') -> Dict:
    """The key a latency table of ``mutator``'s model must carry.

    Args:
        mutator (ChannelMutator): Built on the model.
        input_shape (Sequence[int]): ``(N, C, H, W)`` timed.
        backend (str): One of :data:`BACKENDS`.
        threads (int, optional): Intra-op threads (default: torch's).
        device (str): ``'cpu'`` or ``'cuda[:i]'`` (torch backends only).

    Returns:
        dict: ``model``, ``input_shape``, ``device``, ``threads``,
        ``backend``, ``torch``.
    """
    if backend in TORCH_BACKENDS and threads is not None and \
            int(threads) != torch.get_num_threads():
        raise ValueError(
            f'threads={threads} but torch runs {torch.get_num_threads()} '
            'threads: call torch.set_num_threads(threads) first (the torch '
            f'backend {backend!r} times with torch\'s own thread pool)')
    return dict(
        model=structure_hash(mutator.layer_records, mutator.units),
        input_shape=[int(s) for s in input_shape],
        device=device_name(device),
        threads=int(threads or torch.get_num_threads()),
        backend=backend,
        torch=torch.__version__)


# --------------------------------------------------------------------------- #
# The tensor-mode forward as a plain module (timing, ONNX export)
# --------------------------------------------------------------------------- #
def flatten_outputs(out) -> List[torch.Tensor]:
    """The tensors of a (nested) model output, depth-first in order.

    Args:
        out: A tensor, or lists/tuples/dicts of them.

    Returns:
        list[Tensor]: The leaves.

    Raises:
        TypeError: a leaf is not a tensor (e.g. data samples of
            ``mode='predict'``).
    """
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for x in out for t in flatten_outputs(x)]
    if isinstance(out, dict):
        return [t for k in out for t in flatten_outputs(out[k])]
    raise TypeError(
        f'the tensor-mode output holds a {type(out).__name__}; only tensors '
        '(in lists, tuples, dicts) can be timed or exported to ONNX')


class TensorModeWrapper(nn.Module):
    """``forward(x)`` = the flattened outputs of ``model(x, mode='tensor')``
    (``model(x)`` for a module without modes).

    Args:
        model (nn.Module): An mmengine ``BaseModel`` (classifier, detector)
            or a plain module.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._modes = hasattr(model, 'data_preprocessor')

    def forward(self, x: torch.Tensor) -> tuple:
        out = self.model(x, mode='tensor') if self._modes else self.model(x)
        return tuple(flatten_outputs(out))


# --------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------- #
def time_interleaved(fns: Dict, rounds: int = 7, warmup: int = 2,
                     min_sample_s: float = 2e-3, seed: int = 0,
                     sync: Optional[Callable[[], None]] = None) -> Dict:
    """Median seconds per call of every function, measured interleaved
    (:func:`interleaved_samples`; same arguments).

    Returns:
        dict: ``{key: median seconds per call}``.
    """
    samples = interleaved_samples(fns, rounds, warmup, min_sample_s, seed,
                                  sync)
    return {k: float(np.median(v)) for k, v in samples.items()}


def interleaved_samples(fns: Dict, rounds: int = 7, warmup: int = 2,
                        min_sample_s: float = 2e-3, seed: int = 0,
                        sync: Optional[Callable[[], None]] = None) -> Dict:
    """Seconds per call of every function, one sample per round, measured
    interleaved.

    Every function is warmed up, then each round calls every function once
    (one sample: a loop of ``n`` calls, ``n`` chosen so that a sample lasts
    at least ``min_sample_s``) in a freshly shuffled order, so drifts and
    bursts of load spread over all functions alike.

    Args:
        fns (dict): ``{key: callable}``.
        rounds (int): Samples per function.
        warmup (int): Untimed calls per function first.
        min_sample_s (float): Shortest sample.
        seed (int): Seed of the shuffled orders.
        sync (Callable, optional): Called before reading the clock (e.g.
            ``torch.cuda.synchronize``).

    Returns:
        dict: ``{key: [seconds per call of round 0, 1, ...]}``; the
        samples of one round were taken back to back.
    """
    sync = sync or (lambda: None)
    loops = {}
    for key, fn in fns.items():
        for _ in range(warmup):
            fn()
        dt = max(_seconds_per_call(fn, 1, sync), 1e-7)
        loops[key] = max(1, int(np.ceil(min_sample_s / dt)))
    samples: Dict = {k: [] for k in fns}
    for key in _shuffled_turns(fns, rounds, seed):
        samples[key].append(_seconds_per_call(fns[key], loops[key], sync))
    return samples


def _shuffled_turns(keys, rounds: int, seed: int):
    """Every key once per round, in a freshly shuffled order each round."""
    order = list(keys)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        yield from order


def _seconds_per_call(fn: Callable[[], None], n: int,
                      sync: Callable[[], None]) -> float:
    """Mean seconds of ``n`` back-to-back calls of ``fn``."""
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n


def block_samples(fns: Dict, blocks: int = 8, calls: int = 3,
                  seed: int = 0,
                  sync: Optional[Callable[[], None]] = None) -> Dict:
    """Seconds per call of every function, timed the way a deployment runs
    one model: blocks of ``calls`` back-to-back calls of one function (after
    one untimed call), the functions taking turns block by block, in a
    freshly shuffled order in every round of blocks.

    :func:`interleaved_samples` switches function at every sample; this is
    its counterpart for checking that switching does not bias a ratio
    (``tools/analysis/latency_protocols.py``).

    Args:
        fns (dict): ``{key: callable}``.
        blocks (int): Blocks per function.
        calls (int): Timed calls per block.
        seed (int): Seed of the shuffled orders.
        sync (Callable, optional): Called before reading the clock.

    Returns:
        dict: ``{key: [seconds of each timed call]}``, ``blocks x calls``
        per function.
    """
    sync = sync or (lambda: None)
    samples: Dict = {k: [] for k in fns}
    for key in _shuffled_turns(fns, blocks, seed):
        fns[key]()
        samples[key] += [_seconds_per_call(fns[key], 1, sync)
                         for _ in range(calls)]
    return samples


#: Session config entries of every ONNX Runtime session timed here (layers
#: and whole models). By default the worker threads of a session spin for a
#: while after each call; the latency table keeps hundreds of one-layer
#: sessions alive and calls them interleaved, so the threads of the sessions
#: called just before spin on the cores the timed one needs: on ResNet-50
#: (batch 1, 2 threads, 2 cores) the one-layer sessions summed to 10-12x the
#: whole model (1007 vs 85 ms idle), so the calibrated rest was hugely
#: negative; without spinning they sum to the whole model's magnitude.
#: The whole models of the calibration, of ``check_latency_table`` and of
#: ``benchmark.py --speed`` are timed with the same options (all through
#: :func:`runner_for`), so table and measurements agree. The figures are
#: those of sessions that do not spin; a deployment keeping the default
#: spinning runs one session, which the interference does not touch (it may
#: dispatch each op a little faster).
ORT_TIMING_CONFIG = {
    'session.intra_op.allow_spinning': '0',
    'session.inter_op.allow_spinning': '0',
}


def ort_timing_options(threads: int):
    """ONNX Runtime session options of every session timed here:
    ``threads`` intra-op threads, one inter-op thread, no spinning (see
    :data:`ORT_TIMING_CONFIG`).

    Args:
        threads (int): Intra-op threads.

    Returns:
        onnxruntime.SessionOptions: The options.
    """
    import onnxruntime as ort  # pinned in requirements/runtime.txt
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    for key, value in ORT_TIMING_CONFIG.items():
        opts.add_session_config_entry(key, value)
    return opts


def script_for_inference(module: nn.Module,
                         x: torch.Tensor) -> torch.jit.ScriptModule:
    """``module`` as deployed with TorchScript: traced on ``x`` in eval
    mode, frozen (weights become constants) and optimised for inference
    (``torch.jit.optimize_for_inference``: BatchNorm folded into the
    convolutions, oneDNN weight layouts on CPU).

    The eager model runs every BatchNorm and activation as an op of its own
    and reorders between layouts at every convolution; that cost grows with
    the activations, not the FLOPs, so a FLOPs cut buys less eager latency
    than it buys here.

    Args:
        module (nn.Module): Takes the one tensor ``x``.
        x (Tensor): An input of the shape it will run at.

    Returns:
        torch.jit.ScriptModule: Call it as ``module`` (under ``no_grad``).
    """
    module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, (x, ), check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def runner_for(module: nn.Module, x: torch.Tensor, backend: str,
               threads: int) -> Callable[[], None]:
    """A no-argument callable running ``module(x)`` in eval mode without
    autograd: eager (``'torch'``), as :func:`script_for_inference`
    (``'torchscript'``) or as an ONNX Runtime session of its export
    (``'onnxruntime'``, options: :func:`ort_timing_options`; the session is
    the callable's ``session`` attribute)."""
    module.eval()
    if backend in TORCH_BACKENDS:
        run_module = module if backend == 'torch' else \
            script_for_inference(module, x)

        def run():
            with torch.no_grad():
                run_module(x)

        return run
    if backend != 'onnxruntime':
        raise ValueError(f'backend must be one of {BACKENDS}, got '
                         f'{backend!r}')
    import onnxruntime as ort  # pinned in requirements/runtime.txt
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (x, ), buf, input_names=['input'],
                          opset_version=17, do_constant_folding=True)
    sess = ort.InferenceSession(buf.getvalue(),
                                sess_options=ort_timing_options(threads),
                                providers=['CPUExecutionProvider'])
    feed = {'input': x.cpu().numpy()}

    def run_ort():
        sess.run(None, feed)

    run_ort.session = sess  # inspectable (tests, debugging)
    return run_ort


# --------------------------------------------------------------------------- #
# Layer grids
# --------------------------------------------------------------------------- #
def _widths(full: int, fractions: Sequence[float], multiple: int) -> List[int]:
    """Measured widths: fractions of ``full`` as multiples of ``multiple``
    (rounded to multiples of 8 from 16 channels on), increasing, unique."""
    out = set()
    for f in fractions:
        w = max(multiple, int(round(full * f / multiple)) * multiple)
        if w >= 2 * GRID_MULTIPLE and multiple == 1:
            w = max(GRID_MULTIPLE,
                    int(round(w / GRID_MULTIPLE)) * GRID_MULTIPLE)
        out.add(min(w, full))
    out.add(full)
    return sorted(out)


def _layer_at(module: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """A fresh layer like ``module`` with ``c_in``/``c_out`` channels."""
    if isinstance(module, nn.Linear):
        return nn.Linear(c_in, c_out, bias=module.bias is not None)
    depthwise = module.groups > 1 and module.groups == module.in_channels
    groups = c_in if depthwise else module.groups
    return type(module)(
        c_in,
        c_in if depthwise else c_out,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=groups,
        bias=module.bias is not None,
        padding_mode=module.padding_mode)


def _grid_widths(rec: LayerRecord, in_pruned: bool, out_pruned: bool,
                 fractions: Sequence[float]) -> Tuple[List[int], List[int]]:
    """Input and output widths measured for one layer; a depthwise layer's
    output follows its input (``[0]``), an unpruned side keeps its width."""
    per_group = 1 if rec.depthwise or rec.groups == 1 else rec.groups
    ins = _widths(rec.in_channels, fractions, per_group) \
        if in_pruned else [rec.in_channels]
    outs = [0] if rec.depthwise else (
        _widths(rec.out_channels, fractions, per_group)
        if out_pruned else [rec.out_channels])
    return ins, outs


def _grid_inputs(module: nn.Module, calls: Sequence[Tuple[int, ...]],
                 widths: Sequence[int], n_batch: int, g: torch.Generator,
                 device: str) -> Dict[int, List[torch.Tensor]]:
    """Random inputs of a layer per input width, one per call of the layer
    in a forward (batch ``n_batch``, drawn from ``g`` in this order)."""
    inputs = {}
    for ci in widths:
        inputs[ci] = []
        for shp in calls:
            shp = (n_batch, ) + tuple(shp[1:])
            if isinstance(module, nn.Linear):
                shp = shp[:-1] + (ci, )
            else:
                shp = (shp[0], ci) + shp[2:]
            inputs[ci].append(torch.randn(shp, generator=g).to(device))
    return inputs


def _grid_timers(name: str, module: nn.Module,
                 inputs: Dict[int, List[torch.Tensor]], outs: Sequence[int],
                 backend: str, threads: int,
                 device: str) -> Dict[Tuple[str, int, int], Callable]:
    """Per grid point ``(name, c_in, c_out)`` of layer ``name``, a call that
    runs a fresh layer like ``module`` at that width on all its inputs
    once."""
    fns = {}
    for ci, xs in inputs.items():
        for co in outs:
            layer = _layer_at(module, ci, co).to(device)
            runs = [runner_for(layer, x, backend, threads) for x in xs]

            def fn(runs=runs):
                for r in runs:
                    r()

            fns[(name, ci, co)] = fn
    return fns


def _check_backend(backend: str, device: str) -> None:
    """Raise unless ``backend`` is known and can run on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got '
                         f'{backend!r}')
    if backend == 'onnxruntime' and device != 'cpu':
        raise ValueError('the onnxruntime backend runs on the CPU here; '
                         f'device={device!r} needs backend="torch" or '
                         '"torchscript"')


def _input_shapes(model: nn.Module, forward_fn, names: Sequence[str]
                  ) -> Dict[str, List[Tuple[int, ...]]]:
    """Input shape of every call of the named layers in one forward."""
    shapes: Dict[str, List[Tuple[int, ...]]] = {n: [] for n in names}
    mods = {model.get_submodule(n): n for n in names}

    def hook(module, args):
        shapes[mods[module]].append(tuple(args[0].shape))

    forward_with_pre_hooks(model, forward_fn, {m: hook for m in mods})
    return shapes


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through ``(xs, ys)``, linear beyond the ends,
    never below 0."""
    if len(xs) == 1:
        return float(ys[0])
    i = int(np.searchsorted(xs, x))
    i = min(max(i, 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


class LatencyTable:
    """Per-layer latency grids of one model on one device and backend.

    Args:
        data (dict): The JSON content (see :func:`build_latency_table`).
    """

    def __init__(self, data: Dict) -> None:
        if data.get('version') != TABLE_VERSION:
            raise LatencyTableMismatch(
                f'latency table version {data.get("version")!r}, expected '
                f'{TABLE_VERSION}: rebuild it with tools/analysis/'
                'latency_table.py')
        self.data = data
        self.key: Dict = data['key']
        self.layers: Dict[str, Dict] = data['layers']
        self.calibration: Dict = data['calibration']

    # ------------------------------------------------------------------ #
    @classmethod
    def load(cls, path: str, expected_key: Optional[Dict] = None
             ) -> 'LatencyTable':
        """Read a table; with ``expected_key`` refuse another key."""
        with open(path) as f:
            table = cls(json.load(f))
        table.source = path
        if expected_key is not None:
            table.check_key(expected_key)
        return table

    def save(self, path: str) -> None:
        """Write the table atomically as JSON."""
        save_json(self.data, path)

    def check_key(self, expected: Dict) -> None:
        """Raise :class:`LatencyTableMismatch` naming every field of the key
        that differs from ``expected``."""
        diff = [(k, self.key.get(k), v) for k, v in expected.items()
                if self.key.get(k) != v]
        if diff:
            shown = '; '.join(f'{k}: table {a!r}, here {b!r}'
                              for k, a, b in diff)
            src = getattr(self, 'source', 'the latency table')
            raise LatencyTableMismatch(
                f'{src} was measured for another setting ({shown}); '
                'rebuild it here with tools/analysis/latency_table.py '
                '(same config, --shape, --threads and --backend)')

    # ------------------------------------------------------------------ #
    def layer_ms(self, name: str, c_in: int, c_out: int) -> float:
        """Interpolated latency (ms) of one layer at given alive widths."""
        lay = self.layers[name]
        ins, outs, ms = lay['in_widths'], lay['out_widths'], lay['ms']
        rows = [_interp(outs, row, c_out) for row in ms]
        return _interp(ins, rows, c_in)

    def predict_ms(self, alive_in: Dict[str, int], alive_out: Dict[str, int],
                   acts_ratio: float) -> float:
        """Predicted whole-model latency (ms per batch).

        Args:
            alive_in (dict): Alive input channels per layer (missing: full).
            alive_out (dict): Alive output channels per layer.
            acts_ratio (float): Share of the conv/linear output activations
                that remain.
        """
        total = 0.0
        for name, lay in self.layers.items():
            ci = alive_in.get(name, lay['in_widths'][-1])
            co = ci if lay['depthwise'] else alive_out.get(
                name, lay['out_widths'][-1])
            total += self.layer_ms(name, ci, co)
        cal = self.calibration
        return (cal.get('scale', 1.0) * total + cal['a_ms'] +
                cal['b_ms'] * acts_ratio)

    @property
    def full_ms(self) -> float:
        """Predicted latency of the unpruned model (ms per batch)."""
        return self.predict_ms({}, {}, 1.0)


def acts_ratio(layer_records: Dict[str, LayerRecord],
               alive_out: Dict[str, int],
               alive_in: Optional[Dict[str, int]] = None) -> float:
    """Share of the conv/linear output activations that remain."""
    alive_in = alive_in or {}
    full = kept = 0
    for name, rec in layer_records.items():
        full += rec.spatial * rec.out_channels
        if rec.depthwise:
            n = alive_in.get(name, rec.in_channels)
        else:
            n = alive_out.get(name, rec.out_channels)
        kept += rec.spatial * n
    return kept / max(full, 1)


def build_latency_table(model: nn.Module,
                        mutator,
                        input_shape: Sequence[int],
                        whole_model_ms: Callable[[Optional[float]], float],
                        backend: str = 'torch',
                        threads: Optional[int] = None,
                        device: str = 'cpu',
                        fractions: Sequence[float] = DEFAULT_FRACTIONS,
                        rounds: int = 7,
                        warmup: int = 2,
                        min_sample_s: float = 2e-3,
                        seed: int = 0,
                        log: Callable[[str], None] = print) -> LatencyTable:
    """Measure the latency table of ``model`` (the unpruned, gated
    architecture of ``mutator``).

    Args:
        model (nn.Module): The architecture the mutator was built on.
        mutator (ChannelMutator): Its units and layer records.
        input_shape (Sequence[int]): ``(N, C, H, W)``; the batch size is
            part of the key.
        whole_model_ms (Callable): ``f(keep)`` -> measured ms per batch of
            the physically pruned model where every unit keeps the share
            ``keep`` of its channels (``None``: unpruned); used for the
            calibration of the non-conv part.
        backend (str): One of :data:`BACKENDS`.
        threads (int, optional): Intra-op threads (default: torch's).
        device (str): ``'cpu'`` or ``'cuda[:i]'`` (torch backends only).
        fractions (Sequence[float]): Widths measured per pruned dimension,
            as fractions of the full width.
        rounds (int): Timed samples per grid point (median).
        warmup (int): Untimed calls per grid point.
        min_sample_s (float): Shortest timed sample.
        seed (int): Seed of inputs and orders.
        log (Callable): Progress messages.

    Returns:
        LatencyTable: Save it with :meth:`LatencyTable.save`.
    """
    _check_backend(backend, device)
    threads = int(threads or torch.get_num_threads())
    key = latency_key(mutator, input_shape, backend, threads, device)
    n_batch = int(input_shape[0])
    pruned_in = set(mutator._sites['in'])
    pruned_out = set(mutator._sites['out'])
    names = [n for n, r in mutator.layer_records.items() if r.spatial > 0
             and (n in pruned_in or n in pruned_out)]
    shapes = _input_shapes(model, mutator.demo_input, names)
    g = torch.Generator().manual_seed(seed)
    fns, layers = {}, {}
    t_start = time.perf_counter()
    for name in names:
        rec = mutator.layer_records[name]
        module = model.get_submodule(name)
        ins, outs = _grid_widths(rec, name in pruned_in, name in pruned_out,
                                 fractions)
        calls = shapes[name]
        layers[name] = dict(
            type=type(module).__name__, depthwise=rec.depthwise,
            in_widths=ins, out_widths=outs, calls=len(calls))
        inputs = _grid_inputs(module, calls, ins, n_batch, g, device)
        fns.update(
            _grid_timers(name, module, inputs, outs, backend, threads, device))
    log(f'[latency] {len(names)} layers, {len(fns)} grid points, backend '
        f'{backend}, {threads} threads')
    sync = torch.cuda.synchronize if str(device).startswith('cuda') else None
    med = time_interleaved(fns, rounds, warmup, min_sample_s, seed, sync)
    for name, lay in layers.items():
        lay['ms'] = [[med[(name, ci, co)] * 1e3 for co in lay['out_widths']]
                     for ci in lay['in_widths']]
        if lay['depthwise']:
            lay['out_widths'] = [0]
    log(f'[latency] layers measured in {time.perf_counter() - t_start:.1f} s')
    table = LatencyTable(
        dict(version=TABLE_VERSION, key=key, layers=layers,
             calibration=dict(a_ms=0.0, b_ms=0.0)))
    _calibrate_table(table, mutator, whole_model_ms)
    cal = table.calibration
    table.data['unit_curves'] = unit_curves(table, mutator)
    table.data['build_s'] = time.perf_counter() - t_start
    log(f'[latency] whole model {cal["whole_full_ms"]:.2f} ms (layers '
        f'{cal["layers_full_ms"]:.2f} ms), half width '
        f'{cal["whole_half_ms"]:.2f} ms (layers {cal["layers_half_ms"]:.2f} '
        f'ms); whole = {cal["scale"]:.3f} x layers + {cal["a_ms"]:.2f} + '
        f'{cal["b_ms"]:.2f} x acts ratio ms')
    return table


def _calibrate_table(table: LatencyTable, mutator,
                     whole_model_ms: Callable[[Optional[float]],
                                              float]) -> None:
    """Calibrate the rest of the model (what the layers' own timings miss)
    from the whole model measured at full and at uniform half width; the
    measurements and the fit go to ``table.calibration``."""
    t_full = whole_model_ms(None)
    full_layers = table.predict_ms({}, {}, 0.0)
    alive_in, alive_out = uniform_alive(mutator, 0.5)
    r_half = acts_ratio(mutator.layer_records, alive_out, alive_in)
    t_half = whole_model_ms(0.5)
    half_layers = table.predict_ms(alive_in, alive_out, 0.0)
    table.calibration.update(
        calibrate(t_full, t_half, full_layers, half_layers, r_half),
        whole_full_ms=t_full, whole_half_ms=t_half,
        layers_full_ms=full_layers, layers_half_ms=half_layers,
        acts_ratio_half=r_half)


def calibrate(t_full: float, t_half: float, layers_full: float,
              layers_half: float, acts_half: float) -> Dict[str, float]:
    """Fit the whole model's latency to the sum of its layers' isolated
    timings through two measured points (unpruned and uniform half width).

    Two cases, told apart by the sign of the rest's slope ``b_raw`` (ms
    per unit of the activations ratio):

    * ``b_raw >= 0``, the whole model pays more than its layers, more so
      with more activations (torch eager: BatchNorm, ReLU, additions run
      as their own ops): ``whole = layers + a + b * acts``.
    * ``b_raw < 0``, the isolated layers pay more than they cost inside the
      model (ONNX Runtime: each one-layer session reorders its input and
      output into the blocked layout that the whole graph keeps between
      layers, measured 78 ms of layers against a 58 ms ResNet-50): the
      excess grows with the layers, so they are scaled, ``whole = scale *
      layers + a``. A negative activation slope instead would make
      removing channels look slower, and a constant negative rest
      under-predicted pruned ResNet-50s by 30-40 %.

    Args:
        t_full (float): Measured ms of the unpruned model.
        t_half (float): Measured ms at uniform half width.
        layers_full (float): Sum of the layers' table entries, unpruned.
        layers_half (float): The same at half width.
        acts_half (float): Activations ratio at half width.

    Returns:
        dict: ``scale``, ``a_ms``, ``b_ms`` and ``b_raw_ms``.
    """
    rest_full, rest_half = t_full - layers_full, t_half - layers_half
    b_raw = (rest_full - rest_half) / max(1 - acts_half, 1e-9)
    if b_raw >= 0:
        return dict(scale=1.0, a_ms=rest_full - b_raw, b_ms=b_raw,
                    b_raw_ms=b_raw)
    # Both points fitted unless that needs a non-positive scale (noise).
    scale = (t_full - t_half) / max(layers_full - layers_half, 1e-9)
    scale = scale if scale > 0 else t_full / max(layers_full, 1e-9)
    return dict(scale=scale, a_ms=t_full - scale * layers_full, b_ms=0.0,
                b_raw_ms=b_raw)


def uniform_alive(mutator, keep: float) -> Tuple[Dict, Dict]:
    """Alive in/out channels of every layer if every unit kept the first
    ``keep`` share of its channels (whole blocks), masks untouched."""
    saved = [u.mask.clone() for u in mutator.units]
    try:
        for u in mutator.units:
            set_uniform(u, keep)
        return mutator._alive('in'), mutator._alive('out')
    finally:
        for u, m in zip(mutator.units, saved):
            u.mask.copy_(m)


def set_uniform(unit, keep: float,
                blocks: Optional[Sequence[Sequence[int]]] = None) -> None:
    """Keep the first ``keep`` share of ``unit``'s channels (whole blocks,
    at least ``min_channels``).

    Args:
        unit (MutableChannelUnit): Its choice is set.
        keep (float): Share of the channels to keep, in (0, 1].
        blocks (Sequence[Sequence[int]], optional): Blocks in the order they
            are kept (default: the unit's blocks, or single channels, in
            index order).
    """
    if blocks is None:
        blocks = unit.blocks or [[c] for c in range(unit.num_channels)]
    n = max(unit.min_channels, int(round(unit.num_channels * keep)))
    kept: List[int] = []
    for b in blocks:
        if len(kept) >= n:
            break
        kept.extend(b)
    unit.current_choice = kept


def unit_curves(table: LatencyTable, mutator,
                fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0)
                ) -> Dict[str, Dict]:
    """Per unit: isolated ms of the layers it touches at a few widths (the
    table's entries, before the calibration's ``scale``), the other units
    at full width (a readable view of the table)."""
    curves = {}
    for unit in mutator.units:
        touched = sorted({
            s.module for s in unit.sites
            if s.role in ('in', 'out') and s.module in table.layers})
        widths, ms = [], []
        for f in fractions:
            n = max(1, int(round(unit.num_channels * f)))
            t = 0.0
            for name in touched:
                lay = table.layers[name]
                full_in, full_out = lay['in_widths'][-1], lay['out_widths'][-1]
                share = n / unit.num_channels
                ins = [s for s in unit.sites if s.module == name]
                ci = full_in - sum(len(s.idxs) for s in ins
                                   if s.role == 'in') * (1 - share)
                co = full_out - sum(len(s.idxs) for s in ins
                                    if s.role == 'out') * (1 - share)
                t += table.layer_ms(name, ci, ci if lay['depthwise'] else co)
            widths.append(n)
            ms.append(round(t, 4))
        curves[unit.name] = dict(layers=touched, widths=widths, ms=ms)
    return curves
