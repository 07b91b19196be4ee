"""FLOPs and parameters of the model of a config, as mmifso counts them.

Usage:
    python tools/analysis/get_flops.py CONFIG [--shape H [W]]
        [--checkpoint CKPT] [--out FILE.json] [--cfg-options k=v ...]

Works for mmifso configs (``mmifso.PruningAlgorithm``: masked model,
``mmifso.PrunedModel``: exported model) and plain mmpretrain/mmdet configs.
Prints

* mmifso's count: conv+linear multiply-accumulates per image and parameters,
  the figures the pruning hook's FLOPs target refers to. For a
  ``PruningAlgorithm`` they are counted on the masked model
  (``model.mutator.resources()``); load a masked checkpoint with
  ``--checkpoint`` to see its FLOPs. For other models the conv/linear layers
  are recorded in one ``mode='tensor'`` forward of a ``(1, 3, H, W)`` batch.
* mmengine's ``get_model_complexity_info`` total for reference (it also counts
  normalisation, pooling, ... layers). For a ``PruningAlgorithm`` it runs on
  the exported copy of the masked model.

``--shape`` defaults to the demo input of the mutator / structure file, and
for plain models to the image size of the config's test pipeline (its
resize or crop; 224x224 when it sets none).
"""
import argparse
import copy
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmifso.utils import add_cfg_options, pipeline_input_size  # noqa: E402

DEFAULT_SHAPE = (224, 224)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='FLOPs and params of a model (mmifso and mmengine counts)')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        help='input image size: H W, or one number for a square image '
        '(default: the demo input of the mutator or structure, else the '
        "size of the config's test pipeline, else 224)")
    parser.add_argument(
        '--checkpoint',
        help='checkpoint to load first (masks of a PruningAlgorithm)')
    parser.add_argument('--out', help='write the numbers to this JSON file')
    add_cfg_options(parser)
    args = parser.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error('--shape takes H W or one size')
    if args.shape is not None and min(args.shape) <= 0:
        parser.error('--shape sizes must be positive')
    return args


def human(n: float, unit: str = '') -> str:
    for div, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(n) >= div:
            return f'{n / div:.3f} {suffix}{unit}'
    return f'{n:.0f} {unit}'.rstrip()


def _demo_input_cfg(model_cfg):
    mutator = model_cfg.get('mutator', None) or {}
    demo = mutator.get('demo_input', None) if hasattr(mutator, 'get') else None
    return demo


def _structure(model_cfg):
    from mmifso.structures import load_structure
    structure = model_cfg.get('structure', None)
    if isinstance(structure, str):
        return load_structure(structure)
    return structure if isinstance(structure, dict) else None


def resolve_input_shape(cfg, kind: str, shape_arg):
    """The input shape ``(1, C, H, W)`` and the demo input counting on it.

    Returns ``(shape, demo_shape, demo_cfg)``: ``demo_shape`` is the shape of
    the config's own demo input (mutator or structure file), if any. For a
    PruningAlgorithm the config's demo input is set to ``shape`` (the masked
    count is recorded on the demo input).
    """
    demo_cfg = None
    if kind == 'masked':
        demo_cfg = _demo_input_cfg(cfg.model)
        if demo_cfg is None:  # ChannelMutator's default demo input
            demo_cfg = dict(
                type='mmifso.DemoInput', input_shape=(1, 3) + DEFAULT_SHAPE)
    elif kind == 'pruned':
        structure = _structure(cfg.model)
        if structure is not None and isinstance(
                structure.get('demo_input'), dict):
            demo_cfg = dict(structure['demo_input'])
    demo_shape = None
    if isinstance(demo_cfg, dict) and demo_cfg.get('input_shape'):
        demo_shape = tuple(int(s) for s in demo_cfg['input_shape'])
    elif demo_cfg is not None:  # its default shape, or a built instance
        demo = demo_cfg if not isinstance(demo_cfg, dict) else \
            build_demo_input(demo_cfg, None)
        if getattr(demo, 'input_shape', None) is not None:
            demo_shape = tuple(int(s) for s in demo.input_shape)
    channels = demo_shape[1] if demo_shape else 3
    if shape_arg is None:
        hw = tuple(demo_shape[2:]) if demo_shape else (
            pipeline_input_size(cfg) or DEFAULT_SHAPE)
    else:
        hw = (shape_arg[0], shape_arg[-1])
    shape = (1, channels) + tuple(hw)
    if demo_cfg is None:  # plain model: detectors need data samples
        demo_cfg = dict(
            type='mmifso.DetDemoInput' if cfg.get('default_scope', None) ==
            'mmdet' else 'mmifso.DemoInput')
    if demo_shape is None or tuple(demo_shape[1:]) != shape[1:]:
        if not isinstance(demo_cfg, dict) and shape_arg is None:
            return shape, demo_shape, demo_cfg
        if not isinstance(demo_cfg, dict):
            sys.exit(f'get_flops.py: the mutator uses a custom demo input '
                     f'({demo_cfg!r}); --shape cannot change it, set it in '
                     'the config instead')
        demo_cfg = copy.deepcopy(demo_cfg)
        demo_cfg['input_shape'] = shape
        if kind == 'masked':
            cfg.model.mutator = cfg.model.get('mutator', None) or dict(
                type='mmifso.ChannelMutator')
            cfg.model.mutator.demo_input = demo_cfg
    return shape, demo_shape, demo_cfg


