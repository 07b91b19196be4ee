"""Does a checkpoint fit the config it is used with?

mmifso produces three kinds of checkpoints, and each needs its own kind of
config:

* masked: full-size weights under ``architecture.`` plus channel masks under
  ``mutator.units.`` (a pruning run); config ``model.type=
  'mmifso.PruningAlgorithm'`` (a plain checkpoint also loads into it);
* pruned: upstream key names, smaller shapes (``tools/export_pruned.py``, or
  fine-tuned from its output); config ``model.type='mmifso.PrunedModel'``;
* plain: upstream key names and shapes; the upstream config.

mmengine's Runner loads checkpoints with ``strict=False``: a checkpoint of the
wrong kind only logs warnings about missing keys and shape mismatches, then
trains or evaluates randomly initialised layers.
:func:`check_checkpoint_matches_config` turns that silent failure into an
error that says which config to use. ``tools/train.py`` and
``tools/test.py`` call it before they build the runner, the pruning hook
(:func:`check_checkpoint_fits_model`) before the Runner loads a checkpoint.
The checks only read checkpoints and configs, so they live in ``utils`` (the
lowest layer) and ``mmifso.apis`` re-exports them.
"""
import ast
import copy
import glob
import hashlib
import os.path as osp
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .io import load_checkpoint_file

__all__ = [
    'MASKED', 'PRUNED', 'PLAIN', 'KINDS', 'CheckpointConfigMismatch',
    'ArchitectureMismatch', 'model_kind', 'model_type_from_cfg_text',
    'checkpoint_kind', 'is_remote', 'file_sha256',
    'check_checkpoint_matches_config', 'saved_model_cfg',
    'describe_model_cfg', 'config_hint', 'checkpoint_model_mismatches',
    'check_checkpoint_fits_model'
]

MASKED = 'masked'
PRUNED = 'pruned'
PLAIN = 'plain'
KINDS = (MASKED, PRUNED, PLAIN)

MASK_PREFIXES = ('mutator.units.', 'module.mutator.units.')
REMOTE_PREFIXES = ('http://', 'https://', 's3://', 'petrel://',
                   'open-mmlab://', 'openmmlab://', 'torchvision://',
                   'modelzoo://', 'pavi://')
EXPORT_HINT = ('`python tools/export_pruned.py CONFIG CKPT --out-dir DIR`')


class CheckpointConfigMismatch(ValueError):
    """The checkpoint is of another kind than the config's model."""


class ArchitectureMismatch(CheckpointConfigMismatch):
    """The checkpoint's tensors have other shapes than the model's: it was
    saved from another architecture."""


# --------------------------------------------------------------------------- #
# Kinds
# --------------------------------------------------------------------------- #
def _type_name(model_type: Any) -> str:
    """``'mmifso.PrunedModel'`` -> ``'PrunedModel'``; classes by name."""
    if model_type is None:
        return ''
    if not isinstance(model_type, str):
        model_type = getattr(model_type, '__name__', str(model_type))
    return model_type.split('.')[-1]


def _kind_of_type(model_type: Any) -> Optional[str]:
    name = _type_name(model_type)
    if name.endswith('PruningAlgorithm'):
        return MASKED
    if name.endswith('PrunedModel'):
        return PRUNED
    return None


def _model_cfg(cfg: Any) -> Any:
    """``cfg.model`` of a full config, or ``cfg`` if it is a model config."""
    if isinstance(cfg, Mapping):
        if 'type' not in cfg and isinstance(cfg.get('model'), Mapping):
            return cfg['model']
        return cfg
    model = getattr(cfg, 'model', None)  # mmengine Config
    return model if isinstance(model, Mapping) else cfg


def model_kind(model_cfg: Any) -> str:
    """Kind of checkpoint a model config expects.

    Args:
        model_cfg (dict | Config): A model config (``cfg.model``) or a full
            config (its ``model`` is used).

    Returns:
        str: ``'masked'`` (type ending with ``PruningAlgorithm``),
        ``'pruned'`` (type ending with ``PrunedModel``) or ``'plain'``. A
        test-time-augmentation wrapper (``module=...``) is looked through.
    """
    model_cfg = _model_cfg(model_cfg)
    if not isinstance(model_cfg, Mapping):
        return PLAIN
    kind = _kind_of_type(model_cfg.get('type'))
    if kind is not None:
        return kind
    inner = model_cfg.get('module')  # TTA wrappers: dict(type=..., module=)
    if isinstance(inner, Mapping):
        return model_kind(inner)
    return PLAIN


