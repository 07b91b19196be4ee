"""Train a model: any mmifso, mmpretrain or mmdet config.

Usage:
    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                                 [--trust-checkpoint]
                                 [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG GPUS [args]

The same command trains a baseline (upstream config), prunes it
(``model.type='mmifso.PruningAlgorithm'`` with the ``mmifso.PruningHook``)
and fine-tunes the exported model (``deploy_config.py`` written by
``tools/export_pruned.py``). A checkpoint given by ``load_from`` or
``--resume CKPT`` is checked against the config first: a masked, exported or
plain checkpoint used with the wrong kind of config stops with what to use
instead (mmengine would only warn and train random layers). Checkpoints are
unpickled with an allow-list of types, also by the Runner's own loads
(``--trust-checkpoint`` unpickles completely, for trusted files only).
"""
import argparse
import os.path as osp
import sys

# ``python tools/train.py`` from a checkout works without installing mmifso.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, ConfigDict  # noqa: E402

from mmifso.apis.runner import (add_runner_arguments,  # noqa: E402
                                build_tool_runner, default_work_dir,
                                exit_on_errors, set_local_rank)
from mmifso.utils import (ParseTimeVariableError,  # noqa: E402
                          merge_cfg_options)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint '
        'in the work directory.')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--no-validate',
        action='store_true',
        help='whether not to evaluate the checkpoint during training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='whether to auto scale the learning rate according to the '
        'actual batch size and the original batch size.')
    parser.add_argument(
        '--no-pin-memory',
        action='store_true',
        help='whether to disable the pin_memory option in dataloaders.')
    parser.add_argument(
        '--no-persistent-workers',
        action='store_true',
        help='whether to disable the persistent_workers option in dataloaders.'
    )
    add_runner_arguments(parser)
    args = parser.parse_args(argv)
    set_local_rank(args)
    return args


def set_dataloader_defaults(cfg, args) -> None:
    """mmpretrain's tools/train.py dataloader defaults, for mmpretrain
    configs only (mmdet configs choose their own collate functions)."""
    import torch
    if cfg.get('default_scope', None) != 'mmpretrain':
        return
    for field in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(field, None) is None:
            continue
        loader = ConfigDict(
            pin_memory=torch.cuda.is_available(),
            persistent_workers=True,
            collate_fn=dict(type='default_collate'))
        loader.update(cfg[field])
        if args.no_pin_memory:
            loader.pin_memory = False
        if args.no_persistent_workers or not loader.get('num_workers', 0):
            # DataLoader refuses persistent workers without workers.
            loader.persistent_workers = False
        cfg[field] = loader


def merge_args(cfg, args):
    """Merge CLI arguments to config."""
    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    cfg.launcher = args.launcher

    # work_dir: command line > the config's own > ./work_dirs/<config name>
    default_work_dir(cfg, args.work_dir, args.config)

    if args.amp:
        enable_amp(cfg)

    # enable automatically scaling LR
    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and 'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError('Can not find "auto_scale_lr" or '
                               '"auto_scale_lr.base_batch_size" in your'
                               ' configuration file.')

    set_dataloader_defaults(cfg, args)

    merge_cfg_options(cfg, args.cfg_options)

    # resume training (after --cfg-options, which may set work_dir/load_from)
    if args.resume is not None:
        set_resume(cfg, args.resume)
    return cfg


def enable_amp(cfg) -> None:
    """Automatic mixed precision: mmengine's AmpOptimWrapper (GPU/NPU)."""
    from mmengine.device import is_cuda_available, is_npu_available
    if not (is_cuda_available() or is_npu_available()):
        raise SystemExit(
            '--amp needs a GPU (or NPU): mmengine\'s AmpOptimWrapper does '
            'not run on CPU; drop --amp')
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_wrapper == 'AmpOptimWrapper':
        print('AMP training is already enabled in your config.')
    else:
        assert optim_wrapper == 'OptimWrapper', (
            '`--amp` is only supported when the optimizer wrapper type is '
            f'`OptimWrapper` but got {optim_wrapper}.')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def set_resume(cfg, resume: str) -> None:
    """``--resume``: ``'auto'`` resumes the latest checkpoint of the work
    dir (or starts as the config says when there is none yet), a path
    resumes that checkpoint."""
    if resume != 'auto':
        cfg.resume = True
        cfg.load_from = resume
        return
    from mmengine.runner import find_latest_checkpoint
    latest = find_latest_checkpoint(cfg.work_dir) if osp.isdir(
        cfg.work_dir) else None
    if latest is not None:
        cfg.resume = True
        cfg.load_from = None  # the runner resumes the latest checkpoint
    else:
        # Nothing to resume yet: start as the config says (keeping its
        # load_from, e.g. the pruned.pth of a deploy config) instead of
        # silently training from scratch.
        print(f'--resume: no checkpoint in {cfg.work_dir} yet; starting '
              'a new run' + (f' from load_from={cfg.load_from}'
                             if cfg.get('load_from', None) else ''))
        cfg.resume = False


def main(argv=None):
    args = parse_args(argv)
    with exit_on_errors('tools/train.py', ParseTimeVariableError):
        cfg = merge_args(Config.fromfile(args.config), args)
    # Safe checkpoint loading, checkpoint/config check, CPU distributed set-up.
    build_tool_runner(cfg, args, 'tools/train.py').train()


if __name__ == '__main__':
    main()
