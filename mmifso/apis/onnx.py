"""Export a (pruned) model to ONNX and check it with ONNX Runtime.

The exported graph is the model's raw ``mode='tensor'`` forward: the input
is the *pre-processed* image batch (what the model's data preprocessor
outputs: normalised, padded), the outputs are the tensors of that forward,
flattened in order (an mmpretrain classifier: the logits; an mmdet
single-stage detector: every level's class scores, then every level's box
deltas, ...). Post-processing (softmax, NMS, box decoding) is not part of
the graph.

Example:
    >>> from mmifso.apis.onnx import export_onnx
    >>> export_onnx('work_dirs/export/deploy_config.py',
    ...             'work_dirs/export/pruned.pth', 'model.onnx',
    ...             shape=(1, 3, 224, 224), dynamic_batch=True)

The ONNX file is written to a temporary file next to ``out``, run with ONNX
Runtime on a random input and compared output by output with PyTorch; only
if every output agrees within ``rtol`` (relative to the output's largest
magnitude) is it renamed to ``out``. Otherwise :class:`OnnxExportError` is
raised and no file is left.
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config

from mmifso.models.task_modules.latency import (TORCH_BACKENDS,
                                                TensorModeWrapper,
                                                ort_timing_options,
                                                runner_for, time_interleaved)
from mmifso.utils import (atomic_write, check_checkpoint_matches_config,
                          checkpoint_kind, load_checkpoint_file,
                          remove_stale_temp_files)
from .export import build_from_config, load_strictly

#: Default ONNX opset (the newest that torch 2.1's exporter supports well).
DEFAULT_OPSET = 17


class OnnxExportError(RuntimeError):
    """Bad input for the export, or ONNX Runtime disagrees with PyTorch."""


def _onnx_modules():
    """``(onnx, onnxruntime)``; imported on use, so ``import mmifso`` does
    not load them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise OnnxExportError(
            f'{e.name} is not installed: run `make env` (it installs the '
            'pinned onnx and onnxruntime of requirements/runtime.txt)') from e
    return onnx, onnxruntime


def load_deploy_model(config: Union[str, Config], checkpoint: str
                      ) -> nn.Module:
    """Build the model of a deploy (or plain) config and load a checkpoint
    strictly, in eval mode.

    Args:
        config (str | Config): ``deploy_config.py`` written by
            ``tools/export_pruned.py`` (``model.type='mmifso.PrunedModel'``)
            or a plain mmpretrain/mmdet config.
        checkpoint (str): The matching checkpoint (``pruned.pth``, or a
            plain checkpoint for a plain config).

    Returns:
        nn.Module: The model, eval mode, on the CPU.

    Raises:
        OnnxExportError: a masked checkpoint or a pruning config (run
            ``tools/export_pruned.py`` first), or a checkpoint of another
            model.
    """
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} does not exist')
    mtype = str(cfg.model.get('type', ''))
    if checkpoint_kind(checkpoint) == 'masked' or mtype.endswith(
            'PruningAlgorithm'):
        raise OnnxExportError(
            f'{checkpoint} with model.type={mtype!r}: this is a masked '
            'pruning checkpoint/config (full-size weights and channel '
            'masks), which ONNX would export unpruned. Export the pruned '
            'model first: python tools/export_pruned.py PRUNE_CONFIG '
            'CHECKPOINT --out-dir DIR, then pass DIR/deploy_config.py and '
            'DIR/pruned.pth')
    try:
        check_checkpoint_matches_config(cfg, checkpoint)
    except ValueError as e:
        raise OnnxExportError(str(e)) from e
    model = build_from_config(cfg)
    ckpt = load_checkpoint_file(checkpoint)
    state = ckpt.get('state_dict', ckpt)
    state = {k[7:] if k.startswith('module.') else k: v
             for k, v in state.items()}
    load_strictly(model, state, checkpoint, OnnxExportError)
    return model.eval()


