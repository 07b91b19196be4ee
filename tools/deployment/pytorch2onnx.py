"""Export a pruned mmpretrain classifier or mmdet detector to ONNX.

Usage:
    python tools/deployment/pytorch2onnx.py DEPLOY_CONFIG PRUNED_CKPT \
        --shape 1 3 224 224 --out model.onnx [--dynamic-batch]

DEPLOY_CONFIG and PRUNED_CKPT are what ``tools/export_pruned.py`` writes
(``deploy_config.py``, ``pruned.pth``); a plain config with its checkpoint
works too (e.g. the unpruned baseline, to time both). The graph is the raw
``mode='tensor'`` forward: its input is the pre-processed image batch, its
outputs the flattened tensors of that forward (no softmax, NMS or box
decoding). The model is run with ONNX Runtime and the file is kept only if
every output is within ``--rtol`` (relative to its largest magnitude) of
PyTorch; otherwise the tool exits with an error and writes nothing.
"""
import argparse
import json


def parse_args():
    from mmifso.utils import add_cfg_options
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='deploy_config.py (or a plain config)')
    parser.add_argument('checkpoint', help='pruned.pth (or a plain one)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=4,
        required=True,
        metavar=('N', 'C', 'H', 'W'),
        help='input shape, e.g. 1 3 224 224')
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument(
        '--dynamic-batch',
        action='store_true',
        help='dynamic batch dimension (checked at N and N + 1)')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument(
        '--rtol',
        type=float,
        default=1e-4,
        help='largest allowed max|ORT - torch| / max|torch| of any output')
    parser.add_argument(
        '--time',
        type=int,
        default=0,
        metavar='ROUNDS',
        help='then time PyTorch (eager and TorchScript) and ONNX Runtime '
        '(interleaved medians of ROUNDS samples, torch\'s thread count)')
    add_cfg_options(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    from mmifso.apis import exit_on_errors, export_onnx, load_config, time_onnx

    # OnnxExportError, unreadable checkpoints and missing files: the message
    # says what to do.
    with exit_on_errors('tools/deployment/pytorch2onnx.py', FileNotFoundError,
                        RuntimeError, ValueError):
        cfg = load_config(args.config, args.cfg_options)
        result = export_onnx(cfg, args.checkpoint, args.out, args.shape,
                             args.dynamic_batch, args.opset, args.rtol)
    print(json.dumps(result, indent=2))
    print(f'wrote {result["path"]}: {len(result["outputs"])} outputs, max '
          f'relative ORT/torch difference {max(result["max_rel_err"]):.2e}')
    if args.time:
        t = time_onnx(cfg, args.checkpoint, args.out, args.shape, args.time)
        print(f'latency at {tuple(args.shape)}, {t["threads"]} threads: '
              f'PyTorch {t["torch_ms"]:.2f} ms (TorchScript optimised for '
              f'inference {t["torchscript_ms"]:.2f} ms), ONNX Runtime '
              f'{t["onnxruntime_ms"]:.2f} ms (medians of {args.time})')


if __name__ == '__main__':
    main()
