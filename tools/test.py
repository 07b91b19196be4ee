"""Test (and evaluate) a checkpoint: any mmifso, mmpretrain or mmdet config.

Usage:
    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
                                           [--trust-checkpoint]
                                           [--cfg-options k=v ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [args]

The checkpoint is checked against the config before anything is built:

* a masked pruning checkpoint (``flops_XX.pth``) needs its pruning config
  (``model.type='mmifso.PruningAlgorithm'``) or an export with
  ``tools/export_pruned.py`` first;
* an exported ``pruned.pth`` needs the ``deploy_config.py`` written next to it;
* a plain checkpoint cannot go into a ``PrunedModel`` config.

Checkpoints are unpickled with an allow-list of types, also by the Runner
(``--trust-checkpoint`` unpickles completely, for trusted files only).

``--out FILE.json`` (or ``.yaml``) writes the metrics; ``--out FILE.pkl``
dumps the predictions, as mmpretrain's and mmdet's tools do
(``--out-item`` overrides the choice made from the extension).
"""
import argparse
import json
import os
import os.path as osp
import sys

# ``python tools/test.py`` from a checkout works without installing mmifso.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402

from mmifso.utils.io import TRUST_CHECKPOINT_HELP  # noqa: E402

PICKLE_EXTS = ('.pkl', '.pickle')
METRIC_EXTS = ('.json', '.yaml', '.yml')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help='the directory to save the file containing evaluation metrics')
    parser.add_argument(
        '--out',
        help='output file: .json/.yaml for the metrics, .pkl for the '
        'predictions')
    parser.add_argument(
        '--out-item',
        choices=['metrics', 'pred'],
        help='what --out holds; defaults to metrics for .json/.yaml files '
        'and predictions for .pkl files')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic-mixed-precision test')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument(
        '--trust-checkpoint', action='store_true', help=TRUST_CHECKPOINT_HELP)
    # When using PyTorch version >= 2.0.0, the `torch.distributed.launch`
    # will pass the `--local-rank` parameter to `tools/test.py` instead
    # of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)

    if args.out is None and args.out_item is not None:
        parser.error('--out-item needs --out')
    if args.out is not None:
        if args.out_item is None:
            if args.out.endswith(PICKLE_EXTS):
                args.out_item = 'pred'
            elif args.out.endswith(METRIC_EXTS):
                args.out_item = 'metrics'
            else:
                parser.error(f'--out {args.out}: use a .json/.yaml file for '
                             'the metrics or a .pkl file for the predictions '
                             '(or set --out-item)')
        if args.out_item == 'pred' and not args.out.endswith(PICKLE_EXTS):
            parser.error('--out-item pred writes a pickle: --out must end '
                         'with .pkl or .pickle')
    return args


def merge_args(cfg, args):
    """Merge CLI arguments to config."""
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    cfg.load_from = args.checkpoint
    cfg.resume = False

    if args.amp:
        cfg.test_cfg = cfg.get('test_cfg', None) or dict()
        cfg.test_cfg.fp16 = True
    return cfg


def prediction_dumper(cfg, out: str):
    """mmdet's DumpDetResults for mmdet configs, else mmengine's."""
    if cfg.get('default_scope', None) == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        return DumpDetResults(out_file_path=out)
    from mmengine.evaluator import DumpResults
    return DumpResults(out_file_path=out)


def jsonable(value):
    try:
        return float(value) if not isinstance(value, (int, str)) else value
    except (TypeError, ValueError):
        return str(value)


def main(argv=None):
    args = parse_args(argv)

    if args.trust_checkpoint:
        from mmifso.utils.io import TRUST_ENV
        os.environ[TRUST_ENV] = '1'
    import mmifso  # noqa: F401  (registers the mmifso modules)
    from mmifso.utils.io import install_safe_checkpoint_loader

    # The Runner's own loads (load_from, resume) go through the restricted
    # unpickler too, not through mmengine's plain torch.load.
    install_safe_checkpoint_loader()
    from mmifso.apis.checks import (CheckpointConfigMismatch,
                                    check_checkpoint_matches_config)

    cfg = Config.fromfile(args.config)
    cfg = merge_args(cfg, args)

    try:
        check_checkpoint_matches_config(cfg, args.checkpoint)
    except (CheckpointConfigMismatch, FileNotFoundError, RuntimeError) as e:
        sys.exit(f'tools/test.py: {type(e).__name__}: {e}')

    import mmengine
    from mmengine.dist import is_main_process
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from mmifso.engine import setup_distributed
    setup_distributed(cfg)  # torchrun on CPUs: gloo + CPU-capable DDP

    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)

    if args.out and args.out_item == 'pred':
        runner.test_evaluator.metrics.append(prediction_dumper(cfg, args.out))

    metrics = runner.test()

    if is_main_process():
        metrics = {k: jsonable(v) for k, v in (metrics or {}).items()}
        if args.out and args.out_item == 'metrics':
            out_dir = osp.dirname(osp.abspath(args.out))
            os.makedirs(out_dir, exist_ok=True)
            mmengine.dump(metrics, args.out)
        print('metrics: ' + json.dumps(metrics, sort_keys=True))


if __name__ == '__main__':
    main()
