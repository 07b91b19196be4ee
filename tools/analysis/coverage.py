"""Which models mmifso can prune: analyse, randomly prune, export, compare.

Usage:
    python tools/analysis/coverage.py CONFIG [CONFIG ...] --out FILE.json
        [--targets] [--fraction 0.3] [--seed 0] [--cls-size SIZE]
        [--det-size SIZE] [--num-proposals 32] [--timeout 300]
        [--frozen unfreeze|skip] [--markdown FILE.md] [--check-apis]

``CONFIG`` is a config file or an upstream config such as
``mmdet::retinanet/retinanet_r50_fpn_1x_coco.py`` or
``mmpretrain::resnet/resnet18_8xb32_in1k.py``, optionally with ``@SIZE`` for
its demo image size (``...vgg16bn_8xb32_in1k.py@224``); ``--targets`` adds the
list of models tracked in ``docs/coverage.md``. For each config the model is
built without weights (nothing is downloaded), its channel units are found with
the demo input (``DetDemoInput`` for mmdet detectors, ``DemoInput`` otherwise,
at the size of the config's test pipeline unless ``--cls-size`` /
``--det-size`` / ``@SIZE`` give one), every prunable unit loses a random ``--fraction`` of
its channels (whole blocks where channels are tied), the masked model is
exported to a physically smaller one and both are run on the same demo input. A
config passes (``export_ok``) when the exported model runs, its outputs have
the masked model's shapes and differ by at most ``--atol`` (1e-4; relative to
the largest output when that exceeds 1), and the FLOPs counted on it equal the
masked count. Norm layers get random affine parameters and BatchNorm statistics
calibrated on random images first, so activations stay near unit scale and
removed channels are not zero before the gates.

One JSON record per config: ``config``, ``units``, ``prunable_channels``,
``export_ok``, ``max_abs_diff``, ``error`` (the stage, module and op that
blocked it), plus ``skipped`` (groups left out, with reasons),
``prunable_share`` (share of the hidden conv/linear output channels that are
in a prunable unit: layers whose outputs are model outputs, i.e. the
predictions, which are never pruned, are not counted), ``prunable_share_all``
(the same share of all conv/linear output channels), ``output_layers`` (how
many layers were left out of ``prunable_share``), ``blocked_units`` (units with tied channel blocks),
``flops_ratio`` (after the random pruning), ``output_scale``, ``input_shape``
and ``seconds``. The check itself is :func:`mmifso.apis.coverage.check_config`.

``--check-apis`` also writes each export as ``tools/export_pruned.py`` does
(``pruned.pth`` with generated class names in its ``dataset_meta``,
``deploy_config.py``) and uses it only through the upstream APIs on a
generated image: ``init_detector`` + ``inference_detector`` and
``DetInferencer`` for detectors, ``get_model``,
``ImageClassificationInferencer`` and ``inference_model`` for classifiers
(the predictions must equal the exported model's own, the class names the
checkpoint's); the unpruned weights with the deploy config must be refused
by each of them, by mmengine's non-strict ``load_checkpoint`` and by its
``Runner``. The record's ``apis`` holds the result per entry point
(:func:`mmifso.apis.api_check.check_upstream_apis`).
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

#: The models tracked in docs/coverage.md.
TARGETS = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'mmdet::atss/atss_r50_fpn_1x_coco.py',
    'mmdet::gfl/gfl_r50_fpn_1x_coco.py',
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py',
    'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    'mmdet::ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py',
    'mmpretrain::resnet/resnet18_8xb32_in1k.py',
    'mmpretrain::resnet/resnet50_8xb32_in1k.py',
    'mmpretrain::resnext/resnext50-32x4d_8xb32_in1k.py',
    'mmpretrain::seresnet/seresnet50_8xb32_in1k.py',
    'mmpretrain::res2net/res2net50-w14-s8_8xb32_in1k.py',
    'mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py',
    'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
    'mmpretrain::mobilenet_v3/mobilenet-v3-small_8xb128_in1k.py',
    'mmpretrain::mobilenet_v3/mobilenet-v3-large_8xb128_in1k.py',
    'mmpretrain::shufflenet_v2/shufflenet-v2-1x_16xb64_in1k.py',
    'mmpretrain::efficientnet/efficientnet-b0_8xb32_in1k.py',
    # VGG's classifier expects 7x7 maps: the image must be 224.
    'mmpretrain::vgg/vgg16bn_8xb32_in1k.py@224',
    'mmpretrain::densenet/densenet121_4xb256_in1k.py',
    'mmpretrain::repvgg/repvgg-A0_8xb32_in1k.py',
    'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py',
    'mmpretrain::hrnet/hrnet-w18_4xb32_in1k.py',
    'mmpretrain::cspnet/cspresnet50_8xb32_in1k.py',
    'mmpretrain::mobileone/mobileone-s0_8xb32_in1k.py',
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Channel-pruning coverage: analyse, prune randomly, '
        'export and compare each model')
    parser.add_argument('configs', nargs='*', help='config files or '
                        'pkg::path upstream configs')
    parser.add_argument('--out', required=True, help='JSON file to write')
    parser.add_argument(
        '--targets', action='store_true',
        help='add the models tracked in docs/coverage.md')
    parser.add_argument('--fraction', type=float, default=0.3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--cls-size',
        type=int,
        default=None,
        help='demo image size for classifiers (default: the config\'s test '
        'pipeline size, 64 if it sets none)')
    parser.add_argument(
        '--det-size',
        type=int,
        default=None,
        help='demo image size for detectors (default: the config\'s test '
        'pipeline size, 128 if it sets none)')
    parser.add_argument('--num-proposals', type=int, default=32,
                        help='RoIs per image for two-stage detectors')
    parser.add_argument('--atol', type=float, default=1e-4)
    parser.add_argument('--timeout', type=int, default=300,
                        help='seconds per config (0: none)')
    parser.add_argument(
        '--frozen', choices=['unfreeze', 'skip'], default='unfreeze',
        help="'unfreeze': make every parameter trainable first (measures "
        "what the analyzer can do); 'skip': keep the config's frozen layers "
        "and leave their units out (what a prune config with "
        "frozen='skip' gets)")
    parser.add_argument('--markdown', help='also write a markdown table')
    parser.add_argument(
        '--check-apis', action='store_true',
        help='also use each export through mmdet\'s / mmpretrain\'s own '
        'inference APIs and check that they refuse the unpruned checkpoint '
        'with the deploy config (the record\'s "apis")')
    args = parser.parse_args(argv)
    if args.targets:
        args.configs = list(args.configs) + [
            t for t in TARGETS if t not in args.configs
        ]
    if not args.configs:
        parser.error('give at least one config, or --targets')
    return args


def markdown_table(records: List[Dict]) -> str:
    rows = [
        '| config | units | prunable channels (share) | export ok | '
        'max abs diff | '
        'FLOPs after 30% | skipped groups | error |',
        '|---|---|---|---|---|---|---|---|'
    ]
    for r in records:
        name = r['config'].split('::')[-1].split('/')[-1].replace('.py', '')
        ratio = '' if r['flops_ratio'] is None else f'{r["flops_ratio"]:.2f}'
        diff = '' if r['max_abs_diff'] is None else f'{r["max_abs_diff"]:.1e}'
        err = (r['error'] or '').replace('|', '/')
        share = r.get('prunable_share')
        share = f' ({share:.0%})' if share is not None else ''
        rows.append(
            f'| {name} | {r["units"]} | {r["prunable_channels"]}{share} | '
            f'{"yes" if r["export_ok"] else "**no**"} | {diff} | {ratio} | '
            f'{len(r["skipped"])} | {err[:160]} |')
    return '\n'.join(rows) + '\n'


def api_table(records: List[Dict]) -> str:
    """The markdown table of the ``--check-apis`` results: per config, the
    entry points that work (of those run), the largest difference of their
    predictions from the exported model's, the entry points that refuse the
    unpruned checkpoint with the deploy config, what the unpruned config
    does with ``pruned.pth`` (recorded, not counted), and the first
    failure."""
    rows = [
        '| config | works | unsupported | max rel. diff | mismatched '
        'checkpoint refused | pruned.pth into the unpruned config | result |',
        '|---|---|---|---|---|---|---|'
    ]
    for r in records:
        apis = r.get('apis')
        if apis is None:
            continue
        name = r['config'].split('::')[-1].split('/')[-1].replace('.py', '')
        works = apis.get('works', {})
        ok = [k for k, v in works.items() if v == 'works']
        unsupported = [k for k, v in works.items()
                       if v.startswith('unsupported')]
        run = len(works) - len(unsupported)
        refused = {k: v for k, v in apis.get('mismatch', {}).items()
                   if not k.startswith('(')}
        n_refused = sum(v == 'refused' for v in refused.values())
        reverse = [v for k, v in apis.get('mismatch', {}).items()
                   if k.startswith('(')]
        reverse = reverse[0].split(' (')[0] if reverse else ''
        diff = apis.get('max_diff')
        diff = '' if diff is None else f'{diff:.1e}'
        result = 'works' if apis.get('ok') else \
            '**fails**: ' + (apis.get('error') or '').replace('|', '/')[:200]
        rows.append(
            f'| {name} | {len(ok)}/{run} | {", ".join(unsupported) or "-"} '
            f'| {diff} | {n_refused}/{len(refused)} | {reverse} | {result} |')
    return '\n'.join(rows) + '\n'


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    import logging

    from mmengine.logging import MMLogger

    from mmifso.apis.coverage import check_config
    from mmifso.utils import save_json, save_text
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    records = []
    for config in args.configs:
        record = check_config(
            config,
            fraction=args.fraction,
            seed=args.seed,
            cls_size=args.cls_size,
            det_size=args.det_size,
            num_proposals=args.num_proposals,
            atol=args.atol,
            timeout=args.timeout,
            frozen=args.frozen,
            check_apis=args.check_apis)
        records.append(record)
        status = 'ok ' if record['export_ok'] else 'FAIL'
        print(f'[{status}] {config}: {record["units"]} units, '
              f'{record["prunable_channels"]} channels, diff '
              f'{record["max_abs_diff"]}, {record["seconds"]} s'
              + (f'\n       {record["error"]}' if record['error'] else ''),
              flush=True)
        if 'apis' in record:
            apis = record['apis']
            print(f'       upstream APIs: '
                  f'{"ok" if apis["ok"] else "FAIL"} '
                  f'({apis.get("seconds")} s)'
                  + (f': {apis["error"]}' if apis['error'] else ''),
                  flush=True)
        save_json(records, args.out)  # after every config: partial runs
    if args.markdown:
        text = markdown_table(records)
        if args.check_apis:
            text += '\n' + api_table(records)
        save_text(text, args.markdown)
    passed = sum(r['export_ok'] for r in records)
    print(f'{passed}/{len(records)} configs export exactly; wrote {args.out}')
    if args.check_apis:
        apis_ok = sum(r['apis']['ok'] for r in records)
        print(f'{apis_ok}/{len(records)} exports work through the upstream '
              'APIs and refuse the unpruned checkpoint')
    return records


if __name__ == '__main__':
    main()
