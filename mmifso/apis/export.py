"""Turn a masked pruning checkpoint into a physically smaller model."""
import copy
import logging
import os
import os.path as osp
from typing import Dict, Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import init_default_scope

from mmifso.models.task_modules import (count_params, count_resources,
                                        record_layers)
from mmifso.models.utils import max_abs_diff, max_abs_value, outputs_agree
from mmifso.registry import MODELS
from mmifso.structures import save_structure
from mmifso.utils import (load_checkpoint_file, remove_stale_temp_files,
                          save_text, save_torch)
from mmifso.utils.checkpoint_checks import (ArchitectureMismatch,
                                            check_checkpoint_fits_model,
                                            file_sha256, model_kind)


class ExportError(RuntimeError):
    """The masked and exported models disagree, or the input is wrong."""


def build_from_config(cfg: Config):
    """Build ``cfg.model`` in the config's default scope."""
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    return MODELS.build(copy.deepcopy(cfg.model))


def load_masked_weights(model, checkpoint: str,
                        model_cfg: Optional[dict] = None) -> Dict:
    """Load a masked checkpoint strictly into a PruningAlgorithm.

    Raises:
        ExportError: the checkpoint has no masks, or was saved from another
            architecture (the message says which config to use).
    """
    ckpt = load_checkpoint_file(checkpoint)
    if not isinstance(ckpt, dict):
        raise ExportError(f'{checkpoint} is not a checkpoint (it holds a '
                          f'{type(ckpt).__name__})')
    state = ckpt.get('state_dict', ckpt)
    if not any(k.startswith('mutator.units.') for k in state):
        raise ExportError(
            f'{checkpoint} holds no channel masks: it is not a checkpoint '
            'of a pruning run (model.type="mmifso.PruningAlgorithm"). '
            'Export the flops_XX.pth checkpoint written by the PruningHook.')
    try:
        check_checkpoint_fits_model(
            model, ckpt, checkpoint, model_cfg, allow_head_mismatch=False)
    except ArchitectureMismatch as e:
        raise ExportError(str(e)) from e
    load_strictly(model, state, checkpoint, ExportError)
    return ckpt


def load_strictly(model: torch.nn.Module, state: Dict, checkpoint: str,
                  error: type = ExportError) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch raises
    ``error`` naming the checkpoint (and the first 600 characters of
    torch's list of missing/unexpected/mismatched keys)."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise error(f'{checkpoint} does not match the model of the config: '
                    f'{str(e)[:600]}') from e


# Top-level fields that mmengine's Runner and the upstream tools read; the
# deploy config keeps only these (the values of a config's own variables are
# already substituted where they are used).
DEPLOY_KEYS = ('default_scope', 'custom_imports', 'model', 'data_preprocessor',
               'train_dataloader', 'val_dataloader', 'test_dataloader',
               'train_cfg', 'val_cfg', 'test_cfg', 'optim_wrapper',
               'param_scheduler', 'val_evaluator', 'test_evaluator',
               'default_hooks', 'custom_hooks', 'env_cfg', 'log_processor',
               'log_level', 'visualizer', 'randomness', 'auto_scale_lr',
               'launcher', 'tta_model', 'tta_pipeline', 'load_from', 'resume')


def pruned_model_cfg(architecture: Dict, structure_path: str) -> Dict:
    """The ``PrunedModel`` config of an export, in the flat form (the
    upstream fields at the top level, see :func:`mmifso.models.PrunedModel`)
    unless the architecture is itself a pruned model (pruned further), which
    stays nested."""
    arch = copy.deepcopy(dict(architecture))
    if model_kind(arch) != 'plain':
        return dict(
            type='mmifso.PrunedModel',
            architecture=arch,
            structure=structure_path)
    arch_type = arch.pop('type')
    return dict(
        type='mmifso.PrunedModel',
        architecture_type=arch_type,
        structure=structure_path,
        **arch)


def finetune_schedule(cfg: Config) -> Tuple[Optional[list], str]:
    """The lr schedule a deploy config fine-tunes with.

    The pruning config's own ``param_scheduler`` when it has one; when it
    has none (pruning at a constant lr), a cosine decay from the pruning lr
    to 1% of it over the pruning config's ``train_cfg`` length.

    Returns:
        tuple[list | None, str]: The schedule (None: keep the config's) and
        a sentence for the config's header.
    """
    if cfg.get('param_scheduler'):
        return None, ('the lr schedule, optimizer and length of the pruning '
                      'config')
    train_cfg = cfg.get('train_cfg') or {}
    if train_cfg.get('max_epochs'):
        by_epoch, length = True, int(train_cfg['max_epochs'])
    elif train_cfg.get('max_iters'):
        by_epoch, length = False, int(train_cfg['max_iters'])
    else:
        return None, ('the pruning config has no lr schedule and no '
                      'train_cfg length: set param_scheduler before '
                      'fine-tuning')
    lr = cfg.get('optim_wrapper', {}).get('optimizer', {}).get('lr')
    scheduler = dict(
        type='CosineAnnealingLR',
        by_epoch=by_epoch,
        begin=0,
        end=length,
        T_max=length)
    if lr is not None:
        scheduler['eta_min'] = lr * 0.01
    unit = 'epochs' if by_epoch else 'iterations'
    return [scheduler], (
        f'the pruning optimizer (lr {lr}) with a cosine decay to 1% of it '
        f'over {length} {unit} (the pruning config kept its lr constant)')