def pruned_architecture_cfg(model_cfg: Mapping) -> Dict:
    """The upstream model config of a ``PrunedModel`` config.

    Two forms are accepted: the nested one, ``dict(type='mmifso.PrunedModel',
    architecture=dict(type='RetinaNet', ...), structure=...)``, and the flat
    one that export writes, in which the upstream fields sit at the top
    level next to ``architecture_type`` (so ``cfg.model.backbone`` exists, as
    mmdet's and mmpretrain's tools expect): ``dict(type='mmifso.PrunedModel',
    architecture_type='RetinaNet', structure=..., backbone=..., ...)``.

    Args:
        model_cfg (dict): The ``PrunedModel`` config.

    Returns:
        dict: A copy of the upstream model config (``type`` = the upstream
        type).

    Raises:
        ValueError: if both or neither of ``architecture`` and
            ``architecture_type`` are given.
    """
    nested = model_cfg.get('architecture')
    flat_type = model_cfg.get('architecture_type')
    if (nested is None) == (flat_type is None):
        raise ValueError(
            'a PrunedModel config needs either architecture=dict(type=..., '
            '...) or architecture_type=... with the fields of that model at '
            f'the top level; got keys {sorted(model_cfg)}')
    if nested is not None:
        return copy.deepcopy(dict(nested))
    skip = ('type', 'architecture_type', 'structure')
    arch = {k: copy.deepcopy(v) for k, v in model_cfg.items() if k not in skip}
    arch['type'] = flat_type
    return arch


def _unwrap(model_cfg: Mapping) -> Mapping:
    """The model config inside a TTA wrapper (or the config itself)."""
    while _kind_of_type(model_cfg.get('type')) is None and isinstance(
            model_cfg.get('module'), Mapping):
        model_cfg = model_cfg['module']
    return model_cfg


def _state_dict(ckpt: Mapping) -> Mapping:
    state = ckpt.get('state_dict', ckpt)
    return state if isinstance(state, Mapping) else {}


def model_type_from_cfg_text(text: str) -> Optional[str]:
    """``model.type`` of a config saved as text (``meta['cfg']`` of runner
    checkpoints), read with :mod:`ast` (the text is not executed).

    Returns:
        str | None: The type string, or None if it cannot be read.
    """
    model_type = None
    for value in _model_assignments(text):
        if isinstance(value, ast.Call):
            for kw in value.keywords:
                if kw.arg == 'type' and isinstance(kw.value, ast.Constant):
                    model_type = kw.value.value
        elif isinstance(value, ast.Dict):
            for k, v in zip(value.keys, value.values):
                if isinstance(k, ast.Constant) and k.value == 'type' and \
                        isinstance(v, ast.Constant):
                    model_type = v.value
    return model_type if isinstance(model_type, str) else None


