"""Export a masked pruning checkpoint as a physically smaller model.

Usage:
    python tools/export_pruned.py CONFIG CHECKPOINT --out-dir DIR

Writes DIR/pruned.pth, DIR/structure.json and DIR/deploy_config.py; then
``python tools/test.py DIR/deploy_config.py DIR/pruned.pth`` evaluates the
pruned model and ``tools/train.py DIR/deploy_config.py`` fine-tunes it.

Every file is written to a temporary file next to it and renamed, so a
killed export leaves each file either as it was or complete (and
``pruned.pth`` records the hash of the structure exported with it). The
checkpoint is read without unpickling code; set MMIFSO_TRUST_CHECKPOINTS=1
for a trusted checkpoint holding other objects. Bad input exits with a
message that says what to do.
"""
import argparse
import json


def parse_args():
    from mmifso.utils import add_cfg_options
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the pruning config')
    parser.add_argument('checkpoint', help='masked checkpoint (flops_XX.pth)')
    parser.add_argument('--out-dir', required=True, help='output directory')
    parser.add_argument(
        '--atol',
        type=float,
        default=1e-4,
        help='largest allowed masked/exported output difference')
    add_cfg_options(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    from mmifso.apis import exit_on_errors, export_checkpoint, load_config
    from mmifso.structures import StructureMismatchError
    from mmifso.utils import ParseTimeVariableError

    # ExportError, UnsafeCheckpointError and unreadable checkpoints are
    # RuntimeErrors: their messages say what to do (as a missing file's).
    with exit_on_errors('tools/export_pruned.py', FileNotFoundError,
                        RuntimeError, StructureMismatchError,
                        ParseTimeVariableError):
        cfg = load_config(args.config, args.cfg_options)
        result = export_checkpoint(cfg, args.checkpoint, args.out_dir,
                                   args.atol)
    flops_ratio = result['flops'] / result['flops_unpruned']
    params_ratio = result['params'] / result['params_unpruned']
    print(json.dumps(result, indent=2))
    print(f'FLOPs {result["flops_unpruned"] / 1e6:.2f}M -> '
          f'{result["flops"] / 1e6:.2f}M ({flops_ratio:.3f}), params '
          f'{result["params_unpruned"] / 1e6:.3f}M -> '
          f'{result["params"] / 1e6:.3f}M ({params_ratio:.3f}), max |masked '
          f'- exported| = {result["max_abs_diff"]:.2e}')
    print(f'test it: python tools/test.py {result["config"]} '
          f'{result["checkpoint"]}')


if __name__ == '__main__':
    main()