def pruning_deploy_config(cfg: Config, structure_path: str,
                          checkpoint_path: str) -> Tuple[Config, str]:
    """The deploy config of an export and its header comment.

    The pruning config with its model replaced by the pruned one (flat
    ``PrunedModel`` form, so ``cfg.model.backbone`` exists for
    ``mmdet.apis.init_detector``), its ``PruningHook`` removed, a fine-tuning
    schedule (:func:`finetune_schedule`) and only the fields the Runner and
    the upstream tools read (:data:`DEPLOY_KEYS`; variables such as
    ``architecture`` or ``target_flops`` are left out).

    Args:
        cfg (Config): The pruning config.
        structure_path (str): The exported structure file.
        checkpoint_path (str): The exported checkpoint (``load_from``).

    Returns:
        tuple[Config, str]: The deploy config and its header (comment
        lines naming what was left out and the schedule).
    """
    deploy = Config({k: copy.deepcopy(cfg[k]) for k in DEPLOY_KEYS
                     if k in cfg})
    left_out = sorted(k for k in cfg.keys() if k not in DEPLOY_KEYS)
    deploy.model = pruned_model_cfg(cfg.model['architecture'], structure_path)
    hooks = deploy.get('custom_hooks', None) or []
    deploy.custom_hooks = [
        h for h in hooks if not str(h.get('type', '')).endswith('PruningHook')
    ]
    deploy.load_from = checkpoint_path
    deploy.resume = False
    imports = list(deploy.get('custom_imports', {}).get('imports', []))
    if 'mmifso' not in imports:
        deploy.custom_imports = dict(
            imports=imports + ['mmifso'], allow_failed_imports=False)
    schedule, schedule_note = finetune_schedule(cfg)
    if schedule is not None:
        deploy.param_scheduler = schedule
    source = getattr(cfg, 'filename', None) or 'the pruning config'
    header = [
        '# Deploy config of a physically pruned model, written by '
        'tools/export_pruned.py',
        f'# from {source}.',
        '# Test: python tools/test.py THIS_FILE pruned.pth (or mmdet/'
        'mmpretrain tools and APIs,',
        '# e.g. mmdet.apis.init_detector(THIS_FILE, pruned.pth)); fine-tune: '
        'python tools/train.py THIS_FILE.',
        f'# Fine-tuning schedule: {schedule_note}.',
    ]
    if left_out:
        header.append('# Pruning-time variables left out: ' +
                      ', '.join(left_out) + '.')
    return deploy, '\n'.join(header) + '\n'


def export_checkpoint(config: Union[str, Config],
                      checkpoint: str,
                      out_dir: str,
                      atol: float = 1e-4) -> Dict:
    """Export a masked checkpoint; write checkpoint, structure and config.

    Writes ``out_dir/pruned.pth`` (upstream key names, smaller shapes),
    ``out_dir/structure.json`` and ``out_dir/deploy_config.py`` (rebuilds the
    pruned model; use it with ``tools/test.py`` and ``tools/train.py``). Every
    file is written atomically; the source checkpoint is only read.

    Args:
        config (str | Config): The pruning config.
        checkpoint (str): Masked checkpoint of that config.
        out_dir (str): Output directory.
        atol (float): Largest allowed difference between masked and exported
            outputs on the demo input, scaled by the largest absolute output
            when that exceeds 1.

    Returns:
        dict: Paths written, ``max_abs_diff`` and FLOPs/params before and
        after (conv/linear MACs per image).

    Raises:
        ExportError: the config is not a pruning config, the checkpoint is
            not its masked checkpoint, or the exported model differs from the
            masked one.
    """
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if not str(cfg.model.get('type', '')).endswith('PruningAlgorithm'):
        raise ExportError(
            f'model.type of the config is {cfg.model.get("type")!r}; '
            'export needs the pruning config (model.type='
            '"mmifso.PruningAlgorithm") that produced the checkpoint')
    algo = build_from_config(cfg)
    ckpt = load_masked_weights(algo, checkpoint, cfg.model)
    dataset_meta = (ckpt.get('meta') or {}).get('dataset_meta')
    if dataset_meta is None:
        print_log(
            f'{checkpoint} has no meta["dataset_meta"] (class names); the '
            'exported pruned.pth has none either, and mmdet/mmpretrain '
            'inference APIs will fall back to their default class names. '
            'Checkpoints saved by an mmengine Runner have it.',
            logger='current', level=logging.WARNING)
    algo.eval()
    pruned, structure = algo.export()
    pruned.eval()
    diff, flops = verify_export(algo, pruned, atol)
    summary = dict(
        flops=flops,
        params=count_params(pruned),
        flops_unpruned=count_resources(algo.mutator.layer_records)['flops'],
        params_unpruned=count_params(algo.architecture),
        max_abs_diff=diff)
    structure['resources'] = summary
    paths = write_export(out_dir, cfg, pruned, structure, checkpoint, summary,
                         dataset_meta)
    return dict(**paths, **summary)