def _model_assignments(text: str) -> List[ast.expr]:
    """Values assigned to ``model`` at the top level of a config text, in
    order ([] if the text does not parse)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, TypeError):
        return []
    return [
        node.value for node in tree.body
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == 'model'
            for t in node.targets)
    ]


def _mmifso_meta(ckpt: Mapping) -> Dict:
    meta = ckpt.get('meta') if isinstance(ckpt, Mapping) else None
    if not isinstance(meta, Mapping):
        return {}
    info = meta.get('mmifso')
    return dict(info) if isinstance(info, Mapping) else {}


def _saved_cfg_type(ckpt: Mapping) -> Optional[str]:
    meta = ckpt.get('meta') if isinstance(ckpt, Mapping) else None
    if isinstance(meta, Mapping) and isinstance(meta.get('cfg'), str):
        return model_type_from_cfg_text(meta['cfg'])
    return None


def checkpoint_kind(path_or_dict: Union[str, Mapping]) -> str:
    """Kind of a checkpoint: ``'masked'``, ``'pruned'`` or ``'plain'``.

    * masked: has channel masks (keys starting with ``mutator.units.``), as
      written by a pruning run (``PruningAlgorithm``);
    * pruned: ``meta['mmifso']['kind'] == 'pruned'`` (``tools/
      export_pruned.py``), or saved by a runner whose ``model.type`` was
      ``PrunedModel`` (a fine-tuned pruned model);
    * plain: anything else (upstream key names and shapes).

    Args:
        path_or_dict (str | dict): A checkpoint file or its loaded content.

    Raises:
        FileNotFoundError: if the file does not exist.
        RuntimeError: if the file is corrupted or truncated.
    """
    ckpt = load_checkpoint_file(path_or_dict) if isinstance(
        path_or_dict, str) else path_or_dict
    if not isinstance(ckpt, Mapping):
        raise RuntimeError(
            f'{path_or_dict if isinstance(path_or_dict, str) else "input"} '
            f'is not a checkpoint (loaded a {type(ckpt).__name__}, expected '
            'a dict)')
    state = _state_dict(ckpt)
    if any(isinstance(k, str) and k.startswith(MASK_PREFIXES) for k in state):
        return MASKED
    declared = _mmifso_meta(ckpt).get('kind')
    if declared in (PRUNED, MASKED):
        return declared
    if _kind_of_type(_saved_cfg_type(ckpt)) == PRUNED:
        return PRUNED
    return PLAIN


def is_remote(path: str) -> bool:
    """Whether a ``load_from`` path is a URL / remote storage (not checked:
    it is downloaded by the runner)."""
    return isinstance(path, str) and (path.startswith(REMOTE_PREFIXES)
                                      or '://' in path)


# --------------------------------------------------------------------------- #
# The check
# --------------------------------------------------------------------------- #
def _shown_type(model_cfg: Mapping) -> str:
    t = model_cfg.get('type')
    return repr(t if isinstance(t, str) else _type_name(t))


def _upstream_model_cfg(model_cfg: Mapping) -> Mapping:
    """The upstream model config inside the mmifso wrappers
    (``PruningAlgorithm`` / ``PrunedModel``, nested or flat)."""
    upstream = model_cfg
    while _kind_of_type(upstream.get('type')) is not None:
        if isinstance(upstream.get('architecture'), Mapping):
            upstream = upstream['architecture']
        elif upstream.get('architecture_type') is not None:
            upstream = pruned_architecture_cfg(upstream)
        else:
            break
    return upstream


def _pruned_ckpt_message(ckpt_path: str, meta: Mapping, cfg_kind: str,
                         model_cfg: Mapping) -> str:
    """What to do with an exported pruned checkpoint given to a config
    with full-size layers."""
    deploy = meta.get('deploy_config')
    if deploy:
        where = f'use the deploy config written next to it: {deploy}'
    else:
        where = ("use the config it was trained with (model.type="
                 "'mmifso.PrunedModel' with the structure.json it was "
                 'exported with, e.g. the deploy_config.py written by '
                 'tools/export_pruned.py)')
    if cfg_kind == MASKED:
        why = ("To prune it further, set the pruning config's "
               "architecture to dict(type='mmifso.PrunedModel', "
               "architecture=..., structure=...).")
    else:
        why = ''
    return (f'{ckpt_path} is an exported pruned checkpoint (smaller layer '
            'shapes), but the config builds model.type='
            f'{_shown_type(model_cfg)} with full-size layers; {where}. ' +
            why).strip()


def _plain_ckpt_message(ckpt_path: str, structure: Any,
                        upstream_type: str) -> str:
    """What to do with a plain checkpoint given to a config whose model is
    an exported pruned model (``structure``: its structure config)."""
    shown = f' ({structure})' if isinstance(structure, str) else ''
    return (
        f'{ckpt_path} is an unpruned (plain) checkpoint with full-size '
        "layers, but the config's model is an exported pruned model "
        f"(type='mmifso.PrunedModel', structure{shown}) with fewer "
        'channels. '
        f'Evaluate or fine-tune it with a config whose model.type is the '
        f'unpruned {upstream_type}, or prune it with '
        "model.type='mmifso.PruningAlgorithm' (architecture="
        f'{upstream_type}). A PrunedModel config takes the pruned.pth '
        'written by tools/export_pruned.py (or a checkpoint fine-tuned '
        'from it).')


def _mismatch_message(ckpt_path: str, ckpt: Mapping, ckpt_kind: str,
                      model_cfg: Mapping) -> Optional[str]:
    """None if ``ckpt_kind`` fits ``model_cfg``, else what to do.

    One decision table over (checkpoint kind, config kind) pairs, best read
    top to bottom; the longer messages are built by
    :func:`_pruned_ckpt_message` and :func:`_plain_ckpt_message`.
    """
    cfg_kind = model_kind(model_cfg)
    model_cfg = _unwrap(model_cfg)
    arch = model_cfg.get('architecture')
    arch = arch if isinstance(arch, Mapping) else {}
    # A pruning config may prune an already pruned model further
    # (architecture=dict(type='mmifso.PrunedModel', ...)): then its plain
    # part is the pruned model.
    arch_kind = _kind_of_type(arch.get('type')) if cfg_kind == MASKED else None
    upstream_type = _shown_type(_upstream_model_cfg(model_cfg))
    meta = _mmifso_meta(ckpt)

    if ckpt_kind == PRUNED and PRUNED in (cfg_kind, arch_kind):
        structure = (model_cfg if cfg_kind == PRUNED else arch).get(
            'structure')
        message = _structure_hash_message(ckpt_path, meta, structure)
        if message is not None:
            return message
    if ckpt_kind == cfg_kind:
        return None
    if cfg_kind == MASKED and ckpt_kind == PLAIN and arch_kind != PRUNED:
        return None  # load_from a trained model to prune it
    if cfg_kind == MASKED and ckpt_kind == PRUNED and arch_kind == PRUNED:
        return None  # prune an exported model further

    if ckpt_kind == MASKED and cfg_kind == PLAIN:
        return (
            f'{ckpt_path} is a masked pruning checkpoint; evaluate it with '
            'the pruning config that produced it (model.type='
            "'mmifso.PruningAlgorithm') or export it with "
            f'{EXPORT_HINT} and use DIR/deploy_config.py (CKPT = '
            f'{ckpt_path}). The config builds model.type='
            f'{_shown_type(model_cfg)}, which would ignore the channel masks '
            'and evaluate the unpruned weights.')
    if ckpt_kind == MASKED and cfg_kind == PRUNED:
        return (
            f'{ckpt_path} is a masked pruning checkpoint (full-size weights '
            'plus channel masks), but the config builds an exported pruned '
            "model (model.type='mmifso.PrunedModel'); export it first with "
            f'{EXPORT_HINT} (CONFIG = the pruning config that produced it, '
            f'CKPT = {ckpt_path}) and use DIR/deploy_config.py with '
            'DIR/pruned.pth.')
    if ckpt_kind == PRUNED:
        return _pruned_ckpt_message(ckpt_path, meta, cfg_kind, model_cfg)
    if ckpt_kind == PLAIN and (cfg_kind == PRUNED or arch_kind == PRUNED):
        structure = (model_cfg if cfg_kind == PRUNED else arch).get(
            'structure')
        return _plain_ckpt_message(ckpt_path, structure, upstream_type)
    return (f'{ckpt_path} is a {ckpt_kind} checkpoint, but the config builds '
            f'model.type={_shown_type(model_cfg)} ({cfg_kind}).')


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _structure_hash_message(ckpt_path: str, meta: Mapping,
                            structure: Any) -> Optional[str]:
    """None unless the structure file differs from the one exported with
    the checkpoint (``meta['mmifso']['structure_sha256']``)."""
    recorded = meta.get('structure_sha256')
    if not recorded or not isinstance(structure, str) or \
            not osp.isfile(structure):
        return None
    if file_sha256(structure) == recorded:
        return None
    source = meta.get('source_checkpoint') or 'the masked checkpoint'
    return (f'{ckpt_path} was exported together with another structure file '
            f'than {structure} (the SHA-256 recorded in the checkpoint '
            'differs): an export was interrupted between its files, or the '
            'files of two exports were mixed. Run the export again: '
            f'{EXPORT_HINT} (CKPT = {source}) and use the deploy_config.py, '
            'structure.json and pruned.pth it writes, together.')


def check_checkpoint_matches_config(cfg: Any,
                                    checkpoint_path: str) -> Optional[str]:
    """Raise if ``checkpoint_path`` is of another kind than ``cfg.model``.

    Matching kinds pass silently. A plain checkpoint also fits a pruning
    config (``load_from`` a trained model to prune it).

    Args:
        cfg (Config | dict): A full config (``cfg.model`` is used) or a model
            config.
        checkpoint_path (str): Local checkpoint file. URLs and remote
            storage paths are not checked (returns None).

    Returns:
        str | None: The checkpoint kind, None for remote paths.

    Raises:
        CheckpointConfigMismatch: the kinds do not fit; the message says
            which config to use or what to run.
        FileNotFoundError: the checkpoint does not exist.
        RuntimeError: the checkpoint is corrupted or truncated.
    """
    if is_remote(checkpoint_path):
        return None
    checkpoint_path = osp.expanduser(checkpoint_path)
    ckpt = load_checkpoint_file(checkpoint_path)
    kind = checkpoint_kind(ckpt)
    model_cfg = _model_cfg(cfg)
    if not isinstance(model_cfg, Mapping):
        return kind
    message = _mismatch_message(checkpoint_path, ckpt, kind, model_cfg)
    if message is not None:
        raise CheckpointConfigMismatch(message)
    return kind


# --------------------------------------------------------------------------- #
# Checkpoint of another architecture
# --------------------------------------------------------------------------- #
#: Config fields that decide layer shapes, shown when describing a model.
SHAPE_KEYS = ('depth', 'arch', 'base_channels', 'stem_channels',
              'widen_factor', 'num_stages', 'in_channels', 'out_channels',
              'num_classes', 'structure')
#: Config fields holding sub-models, described recursively.
NESTED_KEYS = ('architecture', 'module', 'backbone', 'neck', 'head',
               'rpn_head', 'roi_head', 'bbox_head')


def _literal(node: ast.AST) -> Any:
    """Python value of a config expression (``dict(...)`` calls included);
    None where it is not a literal."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == 'dict' and not node.args:
        return {
            kw.arg: _literal(kw.value)
            for kw in node.keywords if kw.arg is not None
        }
    if isinstance(node, ast.Dict):
        return {
            _literal(k): _literal(v)
            for k, v in zip(node.keys, node.values) if k is not None
        }
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError,
            RecursionError):
        return None


