"""Exported models through mmdet's and mmpretrain's own inference APIs.

:func:`check_upstream_apis` is what ``tools/analysis/coverage.py
--check-apis`` runs on every exported coverage model: the export is written
by :func:`mmifso.apis.export.write_export` (the writer of
``tools/export_pruned.py``: ``pruned.pth`` with the class names in
``meta['dataset_meta']``, ``structure.json`` and ``deploy_config.py``), then
used only through the upstream entry points, on a generated image:

* detectors: ``mmdet.apis.init_detector`` + ``inference_detector``, and
  ``mmdet.apis.DetInferencer`` (which also draws the result with the
  checkpoint's class names);
* classifiers: ``mmpretrain.apis.get_model``,
  ``ImageClassificationInferencer`` (which also draws) and
  ``inference_model`` (which needs a model of mmpretrain's model zoo: a
  model built from a config, pruned or not, has no inferencer there, so it
  is recorded as unsupported);
* both: mmengine's ``Runner`` with ``load_from`` (how ``tools/test.py`` of
  mmdet and mmpretrain load a checkpoint; an ``EMAHook``'s averaged copy
  must hold the exported weights too).

An entry point works when it builds the model from the deploy config, loads
exactly the exported weights, names the classes of the checkpoint (not the
dataset's defaults) and predicts what the exported model itself predicts
through the same API (largest difference at most ``atol``, relative to the
largest value when that exceeds 1). The unpruned weights with the deploy
config (a mismatched checkpoint) must be refused with
:class:`~mmifso.models.PrunedModel`'s error ("does not fit this pruned
model") by every entry point that loads a checkpoint: the APIs above,
mmengine's non-strict ``load_checkpoint`` and mmengine's ``Runner``
(``load_from``). The other way round, ``pruned.pth`` with the unpruned
upstream config, is recorded but not counted: that model is upstream's, and
mmengine's loaders only warn about the size mismatches.
"""
import contextlib
import copy
import io
import os
import os.path as osp
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config

from mmifso.utils import save_torch
from .export import write_export

#: What :class:`~mmifso.models.PrunedModel` says when it refuses a state
#: dict of other shapes.
MISMATCH_MESSAGE = 'does not fit this pruned model'


def num_classes_of(model_cfg: Dict) -> Optional[int]:
    """The number of classes of a model config: the largest ``num_classes``
    anywhere in it (a two-stage detector's RPN has one class, its RoI heads
    the dataset's).

    Args:
        model_cfg (dict): The model config.

    Returns:
        int | None: None where no part of the config sets ``num_classes``.
    """
    found: List[int] = []

    def walk(x) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k == 'num_classes' and isinstance(v, int):
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(model_cfg)
    return max(found) if found else None


def generated_dataset_meta(num_classes: int, seed: int = 0) -> Dict:
    """Class names and a palette that no dataset has (``'mmifso_class_7'``),
    so a model that shows them has read them from the checkpoint."""
    rng = np.random.RandomState(seed)
    return dict(
        classes=tuple(f'mmifso_class_{i}' for i in range(num_classes)),
        palette=[tuple(int(c) for c in rng.randint(0, 256, 3))
                 for _ in range(num_classes)])


def pruning_config(cfg: Config, architecture: Dict,
                   demo_input: Dict) -> Config:
    """The pruning config of an upstream config: its model wrapped in
    ``mmifso.PruningAlgorithm`` (what ``configs/ifso/*/ifso_prune_*.py``
    write), so that :func:`write_export` turns it into a deploy config.

    Detector configs also import ``mmifso.utils.mmdet_compat`` (the fixes of
    known bugs of the pinned mmdet, e.g. SSD heads that cannot predict), as
    the shipped detector configs that need it do.

    Args:
        cfg (Config): The upstream config.
        architecture (dict): The model config that was built and pruned.
        demo_input (dict): The mutator's demo input config.

    Returns:
        Config: A copy of ``cfg`` with the pruning model.
    """
    pcfg = copy.deepcopy(cfg)
    pcfg.model = dict(
        type='mmifso.PruningAlgorithm',
        architecture=copy.deepcopy(architecture),
        mutator=dict(
            type='mmifso.ChannelMutator', demo_input=demo_input,
            frozen='skip'))
    imports = ['mmifso']
    if cfg.get('default_scope') == 'mmdet':
        imports.append('mmifso.utils.mmdet_compat')
    old = list(cfg.get('custom_imports', {}).get('imports', []))
    pcfg.custom_imports = dict(
        imports=old + [m for m in imports if m not in old],
        allow_failed_imports=False)
    return pcfg


