"""Pruning with an EMA hook: the averaged copy follows every mask change.

mmengine's ``EMAHook`` (YOLOX, RTMDet) deep-copies the masked model and
averages its parameters (with ``update_buffers=True`` its buffers, the masks
included, too). The averaged copy replaces the model for validation and in
every checkpoint's ``state_dict``, which is what gets exported. Its masks
must therefore be exactly the model's after every iteration: an averaged
mask of a removed channel only decays towards 0 (a stale channel, kept by
export), and one removed in the iteration's own pruning step would not be
removed at all.
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseAveragedModel
from mmengine.runner import Runner, load_checkpoint

from helpers import digits_batch, runner_cfg
from mmifso.apis.export import build_from_config, export_checkpoint
from mmifso.structures import load_structure
from shapes_det import load_config, on_shapes, pruning_hook, shapes_coco

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))
RTMDET = osp.join(ROOT, 'configs', 'ifso', 'detection', 'rtmdet',
                  'ifso_prune_rtmdet_tiny_8xb32-300e_coco.py')
MASK = 'mutator.units.'


def masks_of(model) -> dict:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.startswith(MASK) and k.endswith('.mask')
    }


def zeros(masks: dict) -> int:
    return sum(int((m == 0).sum()) for m in masks.values())


def assert_masks_equal(actual: dict, expected: dict, where: str) -> None:
    assert actual.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(actual[k].cpu(), v.cpu()), (where, k, actual[k], v)


class MaskRecorder(Hook):
    """Runs after every other hook (registered last at LOWEST): checks the
    EMA copy against the model at each point where the copy is used."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        self.iters = 0
        self.vals = 0
        self.saves = 0
        self.zeros_seen = []

    def _ema(self, runner) -> BaseAveragedModel:
        [ema] = [h.ema_model for h in runner.hooks if hasattr(h, 'ema_model')]
        return ema

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None) -> None:
        src = masks_of(runner.model)
        assert_masks_equal(masks_of(self._ema(runner).module), src,
                           f'after train iter {runner.iter}')
        self.zeros_seen.append(zeros(src))
        self.iters += 1

    def before_val_epoch(self, runner) -> None:
        # The EMA weights (and, with update_buffers, buffers) are swapped
        # into the model now: the masks it validates with are the ones the
        # training reached, no removed channel comes back.
        assert_masks_equal(masks_of(runner.model),
                           masks_of(self._ema(runner).module), 'validation')
        assert zeros(masks_of(runner.model)) == self.zeros_seen[-1]
        self.vals += 1

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        # EMAHook has put the averaged weights into checkpoint['state_dict']
        # (and the model's into 'ema_state_dict').
        src = masks_of(runner.model)
        state = {k: v for k, v in checkpoint['state_dict'].items() if k in src}
        assert_masks_equal(state, src, 'checkpoint state_dict')
        ema_state = {
            k[len('module.'):]: v
            for k, v in checkpoint['ema_state_dict'].items()
            if k[len('module.'):] in src
        }
        assert_masks_equal(ema_state, src, 'checkpoint ema_state_dict')
        self.saves += 1


def run_with_recorder(cfg: Config) -> tuple:
    runner = Runner.from_cfg(cfg)
    recorder = MaskRecorder()
    runner.register_hook(recorder)
    runner.train()
    return runner, recorder


def assert_export_is_masked_ema(cfg: Config, ckpt: str, out_dir: str, ema_algo,
                                inputs: dict) -> dict:
    """Export ``ckpt`` (EMA weights in its state_dict) and compare the
    exported model with the masked EMA model on ``inputs``."""
    out = export_checkpoint(cfg, ckpt, out_dir)
    assert out['flops'] < out['flops_unpruned']
    pruned = build_from_config(Config.fromfile(out['config']))
    load_checkpoint(pruned, out['checkpoint'], map_location='cpu')
    pruned.eval()
    ema_algo.eval()
    with torch.no_grad():
        expected = ema_algo.architecture(**inputs, mode='tensor')
        actual = pruned(**inputs, mode='tensor')
    flat_e = torch.cat([t.flatten() for t in _tensors(expected)])
    flat_a = torch.cat([t.flatten() for t in _tensors(actual)])
    assert flat_e.shape == flat_a.shape
    torch.testing.assert_close(flat_a, flat_e, atol=1e-5, rtol=1e-5)
    return out


def _tensors(output) -> list:
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in _tensors(item)]