def verify_export(algo, pruned: torch.nn.Module,
                  atol: float = 1e-4) -> Tuple[float, int]:
    """Check that ``pruned`` computes what the masked ``algo`` computes.

    Both run on the mutator's demo input (same seed); the FLOPs counted on
    the exported model must equal the masked count.

    Args:
        algo (PruningAlgorithm): The masked model (eval mode).
        pruned (nn.Module): Its export (eval mode).
        atol (float): Largest allowed output difference, scaled by the
            largest absolute output when that exceeds 1 (fp32 rounding alone
            exceeds any fixed tolerance on huge logits).

    Returns:
        tuple[float, int]: The largest absolute output difference and the
        FLOPs of the exported model.

    Raises:
        ExportError: the outputs or the FLOPs differ.
    """
    demo = algo.mutator.demo_input
    with torch.no_grad():
        torch.manual_seed(0)
        expected = demo(algo.architecture)
        torch.manual_seed(0)
        actual = demo(pruned)
    diff = max_abs_diff(expected, actual)
    scale = max_abs_value(expected)
    if not outputs_agree(diff, scale, atol):
        raise ExportError(
            f'masked and exported outputs differ by {diff:.3g} > {atol} x '
            f'{max(1.0, scale):.3g} (largest |output|); a layer on the '
            'channel path is not handled. Run tools/analysis/coverage.py on '
            'the config to find it.')
    with torch.no_grad():
        exported = count_resources(record_layers(pruned, demo))['flops']
    masked = algo.mutator.resources()['flops']
    if exported != masked:
        raise ExportError(
            f'FLOPs counted on the exported model ({exported}) differ '
            f'from the masked count ({masked})')
    return diff, exported


def write_export(out_dir: str, cfg: Config, pruned: torch.nn.Module,
                 structure: Dict, checkpoint: str, summary: Dict,
                 dataset_meta: Optional[Dict] = None) -> Dict[str, str]:
    """Write ``structure.json``, ``pruned.pth`` and ``deploy_config.py``.

    Each file is replaced atomically (temporary files of an export killed
    before are removed first); the checkpoint records the hash of the
    structure written just before it, so a structure and a checkpoint of two
    different exports (one killed in between) are detected by
    :func:`mmifso.apis.check_checkpoint_matches_config`.

    Args:
        out_dir (str): Output directory (created if needed).
        cfg (Config): The pruning config (the deploy config is made from it).
        pruned (nn.Module): The exported model.
        structure (dict): Its structure (:func:`save_structure` format).
        checkpoint (str): The masked checkpoint it was exported from.
        summary (dict): FLOPs/params figures stored in the checkpoint's meta.
        dataset_meta (dict, optional): Class names, palette, ... of the
            masked checkpoint (``meta['dataset_meta']``), kept in
            ``pruned.pth`` where the upstream APIs read them.

    Returns:
        dict: ``checkpoint``, ``structure`` and ``config``: the paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    out_dir = osp.abspath(out_dir)
    structure_path = osp.join(out_dir, 'structure.json')
    ckpt_path = osp.join(out_dir, 'pruned.pth')
    config_path = osp.join(out_dir, 'deploy_config.py')
    for path in (structure_path, ckpt_path, config_path):
        remove_stale_temp_files(path)  # of an export killed before
    save_structure(structure, structure_path)
    meta = dict(
        kind='pruned',
        structure=structure_path,
        structure_sha256=file_sha256(structure_path),
        deploy_config=config_path,
        source_checkpoint=osp.abspath(checkpoint),
        **summary)
    ckpt_meta = dict(mmifso=meta)
    if dataset_meta is not None:
        ckpt_meta['dataset_meta'] = copy.deepcopy(dataset_meta)
    save_torch(dict(state_dict=pruned.state_dict(), meta=ckpt_meta),
               ckpt_path)
    deploy, header = pruning_deploy_config(cfg, structure_path, ckpt_path)
    save_text(header + deploy.pretty_text, config_path)
    return dict(
        checkpoint=ckpt_path, structure=structure_path, config=config_path)