def saved_model_cfg(ckpt: Mapping) -> Optional[Dict]:
    """``model`` of the config text a runner stored in ``meta['cfg']``
    (read with :mod:`ast`, not executed), or None."""
    meta = ckpt.get('meta') if isinstance(ckpt, Mapping) else None
    text = meta.get('cfg') if isinstance(meta, Mapping) else None
    if not isinstance(text, str):
        return None
    values = _model_assignments(text)
    model = _literal(values[-1]) if values else None
    return model if isinstance(model, dict) else None


def describe_model_cfg(model_cfg: Any, _depth: int = 0) -> str:
    """Short description of a model config: its types and the fields that
    decide layer shapes, e.g. ``ImageClassifier(backbone=ResNet(depth=50),
    head=LinearClsHead(in_channels=2048, num_classes=1000))``."""
    if not isinstance(model_cfg, Mapping):
        return repr(model_cfg)
    name = _type_name(model_cfg.get('type')) or '?'
    parts = []
    for key in NESTED_KEYS:
        value = model_cfg.get(key)
        if isinstance(value, Mapping) and _depth < 4:
            parts.append(f'{key}={describe_model_cfg(value, _depth + 1)}')
    for key in SHAPE_KEYS:
        if key in model_cfg and not isinstance(model_cfg[key], Mapping):
            parts.append(f'{key}={model_cfg[key]!r}')
    return f'{name}({", ".join(parts)})'