def build_demo_input(demo_cfg: dict, shape):
    """The demo input of ``demo_cfg``; mmifso's DemoInput if its type is
    not registered."""
    from mmifso.models.task_modules import DemoInput
    from mmifso.registry import TASK_UTILS
    if not isinstance(demo_cfg, dict):
        return demo_cfg  # an instance given in a Python config
    try:
        return TASK_UTILS.build(copy.deepcopy(dict(demo_cfg)))
    except KeyError:
        return DemoInput(shape) if shape is not None else None


def build_model(cfg):
    from mmengine.registry import init_default_scope

    from mmifso.registry import MODELS
    init_default_scope(cfg.get('default_scope', None) or 'mmengine')
    model_cfg = copy.deepcopy(cfg.model)
    # mmengine's Runner gives the top-level data_preprocessor to the model.
    if cfg.get('data_preprocessor', None) is not None and hasattr(
            model_cfg, 'setdefault'):
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    return MODELS.build(model_cfg)


def load_weights(model, cfg, checkpoint: str, kind: str) -> str:
    from mmengine.runner.checkpoint import load_state_dict

    from mmifso.apis import check_checkpoint_matches_config
    from mmifso.utils import load_checkpoint_file
    ckpt_kind = check_checkpoint_matches_config(cfg, checkpoint)
    ckpt = load_checkpoint_file(checkpoint)
    state = ckpt.get('state_dict', ckpt)
    if kind == 'masked':
        # Strict: the masks must all be there (a plain checkpoint is mapped
        # under architecture. with every channel kept).
        model.load_state_dict(state, strict=True)
    else:
        load_state_dict(model, state, strict=False, logger='current')
    return ckpt_kind


def mmifso_counts(model, kind: str, shape, demo_cfg) -> dict:
    import torch

    from mmifso.models.task_modules import (count_params, count_resources,
                                            record_layers)
    if kind == 'masked':
        res = dict(model.mutator.resources())
        full = count_resources(model.mutator.layer_records)
        res.update(
            flops_unpruned=full['flops'],
            params_unpruned=count_params(model.architecture))
        return res
    with torch.no_grad():
        records = record_layers(model, build_demo_input(demo_cfg, shape))
    res = count_resources(records)
    return dict(
        flops=res['flops'],
        params=count_params(model),
        layer_params=res['layer_params'])


def add_unpruned_from_structure(result: dict, cfg) -> None:
    """Unpruned figures of an exported model, from its structure file
    (written by tools/export_pruned.py; valid on its demo input only)."""
    try:
        structure = _structure(cfg.model) or {}
    except Exception:  # the model was built from it, so this is unlikely
        return
    res = structure.get('resources', {}) or {}
    ours = result['mmifso']
    if result['demo_shape'] != result['input_shape'] or not all(
            res.get(k) for k in ('flops_unpruned', 'params_unpruned')):
        return
    ours.update(
        flops_ratio=ours['flops'] / res['flops_unpruned'],
        params_ratio=ours['params'] / res['params_unpruned'],
        flops_unpruned=res['flops_unpruned'],
        params_unpruned=res['params_unpruned'])