def ort_session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op
    threads (default: torch's thread count), one inter-op thread and worker
    threads that do not spin: the options of every session the latency table
    times (:func:`ort_timing_options`), so ONNX Runtime figures compare, and
    a session timed beside others does not steal their cores."""
    _, ort = _onnx_modules()
    return ort.InferenceSession(
        path,
        sess_options=ort_timing_options(threads or torch.get_num_threads()),
        providers=['CPUExecutionProvider'])


def relative_errors(expected: Sequence[torch.Tensor],
                    actual: Sequence[np.ndarray]) -> List[float]:
    """Per output: ``max |actual - expected| / max |expected|`` (inf on a
    shape mismatch)."""
    errs = []
    for e, a in zip(expected, actual):
        e = e.detach().double().numpy()
        a = np.asarray(a, dtype=np.float64)
        if e.shape != a.shape:
            errs.append(float('inf'))
            continue
        if not e.size:
            errs.append(0.0)
            continue
        scale = max(float(np.abs(e).max()), 1e-12)
        errs.append(float(np.abs(a - e).max()) / scale)
    return errs


def export_module_onnx(model: nn.Module,
                       path: str,
                       shape: Sequence[int],
                       dynamic_batch: bool = False,
                       opset: int = DEFAULT_OPSET,
                       rtol: float = 1e-4,
                       seed: int = 0) -> Dict:
    """Export ``model``'s tensor-mode forward to ``path`` and check it with
    ONNX Runtime (the core of :func:`export_onnx`, which writes atomically).

    Args:
        model (nn.Module): A ``BaseModel`` (or plain module) in eval mode.
        path (str): The file written (left in place even if the check
            fails; :func:`export_onnx` removes it).
        Others: see :func:`export_onnx`.

    Returns:
        dict: ``outputs`` (name and shape of each) and ``max_rel_err``.

    Raises:
        OnnxExportError: an output beyond ``rtol``, or a non-tensor output.
    """
    onnx, _ = _onnx_modules()
    shape = tuple(int(s) for s in shape)
    wrapper = TensorModeWrapper(model).eval()
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(shape, generator=g)]
    if dynamic_batch:
        inputs.append(torch.randn((shape[0] + 1, ) + shape[1:], generator=g))
    try:
        with torch.no_grad():
            expected = [wrapper(x) for x in inputs]
    except TypeError as e:
        raise OnnxExportError(str(e)) from e
    names = [f'output{i}' for i in range(len(expected[0]))]
    axes = None
    if dynamic_batch:
        axes = {n: {0: 'batch'} for n in ['input'] + names}
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (inputs[0], ),
            path,
            input_names=['input'],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True)
    onnx.checker.check_model(path)
    sess = ort_session(path)
    errs = [0.0] * len(names)
    for x, exp in zip(inputs, expected):
        got = sess.run(None, {'input': x.numpy()})
        if len(got) != len(exp):
            raise OnnxExportError(
                f'ONNX Runtime gave {len(got)} outputs, PyTorch {len(exp)}')
        errs = [max(a, b) for a, b in zip(errs, relative_errors(exp, got))]
    bad = [(n, tuple(t.shape), e)
           for n, t, e in zip(names, expected[0], errs) if not e <= rtol]
    if bad:
        shown = ', '.join(f'{n} {s}: {e:.3g}' for n, s, e in bad[:5])
        raise OnnxExportError(
            f'ONNX Runtime differs from PyTorch by more than rtol={rtol} '
            f'(max |ORT - torch| / max |torch|) on {len(bad)} of '
            f'{len(names)} outputs ({shown}); no file written. Try another '
            '--opset or report the model')
    return dict(
        outputs=[dict(name=n, shape=list(t.shape))
                 for n, t in zip(names, expected[0])],
        max_rel_err=errs)


def export_onnx(config: Union[str, Config],
                checkpoint: str,
                out: str,
                shape: Sequence[int] = (1, 3, 224, 224),
                dynamic_batch: bool = False,
                opset: int = DEFAULT_OPSET,
                rtol: float = 1e-4,
                seed: int = 0) -> Dict:
    """Export a pruned (or plain) model to ONNX; keep it only if ONNX
    Runtime reproduces PyTorch.

    Args:
        config (str | Config): ``deploy_config.py`` of
            ``tools/export_pruned.py``, or a plain config.
        checkpoint (str): Its checkpoint (``pruned.pth``).
        out (str): The ``.onnx`` file to write.
        shape (Sequence[int]): Input ``(N, C, H, W)`` (pre-processed).
        dynamic_batch (bool): Make the batch dimension dynamic (then also
            checked at batch ``N + 1``).
        opset (int): ONNX opset version.
        rtol (float): Largest allowed ``max |ORT - torch| / max |torch|``
            of any output.
        seed (int): Seed of the random check input.

    Returns:
        dict: ``path``, ``outputs`` (name and shape of each), ``max_rel_err``
        (per output, over the checked batches), ``opset``,
        ``dynamic_batch``, ``input_shape``.

    Raises:
        OnnxExportError: bad input (masked checkpoint, wrong model) or an
            output beyond ``rtol``; no file is written.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise OnnxExportError(
            f'shape must be N C H W with positive sizes, got {shape}')
    if not rtol > 0:
        raise OnnxExportError(f'rtol must be > 0, got {rtol}')
    model = load_deploy_model(config, checkpoint)
    result: Dict = {}

    def write(tmp: str) -> None:
        result.update(export_module_onnx(model, tmp, shape, dynamic_batch,
                                         opset, rtol, seed))

    remove_stale_temp_files(out)  # of an export killed before
    atomic_write(out, write)
    return dict(
        path=osp.abspath(out),
        input_shape=list(shape),
        opset=opset,
        dynamic_batch=dynamic_batch,
        outputs=result['outputs'],
        max_rel_err=result['max_rel_err'])


def time_onnx(config: Union[str, Config],
              checkpoint: str,
              onnx_path: str,
              shape: Sequence[int],
              rounds: int = 20,
              threads: Optional[int] = None) -> Dict:
    """Median latency of the model in PyTorch (eval, ``no_grad``, tensor
    mode; eager and as TorchScript optimised for inference,
    :func:`~mmifso.models.task_modules.latency.script_for_inference`) and of
    its ONNX file in ONNX Runtime, measured interleaved after warm-up.

    Args:
        config (str | Config): The config the ONNX file was exported from.
        checkpoint (str): Its checkpoint.
        onnx_path (str): The ONNX file.
        shape (Sequence[int]): Input ``(N, C, H, W)`` (a dynamic batch may
            differ from the exported one).
        rounds (int): Timed samples of each.
        threads (int, optional): Intra-op threads of both (default:
            torch's).

    Returns:
        dict: ``torch_ms`` (eager), ``torchscript_ms``, ``onnxruntime_ms``,
        ``threads``, ``shape``.
    """
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    model = TensorModeWrapper(load_deploy_model(config, checkpoint)).eval()
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0))
    sess = ort_session(onnx_path, threads)
    feed = {sess.get_inputs()[0].name: x.numpy()}

    fns = {b: runner_for(model, x, b, threads) for b in TORCH_BACKENDS}
    fns['onnxruntime'] = lambda: sess.run(None, feed)
    med = time_interleaved(fns, rounds=rounds, warmup=3, min_sample_s=0.0)
    return dict(torch_ms=med['torch'] * 1e3,
                torchscript_ms=med['torchscript'] * 1e3,
                onnxruntime_ms=med['onnxruntime'] * 1e3, threads=threads,
                shape=list(shape))
