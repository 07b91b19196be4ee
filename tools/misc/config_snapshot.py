"""Snapshot the fully merged configs, or compare two snapshots.

Usage:
    python tools/misc/config_snapshot.py --out before.json [--root configs]
    python tools/misc/config_snapshot.py --out after.json --compare before.json

Every config under ``--root`` (``_base_`` folders excepted) is loaded with
mmengine's ``Config.fromfile`` and stored as its ``to_dict()``, keyed by file
name (so a config that moved to another folder is still compared with
itself). ``--compare`` reports every config whose merged dict differs from
the earlier snapshot (tuples and lists are told apart) or that disappeared,
and exits with status 1 if any did; new configs are listed.

Top-level keys defined by the variables-only fragments under
``configs/ifso/_base_/pruning/`` are left out of the comparison: they are the
shared settings themselves, used by the configs through ``_base_``; what the
configs build from them (``model``, ``custom_hooks``, ...) is compared.
"""
import argparse
import json
import os.path as osp
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)

FRAGMENTS = Path(ROOT) / 'configs' / 'ifso' / '_base_' / 'pruning'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='snapshot to write')
    parser.add_argument(
        '--root', default=osp.join(ROOT, 'configs'),
        help='folder searched for configs')
    parser.add_argument('--compare', help='an earlier snapshot')
    return parser.parse_args(argv)


def canonical(value):
    """``value`` as JSON that keeps the difference of tuples and lists."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [canonical(v) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return {'repr': repr(value)}


def fragment_keys() -> Set[str]:
    """Top-level names defined by the variables-only pruning fragments."""
    from mmengine.config import Config
    keys: Set[str] = set()
    for path in sorted(FRAGMENTS.glob('*.py')):
        keys.update(Config.fromfile(str(path)).keys())
    return keys


def snapshot(root: str) -> Dict[str, dict]:
    """``{file name: canonical merged config}`` of every config in root."""
    from mmengine.config import Config
    configs = sorted(
        p for p in Path(root).rglob('*.py') if '_base_' not in p.parts)
    names = [p.name for p in configs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SystemExit(f'config file names must be unique: {twice}')
    return {
        p.name: dict(
            path=str(p.relative_to(root)),
            config=canonical(Config.fromfile(str(p)).to_dict()))
        for p in configs
    }


def compare(before: Dict[str, dict], after: Dict[str, dict],
            ignored: Set[str]) -> List[str]:
    """What differs between two snapshots, one line per difference."""
    problems = [f'missing now: {n}' for n in sorted(set(before) - set(after))]
    for name in sorted(set(before) & set(after)):
        old = {k: v for k, v in before[name]['config'].items()
               if k not in ignored}
        new = {k: v for k, v in after[name]['config'].items()
               if k not in ignored}
        for key in sorted(set(old) | set(new)):
            if old.get(key, '<absent>') != new.get(key, '<absent>'):
                problems.append(
                    f'{name}: {key}: {json.dumps(old.get(key, "<absent>"))}'
                    f' -> {json.dumps(new.get(key, "<absent>"))}')
    return problems


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmifso.utils import save_json
    current = snapshot(args.root)
    save_json(current, args.out)
    print(f'wrote {len(current)} merged configs to {args.out}')
    if not args.compare:
        return 0
    with open(args.compare) as f:
        before = json.load(f)
    ignored = fragment_keys()
    problems = compare(before, current, ignored)
    for name in sorted(set(current) - set(before)):
        print(f'new (not compared): {name}')
    for line in problems:
        print(line)
    print(f'{len(set(before) & set(current))} configs compared (keys of the '
          f'fragments left out: {sorted(ignored)}): '
          f'{len(problems)} differences')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
