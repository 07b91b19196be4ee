"""Every detector folder of configs/ifso/detection has a prune, a deploy and
a fine-tune config that fit together: the fine-tune config rebuilds the prune
config's architecture (flat PrunedModel form, readable by mmdet's
init_detector) and loads the pruned.pth exported next to the structure it
builds; the deploy config rebuilds it up to the backbone's training-only
settings (frozen stages, trainable norms), which it leaves as upstream."""
import ast
import copy
import os.path as osp
from pathlib import Path

import pytest
from mmengine.config import Config

from mmifso.apis import load_config
from mmifso.utils import pruned_architecture_cfg

DET_DIR = Path(__file__).resolve().parents[1] / 'configs' / 'ifso' / \
    'detection'
FOLDERS = sorted(p.name for p in DET_DIR.iterdir()
                 if p.is_dir() and not p.name.startswith(('_', '.')))


def config_of(folder: str, kind: str) -> Path:
    [path] = sorted((DET_DIR / folder).glob(f'ifso_{kind}_*.py'))
    return path


def upstream_config(path: Path) -> str:
    """The upstream detector config a prune config starts from (the first
    entry of its ``_base_``)."""
    tree = ast.parse(path.read_text())
    [bases] = [
        node.value for node in tree.body if isinstance(node, ast.Assign)
        and getattr(node.targets[0], 'id', None) == '_base_'
    ]
    return ast.literal_eval(bases)[0]


def without_training_settings(architecture: dict) -> dict:
    """The architecture without the backbone settings that only training
    reads (which stages are frozen, whether norms are trainable)."""
    architecture = copy.deepcopy(architecture)
    backbone = architecture['backbone']
    backbone.pop('frozen_stages', None)
    backbone.get('norm_cfg', {}).pop('requires_grad', None)
    return architecture


@pytest.mark.parametrize('folder', FOLDERS)
def test_detector_config_set(folder):
    prune = Config.fromfile(config_of(folder, 'prune'))
    deploy = Config.fromfile(config_of(folder, 'deploy'))
    finetune = Config.fromfile(config_of(folder, 'finetune'))
    stem = config_of(folder, 'prune').name[len('ifso_prune_'):]
    assert config_of(folder, 'deploy').name == 'ifso_deploy_' + stem
    assert config_of(folder, 'finetune').name == 'ifso_finetune_' + stem
    for cfg in (deploy, finetune):
        assert cfg.model.type == 'mmifso.PrunedModel'
        assert 'backbone' in cfg.model  # where init_detector reads it
        assert not any('PruningHook' in h['type']
                       for h in cfg.get('custom_hooks', []))
    assert pruned_architecture_cfg(finetune.model) == prune.model.architecture
    assert without_training_settings(pruned_architecture_cfg(
        deploy.model)) == without_training_settings(prune.model.architecture)
    # The detector's own hooks (EMA of YOLOX/RTMDet, SSD's checks) stay.
    upstream = load_config(upstream_config(config_of(folder, 'prune')))
    pruning = [h['type'] for h in prune.custom_hooks]
    assert all(h['type'] in pruning for h in upstream.get('custom_hooks', []))
    kept = [h['type'] for h in deploy.get('custom_hooks', [])]
    for hook in prune.custom_hooks:
        assert 'PruningHook' in hook['type'] or hook['type'] in kept
    assert finetune.load_from.endswith('pruned.pth')
    assert osp.dirname(finetune.load_from) == osp.dirname(
        finetune.model.structure)
    assert finetune.optim_wrapper.optimizer.lr == pytest.approx(
        deploy.optim_wrapper.optimizer.lr * 0.5)
