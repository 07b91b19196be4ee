"""Every shipped detector config set runs end to end on COCO-format data.

For each folder of configs/ifso/detection (found as
tests/test_detection_config_sets.py finds them) the shipped prune config
prunes in a real mmengine Runner, built as tools/train.py builds it
(:func:`mmifso.apis.runner.build_runner`, which checks the checkpoint
against the config), takes two IFSO pruning steps and is evaluated with
mmdet's real ``CocoMetric``; its checkpoint is exported as
tools/export_pruned.py exports it (:func:`export_checkpoint`, which checks
the exported model against the masked one); the shipped deploy config tests
the export (the masked model's metrics) and the shipped fine-tune config
trains from it.

A user with COCO only sets ``data_root``; here the data is the offline
shapes set in COCO's layout (``tests/shapes_det.py``), so a few things more
are changed and nothing else: the class names and the heads' number of
classes (the shapes' five), a 64 px image scale (the prune config's demo
input too), no data workers, one epoch of two iterations with a pruning step
on each, no download (``load_from`` and the pretrained backbone
initialisation; YOLOX's multi-scale batch resize is off); the demo input
of the FLOPs count and the export check is one 64 px image (with 16 fixed
RoIs for Faster R-CNN's RoI head instead of 1000). The export
directory of the deploy and fine-tune configs is the test's own. Backbones
keep their depth (ResNet-50 for the 1x configs).
"""
import glob
import os.path as osp
from pathlib import Path

import pytest
import torch

from mmifso.apis.export import export_checkpoint
from mmifso.apis.runner import build_runner
from mmifso.structures import load_structure
from shapes_det import load_config, on_shapes, pruning_hook, shapes_coco

DET_DIR = Path(__file__).resolve().parents[2] / 'configs' / 'ifso' / \
    'detection'
FOLDERS = sorted(p.name for p in DET_DIR.iterdir()
                 if p.is_dir() and not p.name.startswith(('_', '.')))
SIZE = 64
STEPS = 2  # two iterations (4 images, batch 2), a pruning step on each


def config_of(folder: str, kind: str) -> str:
    [path] = sorted((DET_DIR / folder).glob(f'ifso_{kind}_*.py'))
    return str(path)


def log_of(work_dir: str) -> str:
    [path] = glob.glob(osp.join(work_dir, '*', '*.log'))
    with open(path) as f:
        return f.read()


def mask_zeros(state: dict) -> int:
    return sum(
        int((v == 0).sum()) for k, v in state.items()
        if k.startswith('mutator.units.') and k.endswith('.mask'))


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return shapes_coco(str(tmp_path_factory.mktemp('coco') / 'shapes_coco'),
                       SIZE)


@pytest.mark.parametrize('folder', FOLDERS)
def test_prune_export_deploy_finetune(folder, shapes, tmp_path):
    # Prune: the shipped prune config and its pruning hook, a step on each
    # iteration (interval 1) scored on one batch.
    cfg = load_config(config_of(folder, 'prune'))
    work = str(tmp_path / 'prune')
    on_shapes(cfg, shapes, SIZE, work, f'coco_runs_{folder}_prune')
    demo = cfg.model.mutator.demo_input
    demo.input_shape = (1, 3, SIZE, SIZE)
    # Fixed RoIs of a two-stage detector's demo forward (FLOPs counting and
    # export check): 1000 by default, mmdet's test-time RPN output.
    demo.num_proposals = 16
    hook = pruning_hook(cfg)
    hook.update(interval=1, score_batches=1)
    assert hook['channels_per_step'] == 1
    runner = build_runner(cfg)
    runner.train()
    # CocoMetric ran on the val split (an untrained model may detect
    # nothing, which mmdet reports as an empty result).
    log = log_of(work)
    assert 'Evaluating bbox' in log
    assert log.count('[mmifso] step iter') == STEPS
    ckpt = osp.join(work, 'epoch_1.pth')
    state = torch.load(ckpt, map_location='cpu')['state_dict']
    # A channel (or a block of channels tied by GroupNorm) per step; for
    # YOLOX/RTMDet the state_dict is the EMA model's (mmengine's EMAHook),
    # whose masks must be the model's.
    removed = mask_zeros(runner.model.state_dict())
    assert removed >= STEPS
    assert mask_zeros(state) == removed
    masked_metrics = runner.test()

    # Export, as tools/export_pruned.py does.
    out = export_checkpoint(cfg, ckpt, str(tmp_path / 'export'))
    for path in (out['checkpoint'], out['structure'], out['config']):
        assert osp.isfile(path)
    assert out['flops'] < out['flops_unpruned']
    assert out['params'] < out['params_unpruned']
    structure = load_structure(out['structure'])
    assert sum(len(u['pruned']) for u in structure['units']) == removed

    # The shipped deploy config tests the export: the masked model's
    # metrics.
    deploy = load_config(config_of(folder, 'deploy'))
    on_shapes(deploy,
              shapes,
              SIZE,
              str(tmp_path / 'deploy'),
              f'coco_runs_{folder}_deploy',
              load_from=out['checkpoint'])
    deploy.model.structure = out['structure']
    metrics = build_runner(deploy).test()
    assert metrics.keys() == masked_metrics.keys()
    for key, value in masked_metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-3), key

    # The shipped fine-tune config trains the export (two iterations).
    finetune = load_config(config_of(folder, 'finetune'))
    ft_work = str(tmp_path / 'finetune')
    on_shapes(finetune,
              shapes,
              SIZE,
              ft_work,
              f'coco_runs_{folder}_ft',
              load_from=out['checkpoint'])
    finetune.model.structure = out['structure']
    build_runner(finetune).train()
    assert 'Evaluating bbox' in log_of(ft_work)
    pruned = torch.load(out['checkpoint'], map_location='cpu')['state_dict']
    tuned = torch.load(osp.join(ft_work, 'epoch_1.pth'),
                       map_location='cpu')['state_dict']
    assert {
        k: v.shape
        for k, v in tuned.items()
    } == {
        k: v.shape
        for k, v in pruned.items()
    }
    # It trained (from the exported weights).
    assert any(not torch.equal(tuned[k], v) for k, v in pruned.items()
               if v.dtype.is_floating_point)
    # Free the 0.6-0.8 GB of checkpoints written here: pytest keeps every
    # tmp_path to the end of the run, and the eight folders would hold 5 GB.
    for path in glob.glob(str(tmp_path / '**' / '*.pth'), recursive=True):
        Path(path).unlink()
