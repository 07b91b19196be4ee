"""Turn a masked pruning checkpoint into a physically smaller model."""
import copy
import os
import os.path as osp
from typing import Dict, Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmifso.models.task_modules import (count_params, count_resources,
                                        record_layers)
from mmifso.registry import MODELS
from mmifso.structures import save_structure
from mmifso.utils import (load_checkpoint_file, remove_stale_temp_files,
                          save_text, save_torch)
from mmifso.utils.checkpoint_checks import (ArchitectureMismatch,
                                            check_checkpoint_fits_model,
                                            file_sha256)


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
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(
            f'{checkpoint} does not match the architecture of the config: '
            f'{str(e)[:600]}') from e
    return ckpt


def pruning_deploy_config(cfg: Config, structure_path: str,
                          checkpoint_path: str) -> Config:
    """The pruning config with the model replaced by its pruned form."""
    deploy = copy.deepcopy(cfg)
    deploy.model = dict(
        type='mmifso.PrunedModel',
        architecture=cfg.model['architecture'],
        structure=structure_path)
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
    return deploy


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
    load_masked_weights(algo, checkpoint, cfg.model)
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
    paths = write_export(out_dir, cfg, pruned, structure, checkpoint, summary)
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
    scale = max(1.0, max_abs_value(expected))
    if not diff <= atol * scale:
        raise ExportError(
            f'masked and exported outputs differ by {diff:.3g} > {atol} x '
            f'{scale:.3g} (largest |output|); a layer on the channel path is '
            'not handled. Run tools/analysis/coverage.py on the config to '
            'find it.')
    with torch.no_grad():
        exported = count_resources(record_layers(pruned, demo))['flops']
    masked = algo.mutator.resources()['flops']
    if exported != masked:
        raise ExportError(
            f'FLOPs counted on the exported model ({exported}) differ '
            f'from the masked count ({masked})')
    return diff, exported


def write_export(out_dir: str, cfg: Config, pruned: torch.nn.Module,
                 structure: Dict, checkpoint: str,
                 summary: Dict) -> Dict[str, str]:
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
    save_torch(
        dict(state_dict=pruned.state_dict(), meta=dict(mmifso=meta)),
        ckpt_path)
    deploy = pruning_deploy_config(cfg, structure_path, ckpt_path)
    save_text(deploy.pretty_text, config_path)
    return dict(
        checkpoint=ckpt_path, structure=structure_path, config=config_path)


def max_abs_value(a) -> float:
    """Largest absolute value in a (nested) tensor output."""
    if isinstance(a, torch.Tensor):
        return float(a.abs().max()) if a.numel() else 0.0
    if isinstance(a, (list, tuple)):
        return max([max_abs_value(x) for x in a] or [0.0])
    if isinstance(a, dict):
        return max([max_abs_value(x) for x in a.values()] or [0.0])
    return 0.0


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two (nested) tensor outputs."""
    if isinstance(a, torch.Tensor):
        if a.shape != b.shape:
            return float('inf')
        return float((a - b).abs().max()) if a.numel() else 0.0
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return float('inf')
        return max([max_abs_diff(x, y) for x, y in zip(a, b)] or [0.0])
    if isinstance(a, dict):
        return max([max_abs_diff(a[k], b[k]) for k in a] or [0.0])
    return 0.0
