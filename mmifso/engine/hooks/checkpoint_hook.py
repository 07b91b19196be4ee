"""mmengine's CheckpointHook with crash-safe writes."""
import copy
import os.path as osp
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from mmifso.registry import HOOKS
from mmifso.utils import ATOMIC_BACKEND_ARGS, save_text


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose files are never left half-written.

    * checkpoints go through the ``'mmifso_atomic'`` file backend (a
      temporary file in the same directory, then :func:`os.replace`), which
      ``backend_args=dict(backend='mmifso_atomic')`` also gives the plain
      ``CheckpointHook``;
    * ``work_dir/last_checkpoint``, which auto-resume (``--resume``) reads,
      is replaced atomically as well (mmengine 0.10 writes it with
      ``open(..., 'w')``, so a crash there leaves it empty or cut).

    Use it in place of the default::

        default_hooks = dict(checkpoint=dict(
            type='mmifso.AtomicCheckpointHook', interval=1))

    Args:
        backend_args (dict, optional): Default: the atomic backend. Ignored
            when ``file_client_args`` (deprecated by mmengine) is given.
        *args, **kwargs: As :class:`mmengine.hooks.CheckpointHook`.
    """

    def __init__(self,
                 *args,
                 backend_args: Optional[dict] = ATOMIC_BACKEND_ARGS,
                 **kwargs) -> None:
        if kwargs.get('file_client_args') is not None:
            backend_args = None
        super().__init__(
            *args, backend_args=copy.deepcopy(backend_args), **kwargs)

    def _save_checkpoint_with_step(self, runner, step, meta):
        # As mmengine 0.10.7's CheckpointHook, with an atomic last_checkpoint.
        if self.max_keep_ckpts > 0:
            if len(self.keep_ckpt_ids) > 0 and self.keep_ckpt_ids[-1] == step:
                pass
            else:
                if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                    _step = self.keep_ckpt_ids.popleft()
                    if is_main_process():
                        ckpt_path = self.file_backend.join_path(
                            self.out_dir, self.filename_tmpl.format(_step))
                        if self.file_backend.isfile(ckpt_path):
                            self.file_backend.remove(ckpt_path)
                        elif self.file_backend.isdir(ckpt_path):
                            self.file_backend.rmtree(ckpt_path)
                self.keep_ckpt_ids.append(step)
                runner.message_hub.update_info('keep_ckpt_ids',
                                               list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        save_text(str(self.last_ckpt), osp.join(runner.work_dir,
                                                'last_checkpoint'))