def _configs_next_to(path: Optional[str]) -> List[str]:
    """Config files a runner dumped next to a checkpoint (its work_dir)."""
    if not path or is_remote(path):
        return []
    return sorted(glob.glob(osp.join(glob.escape(osp.dirname(
        osp.abspath(path))), '*.py')))[:3]


def config_hint(ckpt: Mapping,
                path: Optional[str] = None,
                model_cfg: Optional[Mapping] = None) -> str:
    """Which config a checkpoint belongs to, from what it carries."""
    saved = saved_model_cfg(ckpt)
    hint = ''
    if saved is not None:
        hint += ('The run that saved it built model='
                 f'{describe_model_cfg(saved)}')
        if model_cfg is not None:
            hint += (', this config builds model='
                     f'{describe_model_cfg(_model_cfg(model_cfg))}')
        hint += '. '
    files = _configs_next_to(path)
    hint += 'Use the config of the run that saved the checkpoint'
    if files:
        hint += f' (next to it: {", ".join(files)})'
    if saved is not None:
        hint += ("; its text is stored in the checkpoint: mmengine's "
                 "Config.fromstring(ckpt['meta']['cfg'], '.py')")
    return hint + '.'


def _strip_module(state: Mapping) -> Dict:
    """mmengine strips ``module.`` (DDP) when loading; so do we."""
    return {(k[len('module.'):] if isinstance(k, str) and
             k.startswith('module.') else k): v
            for k, v in state.items()}