@pytest.mark.parametrize('update_buffers,priority,schedule',
                         [(True, 'ABOVE_NORMAL', False),
                          (True, 'LOWEST', False),
                          (False, 'ABOVE_NORMAL', False),
                          (True, 'ABOVE_NORMAL', True)],
                         ids=[
                             'buffers-averaged-before-pruning',
                             'buffers-averaged-after-pruning',
                             'buffers-copied', 'iterative-schedule'
                         ])
def test_ema_copy_follows_masks(tmp_path, update_buffers, priority, schedule):
    """A tiny classifier with mmengine's EMAHook (momentum 0.5: an averaged
    mask of a removed channel would be 0.5 after one update), the EMA hook
    before or after the pruning hook, averaging or copying buffers; and a
    schedule that prunes in ``before_train_iter``."""
    cfg = runner_cfg(tmp_path, target=0.3, max_iters=8)
    if schedule:
        cfg.custom_hooks[0] = dict(type='mmifso.IterativePruningHook',
                                   num_rounds=4,
                                   interval=2,
                                   target_flops=0.3,
                                   score_batches=1,
                                   save_thresholds=(0.9, 0.8))
    cfg.custom_hooks.append(
        dict(type='EMAHook',
             ema_type='ExponentialMovingAverage',
             momentum=0.5,
             update_buffers=update_buffers,
             priority=priority))
    val = dict(cfg.train_dataloader,
               sampler=dict(type='DefaultSampler', shuffle=False))
    cfg.update(val_dataloader=val,
               val_evaluator=dict(type='Accuracy'),
               val_cfg=dict(),
               train_cfg=dict(by_epoch=False, max_iters=8, val_interval=4))
    runner, recorder = run_with_recorder(cfg)
    assert recorder.iters == runner.iter
    assert recorder.vals >= 1 and recorder.saves >= 1  # flops_XX.pth
    # Masks changed during training, the EMA followed each change.
    assert len(set(recorder.zeros_seen)) >= 3

    runner.save_checkpoint(str(tmp_path), 'final.pth')
    ema = [h for h in runner.hooks if hasattr(h, 'ema_model')][0].ema_model
    saved = torch.load(str(tmp_path / 'final.pth'), map_location='cpu')
    ema_state = ema.module.state_dict()
    # The checkpoint's state_dict is the EMA model (mmengine's design, so
    # that it is what gets deployed); it differs from the trained weights.
    assert any(not torch.equal(saved['state_dict'][k], v)
               for k, v in runner.model.state_dict().items()
               if k.startswith('architecture.') and v.dtype.is_floating_point)
    for k, v in ema_state.items():
        assert torch.equal(saved['state_dict'][k], v.cpu()), k
    data = runner.model.data_preprocessor(digits_batch(8, size=16), False)
    assert_export_is_masked_ema(cfg, str(tmp_path / 'final.pth'),
                                str(tmp_path / 'export'), ema.module,
                                dict(inputs=data['inputs']))


def test_rtmdet_tiny_ema(tmp_path):
    """The shipped RTMDet-tiny prune config with its own EMAHook
    (ExpMomentumEMA, update_buffers=True) on shapes-COCO at 64 px: two
    epochs of two iterations, a pruning step on each, validation after each
    epoch; the exported epoch_2.pth (EMA weights) is the masked EMA model."""
    size = 64
    data_root = shapes_coco(str(tmp_path / 'shapes'), size)
    cfg = load_config(RTMDET)
    assert any(h['type'] == 'EMAHook' and h.get('update_buffers')
               for h in cfg.custom_hooks)
    work = str(tmp_path / 'prune')
    on_shapes(cfg, data_root, size, work, 'ema_rtmdet_tiny')
    cfg.model.mutator.demo_input.input_shape = (1, 3, size, size)
    cfg.train_cfg.max_epochs = 2
    pruning_hook(cfg).update(interval=1, score_batches=1)
    runner, recorder = run_with_recorder(cfg)
    assert recorder.iters == 4 and recorder.vals == 2
    # A pruning step on each iteration, followed by the EMA copy.
    seen = recorder.zeros_seen
    assert len(seen) == 4 and all(a < b for a, b in zip(seen, seen[1:]))

    ema = [h for h in runner.hooks if hasattr(h, 'ema_model')][0].ema_model
    torch.manual_seed(0)
    inputs = dict(inputs=torch.rand(1, 3, size, size) * 255)
    inputs = runner.model.data_preprocessor(inputs, False)
    out = assert_export_is_masked_ema(cfg, osp.join(work, 'epoch_2.pth'),
                                      str(tmp_path / 'export'), ema.module,
                                      dict(inputs=inputs['inputs']))
    structure = load_structure(out['structure'])
    assert sum(len(u['pruned']) for u in structure['units']) == seen[-1]
