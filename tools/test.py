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
from typing import Optional

# ``python tools/test.py`` from a checkout works without installing mmifso.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config  # noqa: E402

from mmifso.apis.runner import (add_runner_arguments,  # noqa: E402
                                build_tool_runner, default_work_dir,
                                exit_on_errors, set_local_rank)
from mmifso.utils import (ParseTimeVariableError,  # noqa: E402
                          merge_cfg_options)

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
        '--amp',
        action='store_true',
        help='enable automatic-mixed-precision test')
    add_runner_arguments(parser)
    args = parser.parse_args(argv)
    set_local_rank(args)

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
    merge_cfg_options(cfg, args.cfg_options)

    # work_dir: command line > the config's own > ./work_dirs/<config name>
    default_work_dir(cfg, args.work_dir, args.config)

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
    with exit_on_errors('tools/test.py', ParseTimeVariableError):
        cfg = merge_args(Config.fromfile(args.config), args)
    # Safe checkpoint loading, checkpoint/config check, CPU distributed set-up.
    runner = build_tool_runner(cfg, args, 'tools/test.py')

    if args.out and args.out_item == 'pred':
        runner.test_evaluator.metrics.append(prediction_dumper(cfg, args.out))
    metrics = runner.test()
    report_metrics(metrics, args.out if args.out_item == 'metrics' else None)


def report_metrics(metrics: Optional[dict], out: Optional[str]) -> None:
    """Print the metrics (main process) and write them to ``out``."""
    import mmengine
    from mmengine.dist import is_main_process
    if not is_main_process():
        return
    metrics = {k: jsonable(v) for k, v in (metrics or {}).items()}
    if out:
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        mmengine.dump(metrics, out)
    print('metrics: ' + json.dumps(metrics, sort_keys=True))


if __name__ == '__main__':
    main()