def mmengine_counts(model, kind: str, shape) -> dict:
    from mmengine.analysis import get_model_complexity_info
    counted_on = 'model'
    target = model
    if kind == 'masked':
        try:
            target, _ = model.export()
            counted_on = 'exported copy of the masked model'
        except Exception as e:  # report, count the unpruned architecture
            target = model.architecture
            counted_on = (f'unpruned architecture (export failed: '
                          f'{type(e).__name__}: {e})')
    target.eval()
    try:
        info = get_model_complexity_info(
            target,
            input_shape=tuple(shape[1:]),
            show_table=False,
            show_arch=False)
    except Exception as e:
        return dict(error=f'{type(e).__name__}: {e}', counted_on=counted_on)
    return dict(
        flops=int(info['flops']),
        params=int(info['params']),
        activations=int(info['activations']),
        counted_on=counted_on)


def format_table(result: dict) -> str:
    rows = [('count', 'FLOPs (MACs)', 'params')]
    ours = result['mmifso']
    label = 'mmifso conv+linear' + (' (masked)'
                                    if result['kind'] == 'masked' else '')
    rows.append((label, human(ours['flops']), human(ours['params'])))
    if 'flops_unpruned' in ours:
        rows.append(('mmifso unpruned', human(ours['flops_unpruned']),
                     human(ours['params_unpruned'])))
        rows.append(('ratio', f'{ours["flops_ratio"]:.4f}',
                     f'{ours["params_ratio"]:.4f}'))
    ref = result['mmengine']
    if 'error' in ref:
        rows.append(('mmengine get_model_complexity_info', 'failed', '-'))
    else:
        rows.append(('mmengine get_model_complexity_info',
                     human(ref['flops']), human(ref['params'])))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    line = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'
    out = [line]
    for i, row in enumerate(rows):
        out.append('| ' + ' | '.join(
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths))) + ' |')
        if i == 0:
            out.append(line)
    out.append(line)
    notes = [f'mmengine counted on: {ref["counted_on"]}']
    if 'error' in ref:
        notes.append(f'mmengine failed: {ref["error"]}')
    if result['kind'] == 'masked' and result.get('demo_shape') and tuple(
            result['demo_shape']) != tuple(result['input_shape']):
        notes.append(
            f'the mutator was re-traced on {tuple(result["input_shape"])} '
            f'instead of its demo input {tuple(result["demo_shape"])}')
    return '\n'.join(out + notes)


def main(argv=None):
    args = parse_args(argv)
    import mmifso  # noqa: F401  (registers the mmifso modules)
    from mmifso.apis import exit_on_errors, load_config, model_kind
    from mmifso.utils import ParseTimeVariableError, save_json

    with exit_on_errors('get_flops.py', FileNotFoundError,
                        ParseTimeVariableError):
        cfg = load_config(args.config, args.cfg_options)
    kind = model_kind(cfg.model)
    shape, demo_shape, demo_cfg = resolve_input_shape(cfg, kind, args.shape)
    try:
        model = build_model(cfg)
    except Exception as e:
        sys.exit(f'get_flops.py: cannot build the model of {args.config}: '
                 f'{type(e).__name__}: {e}')
    checkpoint_kind = None
    if args.checkpoint:
        with exit_on_errors('get_flops.py', Exception):
            checkpoint_kind = load_weights(model, cfg, args.checkpoint, kind)
    model.eval()
    model_type = cfg.model.get('type')
    result = dict(
        config=args.config,
        model_type=model_type if isinstance(model_type, str) else getattr(
            model_type, '__name__', str(model_type)),
        kind=kind,
        input_shape=list(shape),
        demo_shape=list(demo_shape) if demo_shape else None,
        checkpoint=args.checkpoint,
        checkpoint_kind=checkpoint_kind,
        mmifso=mmifso_counts(model, kind, shape, demo_cfg),
        mmengine=mmengine_counts(model, kind, shape))
    if kind == 'pruned':
        add_unpruned_from_structure(result, cfg)
    print(f'config: {args.config}')
    print(f'model: {result["model_type"]} ({kind}), input shape '
          f'{tuple(shape)}' +
          (f', checkpoint {args.checkpoint}' if args.checkpoint else ''))
    print(format_table(result))
    if args.out:
        save_json(result, args.out)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