def generated_image(path: str, hw: Tuple[int, int], seed: int) -> str:
    """Write a random colour image of ``hw`` pixels to ``path``."""
    import mmcv
    rng = np.random.RandomState(seed)
    # Smooth blobs rather than pixel noise: closer to a photo's statistics.
    small = rng.randint(0, 256, (max(hw[0] // 8, 2), max(hw[1] // 8, 2), 3))
    image = mmcv.imresize(small.astype(np.uint8), (hw[1], hw[0]))
    mmcv.imwrite(image, path)
    return path


class Unsupported(Exception):
    """The upstream API does not support this kind of model (for any model
    built from a config, pruned or not)."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``'Type: message'`` on one line, at most ``limit`` characters."""
    msg = ' '.join(f'{type(exc).__name__}: {exc}'.split())
    return msg if len(msg) <= limit else msg[:limit] + '...'


def _weights_equal(model: nn.Module, state: Dict) -> bool:
    """Whether ``model`` holds exactly the tensors of ``state``."""
    own = model.state_dict()
    return set(own) == set(state) and all(
        torch.equal(own[k].cpu(), v.cpu()) for k, v in state.items())


def _instances(sample) -> Dict[str, torch.Tensor]:
    """Boxes, scores and labels of a ``DetDataSample``'s predictions."""
    inst = sample.pred_instances
    return {k: inst[k].detach().cpu().float() for k in ('bboxes', 'scores',
                                                        'labels')}


def _relative_diff(a: Dict[str, torch.Tensor],
                   b: Dict[str, torch.Tensor]) -> float:
    """Largest difference of two results (name -> tensor), divided by the
    largest finite absolute value of ``b`` when that exceeds 1; inf when a
    name is missing or the shapes differ (e.g. another number of
    detections).

    Non-finite values count as equal where both results have the same one
    at the same place (random weights can overflow a box decoding; the
    exported model's own result has them too), as different elsewhere.
    """
    worst, scale = 0.0, 1.0
    for k, y in b.items():
        x = a.get(k)
        if x is None or x.shape != y.shape:
            return float('inf')
        x, y = x.double(), y.double()
        same = (x == y) | (torch.isnan(x) & torch.isnan(y))
        if not same.all():
            diff = (x - y)[~same].abs()
            if not torch.isfinite(diff).all():  # a value finite in one only
                return float('inf')
            worst = max(worst, float(diff.max()))
        finite = y[torch.isfinite(y)]
        if finite.numel():
            scale = max(scale, float(finite.abs().max()))
    return worst / scale


def _non_finite(result: Dict[str, torch.Tensor]) -> int:
    """How many values of a result (name -> tensor) are inf or NaN."""
    return sum(int((~torch.isfinite(v)).sum()) for v in result.values())


def _refusal(load: Callable[[], object]) -> str:
    """``'refused'`` when ``load`` raises the pruned model's shape error,
    else what happened instead."""
    try:
        load()
    except RuntimeError as e:
        if MISMATCH_MESSAGE in str(e):
            return 'refused'
        return f'other error: {_one_line(e)}'
    except Exception as e:  # loud, but not the refusal of the shapes
        return f'other error: {_one_line(e)}'
    return 'NOT refused: the mismatched checkpoint was loaded'


def _upstream_config_load(load: Callable[[], object]) -> str:
    """What ``load`` (a pruned checkpoint into the *unpruned* upstream
    model, by an upstream API) does: refuse, or load with mmengine's
    warning (printed, counted here)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            load()
    except Exception as e:
        return f'refused: {_one_line(e, 200)}'
    n = out.getvalue().count('size mismatch for')
    if n:
        return (f'loaded with a warning of {n} size mismatches (those '
                'tensors keep their initial values)')
    return 'loaded without a warning'


def _runner_load(config: str, checkpoint: str, work_dir: str):
    """Build mmengine's Runner from ``config`` with ``load_from=checkpoint``
    and load it as ``Runner.test()`` (``tools/test.py`` of mmdet and
    mmpretrain) does: the ``before_run`` hooks first (an ``EMAHook`` makes
    its averaged copy there and loads the checkpoint into it too), then
    ``load_or_resume``. No data is built.

    Returns:
        Runner: The runner.
    """
    from mmengine.runner import Runner
    cfg = Config.fromfile(config)
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    cfg.resume = False
    cfg.log_level = 'ERROR'
    cfg.experiment_name = f'mmifso_api_check_{time.time_ns()}'
    cfg.launcher = 'none'
    runner = Runner.from_cfg(cfg)
    runner.call_hook('before_run')
    runner.load_or_resume()
    return runner


def _runner_loads(config: str, checkpoint: str, state: Dict,
                  work_dir: str) -> Optional[str]:
    """What is wrong when mmengine's Runner loads the exported checkpoint
    (:func:`_runner_load`), or None."""
    runner = _runner_load(config, checkpoint, work_dir)
    if not _weights_equal(runner.model, state):
        return 'the loaded weights are not the exported ones'
    for hook in runner.hooks:  # EMAHook's averaged copy loads them too
        ema = getattr(hook, 'ema_model', None)
        if ema is not None and not _weights_equal(ema.module, state):
            return (f'the averaged copy of {type(hook).__name__} does not '
                    'hold the exported weights')
    return None


def _non_strict_load(build: Callable[[], nn.Module],
                     checkpoint: str) -> None:
    """mmengine's ``load_checkpoint(..., strict=False)`` into a fresh build
    of the deploy config (it would skip tensors of other shapes with a
    warning)."""
    from mmengine.runner import load_checkpoint
    load_checkpoint(build(), checkpoint, map_location='cpu', strict=False)


def _loaded_problem(model: nn.Module, names: tuple, classes: tuple,
                    state: Dict) -> Optional[str]:
    """None if a loaded model has the checkpoint's class names
    (``names``: the model's) and the exported weights, else what is wrong."""
    if names != classes:
        return (f'class names {names[:2]}... are not the checkpoint\'s '
                f'{classes[:2]}...')
    if not _weights_equal(model, state):
        return 'the loaded weights are not the exported ones'
    return None


def _detector_checks(paths: Dict[str, str], ref: nn.Module,
                     state: Dict, classes: tuple, work_dir: str,
                     atol: float) -> Tuple[Dict, Dict, List[float]]:
    """The mmdet entry points (see :func:`check_upstream_apis`); the list
    holds the exported model's number of detections and of non-finite
    values in them, then the differences of each entry point's predictions
    from its."""
    from mmdet.apis import DetInferencer, inference_detector, init_detector
    deploy, ckpt, image = paths['config'], paths['checkpoint'], paths['image']
    ref.cfg = Config.fromfile(deploy)
    expected = _instances(inference_detector(ref, image))
    # The number of detections and of non-finite values first.
    diffs: List[float] = [len(expected['scores']), _non_finite(expected)]

    def check(model: nn.Module, sample) -> Optional[str]:
        names = tuple(model.dataset_meta.get('classes', ()))
        problem = _loaded_problem(model, names, classes, state)
        if problem is not None:
            return problem
        got = _instances(sample)
        if got['labels'].numel() and int(got['labels'].max()) >= len(names):
            return f'label {int(got["labels"].max())} has no class name'
        diff = _relative_diff(got, expected)
        diffs.append(diff)
        if not diff <= atol:
            return (f'predictions differ from the exported model\'s by '
                    f'{diff:.3g} (detections {len(got["scores"])} vs '
                    f'{len(expected["scores"])})')
        return None

    def init_and_infer() -> Optional[str]:
        model = init_detector(deploy, ckpt, device='cpu')
        return check(model, inference_detector(model, image))

    def inferencer() -> Optional[str]:
        infer = DetInferencer(
            model=deploy, weights=ckpt, device='cpu', show_progress=False)
        vis_dir = osp.join(work_dir, 'det_vis')
        out = infer(image, return_datasamples=True, out_dir=vis_dir,
                    no_save_pred=True)
        drawn = osp.join(vis_dir, 'vis', osp.basename(image))
        if not osp.exists(drawn):
            return f'DetInferencer drew nothing ({drawn} missing)'
        return check(infer.model, out['predictions'][0])

    works = {
        'init_detector + inference_detector': _run(init_and_infer),
        'DetInferencer (with drawing)': _run(inferencer),
        'Runner (load_from)': _run(lambda: _runner_loads(
            deploy, ckpt, state, osp.join(work_dir, 'runner_ok'))),
    }

    return works, _detector_refusals(paths, work_dir), diffs


def _detector_refusals(paths: Dict[str, str], work_dir: str) -> Dict[str, str]:
    """What the mmdet loaders do with the unpruned weights and the deploy
    config (:func:`_refusals`), and with the exported checkpoint in the
    unpruned config."""
    from mmdet.apis import DetInferencer, init_detector
    deploy, ckpt = paths['config'], paths['checkpoint']

    def build() -> nn.Module:
        return init_detector(deploy, None, device='cpu')

    refused = _refusals(
        {
            'init_detector':
            lambda w: init_detector(deploy, w, device='cpu'),
            'DetInferencer':
            lambda w: DetInferencer(
                model=deploy, weights=w, device='cpu', show_progress=False),
        }, build, deploy, paths['unpruned'], work_dir)
    # The other way round: not mmifso's model, so not mmifso's to refuse.
    refused['(pruned.pth into the unpruned config: init_detector)'] = \
        _upstream_config_load(lambda: init_detector(
            paths['unpruned_config'], ckpt, device='cpu'))
    return refused


def _classifier_checks(paths: Dict[str, str], ref: nn.Module,
                       state: Dict, classes: tuple, work_dir: str,
                       atol: float) -> Tuple[Dict, Dict, List[float]]:
    """The mmpretrain entry points (see :func:`check_upstream_apis`); the
    list holds the differences of each entry point's scores from the
    exported model's."""
    from mmpretrain.apis import (ImageClassificationInferencer, get_model,
                                 inference_model)
    deploy, ckpt, image = paths['config'], paths['checkpoint'], paths['image']
    ref._config = Config.fromfile(deploy)
    [expected] = ImageClassificationInferencer(ref)(image)
    diffs: List[float] = []

    def check(model: nn.Module, result: Optional[Dict]) -> Optional[str]:
        names = tuple(getattr(model, '_dataset_meta', {}).get('classes', ()))
        problem = _loaded_problem(model, names, classes, state)
        if problem is not None:
            return problem
        if result is None:
            return None
        if result.get('pred_class') != classes[result['pred_label']]:
            return (f'predicted class {result.get("pred_class")!r} is not '
                    f'the name of label {result["pred_label"]}')
        diff = _relative_diff(
            dict(scores=torch.as_tensor(result['pred_scores'])),
            dict(scores=torch.as_tensor(expected['pred_scores'])))
        diffs.append(diff)
        if not diff <= atol:
            return f'scores differ from the exported model\'s by {diff:.3g}'
        return None

    def from_get_model() -> Optional[str]:
        return check(get_model(deploy, pretrained=ckpt, device='cpu'), None)

    def inferencer() -> Optional[str]:
        infer = ImageClassificationInferencer(
            deploy, pretrained=ckpt, device='cpu')
        vis_dir = osp.join(work_dir, 'cls_vis')
        [result] = infer(image, show_dir=vis_dir)
        if not osp.exists(vis_dir):
            return 'ImageClassificationInferencer drew nothing'
        return check(infer.model, result)

    def inference() -> Optional[str]:
        model = get_model(deploy, pretrained=ckpt, device='cpu')
        try:
            result = inference_model(model, image)
        except NotImplementedError as e:
            # mmpretrain picks the inferencer from the model zoo's metainfo,
            # which a model built from a config (pruned or not) lacks.
            raise Unsupported(_one_line(e)) from e
        return check(model, result)

    works = {
        'get_model': _run(from_get_model),
        'ImageClassificationInferencer (with drawing)': _run(inferencer),
        'inference_model': _run(inference),
        'Runner (load_from)': _run(lambda: _runner_loads(
            deploy, ckpt, state, osp.join(work_dir, 'runner_ok'))),
    }

    return works, _classifier_refusals(paths, work_dir), diffs


def _classifier_refusals(paths: Dict[str, str],
                         work_dir: str) -> Dict[str, str]:
    """What the mmpretrain loaders do with the unpruned weights and the
    deploy config (:func:`_refusals`), and with the exported checkpoint in
    the unpruned config."""
    from mmpretrain.apis import ImageClassificationInferencer, get_model
    deploy, ckpt = paths['config'], paths['checkpoint']

    def build() -> nn.Module:
        return get_model(deploy, pretrained=None, device='cpu')

    refused = _refusals(
        {
            'get_model':
            lambda w: get_model(deploy, pretrained=w, device='cpu'),
            'ImageClassificationInferencer':
            lambda w: ImageClassificationInferencer(
                deploy, pretrained=w, device='cpu'),
        }, build, deploy, paths['unpruned'], work_dir)
    # The other way round: not mmifso's model, so not mmifso's to refuse.
    refused['(pruned.pth into the unpruned config: get_model)'] = \
        _upstream_config_load(lambda: get_model(
            paths['unpruned_config'], pretrained=ckpt, device='cpu'))
    return refused


def _refusals(loaders: Dict[str, Callable[[str], object]],
              build: Callable[[], nn.Module], deploy: str, unpruned: str,
              work_dir: str) -> Dict[str, str]:
    """What every entry point does with the unpruned weights and the deploy
    config (each must refuse them): the toolbox's own loaders (``name ->
    load(weights_path)``), mmengine's non-strict ``load_checkpoint`` into
    ``build()`` and mmengine's Runner with ``load_from``."""
    refused = {
        name: _refusal(lambda load=load: load(unpruned))
        for name, load in loaders.items()
    }
    refused['load_checkpoint(strict=False)'] = _refusal(
        lambda: _non_strict_load(build, unpruned))
    refused['Runner (load_from)'] = _refusal(lambda: _runner_load(
        deploy, unpruned, osp.join(work_dir, 'runner')))
    return refused


def _run(step: Callable[[], Optional[str]]) -> str:
    """``'works'``, ``'unsupported: ...'`` or ``'FAILS: ...'`` of one entry
    point (``step`` returns None or what is wrong)."""
    try:
        wrong = step()
    except Unsupported as e:
        return f'unsupported: {e}'
    except Exception as e:
        if os.environ.get('MMIFSO_COVERAGE_DEBUG'):
            traceback.print_exc()
        return f'FAILS: {_one_line(e)}'
    return 'works' if wrong is None else f'FAILS: {wrong}'


def check_upstream_apis(cfg: Config, architecture: Dict, demo_input: Dict,
                        masked: nn.Module, pruned: nn.Module,
                        structure: Dict, summary: Dict,
                        image_hw: Tuple[int, int], seed: int = 0,
                        atol: float = 1e-4,
                        work_dir: Optional[str] = None) -> Dict:
    """Write an export as ``tools/export_pruned.py`` does and use it only
    through mmdet's / mmpretrain's own APIs.

    Args:
        cfg (Config): The upstream config of the model.
        architecture (dict): The model config that was built and pruned.
        demo_input (dict): Config of the demo input it was analysed with.
        masked (nn.Module): The masked model (its unpruned weights become
            the mismatched checkpoint).
        pruned (nn.Module): Its export (the reference of the predictions;
            ``cfg`` / ``_config`` is attached to it).
        structure (dict): The export's structure.
        summary (dict): FLOPs/params figures for the checkpoint's meta.
        image_hw (tuple[int, int]): Size of the generated image (the test
            pipeline resizes it as for any image).
        seed (int): Seed of the image and the palette.
        atol (float): Largest difference of the APIs' predictions from the
            exported model's, relative to the largest value above 1.
        work_dir (str, optional): Where to write the files (a temporary
            directory, removed afterwards, when None).

    Returns:
        dict: ``ok`` (every supported entry point works and every one
        refuses the mismatched checkpoint), ``works`` (entry point ->
        ``'works'`` / ``'unsupported: ...'`` / ``'FAILS: ...'``),
        ``mismatch`` (entry point -> ``'refused'`` or what happened),
        ``num_classes``, ``max_diff`` (largest relative difference of the
        predictions from the exported model's), ``detections`` and
        ``non_finite`` (detectors: how many detections the exported model
        made on the image, and how many inf/NaN values they hold, which the
        APIs must reproduce), ``error`` (the first failure, or None) and
        ``seconds``.
    """
    start = time.time()
    det = cfg.get('default_scope') == 'mmdet'
    record = dict(ok=False, works={}, mismatch={}, num_classes=None,
                  max_diff=None, error=None, seconds=None)
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix='mmifso_api_check_')
        work_dir = tmp.name
    try:
        _check(record, cfg, architecture, demo_input, masked, pruned,
               structure, summary, image_hw, seed, atol, work_dir, det)
    except Exception as e:  # recorded, never raised
        record['error'] = record['error'] or _one_line(e)
    finally:
        if tmp is not None:
            tmp.cleanup()
    record['seconds'] = round(time.time() - start, 1)
    return record


def _check(record: Dict, cfg: Config, architecture: Dict, demo_input: Dict,
           masked: nn.Module, pruned: nn.Module, structure: Dict,
           summary: Dict, image_hw: Tuple[int, int], seed: int, atol: float,
           work_dir: str, det: bool) -> None:
    """The steps of :func:`check_upstream_apis`; fills ``record``."""
    num_classes = num_classes_of(architecture)
    record['num_classes'] = num_classes
    if num_classes is None:
        record['error'] = 'the model config sets no num_classes'
        return
    meta = generated_dataset_meta(num_classes, seed)
    pcfg = pruning_config(cfg, architecture, demo_input)
    # tools/export_pruned.py writes its files with this function too.
    paths = write_export(
        osp.join(work_dir, 'export'), pcfg, pruned, structure,
        osp.join(work_dir, 'masked.pth'), summary, meta)
    paths['image'] = generated_image(
        osp.join(work_dir, 'image.png'), image_hw, seed)
    paths['unpruned'] = osp.join(work_dir, 'unpruned.pth')
    unpruned_cfg = copy.deepcopy(pcfg)
    unpruned_cfg.model = copy.deepcopy(architecture)
    paths['unpruned_config'] = osp.join(work_dir, 'unpruned_config.py')
    unpruned_cfg.dump(paths['unpruned_config'])
    save_torch(dict(state_dict=masked.state_dict(),
                    meta=dict(dataset_meta=meta)), paths['unpruned'])
    state = torch.load(paths['checkpoint'], map_location='cpu')['state_dict']
    checks = _detector_checks if det else _classifier_checks
    pruned.eval()
    with torch.no_grad():
        works, refused, diffs = checks(paths, pruned, state, meta['classes'],
                                       work_dir, atol)
    record['works'], record['mismatch'] = works, refused
    if det:
        record['detections'] = int(diffs.pop(0))
        record['non_finite'] = int(diffs.pop(0))
    record['max_diff'] = float(f'{max(diffs):.3g}') if diffs else None
    failures = [f'{k}: {v}' for k, v in works.items()
                if not v.startswith(('works', 'unsupported'))]
    failures += [f'{k} with the unpruned checkpoint: {v}'
                 for k, v in refused.items()
                 if v != 'refused' and not k.startswith('(')]
    record['error'] = failures[0] if failures else None
    record['ok'] = not failures and any(v == 'works'
                                        for v in works.values())