def _is_head_key(key: str) -> bool:
    return any('head' in part for part in key.split('.')[:-1])


def checkpoint_model_mismatches(model, ckpt: Mapping
                                ) -> Tuple[List[Tuple[str, tuple, tuple]],
                                           List[str], List[str]]:
    """Compare a checkpoint's tensors with a model's state dict.

    A plain checkpoint loaded into a ``PruningAlgorithm`` is compared under
    ``architecture.``, as the algorithm maps it when loading.

    Returns:
        tuple: ``(mismatched, missing_masks, unknown_masks)``: tensors found
        in both with other shapes ``(key, ckpt_shape, model_shape)``; mask
        keys of the model absent from a masked checkpoint; mask keys of the
        checkpoint absent from the model.
    """
    own = model.state_dict()
    state = _strip_module(_state_dict(ckpt))
    prefixed = any(isinstance(k, str) and k.startswith('architecture.')
                   for k in own)
    theirs_prefixed = any(
        isinstance(k, str) and k.startswith(('architecture.', 'mutator.'))
        for k in state)
    if prefixed and not theirs_prefixed:
        state = {f'architecture.{k}': v for k, v in state.items()}
    mismatched = []
    for key, value in state.items():
        mine = own.get(key)
        if isinstance(value, torch.Tensor) and mine is not None and \
                tuple(value.shape) != tuple(mine.shape):
            mismatched.append((key, tuple(value.shape), tuple(mine.shape)))
    own_masks = {k for k in own if k.startswith(MASK_PREFIXES)}
    their_masks = {k for k in state
                   if isinstance(k, str) and k.startswith(MASK_PREFIXES)}
    missing, unknown = [], []
    if their_masks:
        missing = sorted(own_masks - their_masks)
        unknown = sorted(their_masks - own_masks)
    return mismatched, missing, unknown


def check_checkpoint_fits_model(model,
                                ckpt: Mapping,
                                path: Optional[str] = None,
                                model_cfg: Optional[Mapping] = None,
                                allow_head_mismatch: bool = True
                                ) -> List[Tuple[str, tuple, tuple]]:
    """Raise if a checkpoint was saved from another architecture.

    mmengine loads checkpoints with ``strict=False``: tensors of other shapes
    are skipped with a warning, so a checkpoint of another architecture
    would leave layers randomly initialised and, for a masked checkpoint,
    the channel masks unloaded (an unpruned model that looks pruned).

    * masked checkpoint (channel masks): any shape mismatch, or masks of
      other units, is an error;
    * plain checkpoint: a mismatch outside the heads is an error; one only in
      ``*head*`` modules (a new classifier for another number of classes) is
      returned for the caller to warn about when ``allow_head_mismatch``.

    Args:
        model (nn.Module): The model the checkpoint will be loaded into.
        ckpt (dict): The loaded checkpoint.
        path (str, optional): Its file, for the message.
        model_cfg (dict, optional): The config's model, for the message.
        allow_head_mismatch (bool): See above.

    Returns:
        list: The tolerated head mismatches ``(key, ckpt_shape,
        model_shape)``.

    Raises:
        ArchitectureMismatch: the message lists the mismatches and says which
            config to use.
    """
    mismatched, missing, unknown = checkpoint_model_mismatches(model, ckpt)
    masked = checkpoint_kind(ckpt) == MASKED
    if not (mismatched or missing or unknown):
        return []
    if mismatched and not (missing or unknown) and not masked and \
            allow_head_mismatch and all(_is_head_key(k)
                                        for k, _, _ in mismatched):
        return mismatched
    what = f'checkpoint {path}' if path else 'the checkpoint'
    problems = []
    if mismatched:
        shown = '; '.join(f'{k}: checkpoint {list(a)} vs model {list(b)}'
                          for k, a, b in mismatched[:3])
        problems.append(f'{len(mismatched)} tensors have other shapes than '
                        f'in the model built from the config ({shown}'
                        f'{"; ..." if len(mismatched) > 3 else ""})')
    if unknown:
        problems.append(f'it has channel masks of units the model does not '
                        f'have ({", ".join(unknown[:3])})')
    if missing:
        problems.append(f'it lacks the channel masks of units '
                        f'{", ".join(missing[:3])}')
    raise ArchitectureMismatch(
        f'{what} was saved from another architecture: '
        + '; '.join(problems) + '. ' + config_hint(ckpt, path, model_cfg))
