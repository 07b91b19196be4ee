"""Model wrappers used in configs: the masked model and the pruned one."""
import copy
import functools
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.registry import MODELS as ROOT_MODELS

from mmifso.registry import MODELS
from mmifso.structures import load_structure
from mmifso.utils import pruned_architecture_cfg
from ..mutators import ChannelMutator, export_pruned_model
from ..task_modules import apply_structure

ARCH_PREFIX = 'architecture.'
MUTATOR_PREFIX = 'mutator.'


def build_architecture(architecture: Union[dict, nn.Module],
                       data_preprocessor: Optional[dict] = None) -> nn.Module:
    """Build a model config in the current default scope (mmpretrain,
    mmdet, ...).

    ``data_preprocessor`` is the top-level config field that mmengine's
    Runner merges into ``model``; it goes to the architecture, as it would
    without mmifso.
    """
    if isinstance(architecture, nn.Module):
        return architecture
    architecture = copy.deepcopy(architecture)
    if data_preprocessor is not None:
        architecture.setdefault('data_preprocessor', data_preprocessor)
    return ROOT_MODELS.build(architecture)


@MODELS.register_module()
class PruningAlgorithm(BaseModel):
    """Wraps any mmpretrain/mmdet model with channel masks.

    All modes of the wrapped model (``loss``, ``predict``, ``tensor``) and its
    data preprocessor work unchanged; the mutator's gates remove the masked
    channels from the computation. Checkpoints store the weights under
    ``architecture.`` and the masks under ``mutator.``. A plain checkpoint of
    the wrapped model (e.g. ``load_from`` a trained mmpretrain classifier)
    loads too: its keys are mapped under ``architecture.``. Attributes the
    wrapper lacks are those of the wrapped model (``algo.bbox_head`` is
    ``algo.architecture.bbox_head``), for upstream hooks that reach into
    ``runner.model``.

    Args:
        architecture (dict | nn.Module): Config of the model to prune.
        mutator (dict): Config of the :class:`ChannelMutator`.
        data_preprocessor (dict, optional): Passed to the architecture when
            it has none (mmengine's Runner fills it from the top-level
            ``data_preprocessor`` field of mmpretrain configs).
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 architecture: Union[dict, nn.Module],
                 mutator: dict = dict(type='mmifso.ChannelMutator'),
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        arch = build_architecture(architecture, data_preprocessor)
        if not isinstance(arch, BaseModel):
            raise TypeError(
                f'architecture must build an mmengine BaseModel (an '
                f'mmpretrain classifier or mmdet detector), got '
                f'{type(arch).__name__}')
        super().__init__(
            data_preprocessor=arch.data_preprocessor, init_cfg=init_cfg)
        self.architecture = arch
        self.mutator: ChannelMutator = MODELS.build(mutator) if isinstance(
            mutator, dict) else mutator
        self.mutator.prepare_from_supernet(self.architecture)
        self._register_load_state_dict_pre_hook(self._map_plain_checkpoint)

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List] = None,
                mode: str = 'tensor'):
        return self.architecture(inputs, data_samples, mode=mode)

    def __getattr__(self, name: str):
        """Attributes of the wrapped model that this wrapper lacks.

        Upstream hooks reach into ``runner.model`` for the model's parts,
        e.g. mmdet's ``YOLOXModeSwitchHook`` sets
        ``runner.model.bbox_head.use_l1``; with the masked model as
        ``runner.model`` they find the architecture's (the same modules the
        masks act on).
        """
        try:
            return super().__getattr__(name)
        except AttributeError:
            # ``_modules`` is absent while the module is being built or
            # unpickled: no architecture to ask yet.
            arch = self.__dict__.get('_modules', {}).get('architecture')
            if arch is None or name.startswith('__'):
                raise
        try:
            return getattr(arch, name)
        except AttributeError:
            pass
        raise AttributeError(f"'{type(self).__name__}' object and its "
                             f"architecture ({type(arch).__name__}) have no "
                             f"attribute '{name}'")

    def _map_plain_checkpoint(self, state_dict: Dict, prefix: str, *args):
        """Accept checkpoints of the bare architecture."""
        ours = prefix + ARCH_PREFIX
        if any(k.startswith(ours) for k in state_dict):
            return
        if any(k.startswith(prefix + MUTATOR_PREFIX) for k in state_dict):
            return
        for key in [k for k in state_dict if k.startswith(prefix)]:
            state_dict[ours + key[len(prefix):]] = state_dict.pop(key)
        # A plain checkpoint has no masks: keep every channel.
        for name, buf in self.mutator.named_buffers():
            state_dict.setdefault(prefix + MUTATOR_PREFIX + name, buf.clone())

    def export(self) -> tuple:
        """Physically pruned copy of the architecture and its structure."""
        return export_pruned_model(self.architecture, self.mutator,
                                   self.mutator.resources())


def PrunedModel(architecture: Optional[dict] = None,
                structure: Optional[Union[str, dict]] = None,
                data_preprocessor: Optional[dict] = None,
                architecture_type: Optional[Union[str, type]] = None,
                **architecture_fields) -> nn.Module:
    """Build the physically pruned model described by a structure file.

    Used in deploy and fine-tune configs, in one of two forms:

    * flat (written by ``tools/export_pruned.py``): the upstream model's
      fields at the top level, so ``cfg.model.backbone`` exists for the
      upstream tools (``mmdet.apis.init_detector`` reads it)::

        model = dict(type='mmifso.PrunedModel', architecture_type='RetinaNet',
                     structure='structure.json', backbone=..., neck=..., ...)

    * nested: ``dict(type='mmifso.PrunedModel', architecture=dict(
      type='RetinaNet', ...), structure='structure.json')``.

    It returns the architecture itself (an mmpretrain classifier, mmdet
    detector, ...), so every tool, hook and metric of the upstream toolbox
    works unchanged, and its checkpoints have the upstream key names. Loading
    a state dict whose tensors have other shapes than the pruned layers (an
    unpruned checkpoint, or one of another structure) raises, also through
    non-strict loaders such as mmengine's ``load_checkpoint``, which would
    otherwise skip those tensors with a warning and leave random weights.

    Args:
        architecture (dict, optional): Config of the original, unpruned
            model (nested form).
        structure (str | dict): Path of the structure JSON, or its content.
        data_preprocessor (dict, optional): See :class:`PruningAlgorithm`.
        architecture_type (str | type, optional): Type of the original model
            (flat form; its other fields are ``architecture_fields``).
        **architecture_fields: The original model's fields (flat form).

    Returns:
        nn.Module: The pruned model, with the weights of a fresh build (load
        the exported checkpoint on top, e.g. with ``load_from``).
    """
    if structure is None:
        raise ValueError('PrunedModel needs structure= (the structure.json '
                         'written by tools/export_pruned.py)')
    model_cfg = dict(architecture_fields, structure=structure)
    if architecture is not None:
        model_cfg['architecture'] = architecture
    if architecture_type is not None:
        model_cfg['architecture_type'] = architecture_type
    architecture = pruned_architecture_cfg(model_cfg)
    if isinstance(structure, str):
        structure_path = structure
        structure = load_structure(structure)
    else:
        structure_path = None
    model = build_architecture(architecture, data_preprocessor)
    apply_structure(model, structure)
    model._mmifso_structure = structure
    model._register_load_state_dict_pre_hook(
        functools.partial(check_pruned_shapes, source=structure_path),
        with_module=True)
    return model


def check_pruned_shapes(module: nn.Module, state_dict: Dict, prefix: str,
                        local_metadata: Dict, strict: bool,
                        missing_keys: List[str], unexpected_keys: List[str],
                        error_msgs: List[str],
                        source: Optional[str] = None) -> None:
    """``load_state_dict`` pre-hook of a pruned model: refuse tensors whose
    shapes differ from the pruned layers.

    Raises:
        RuntimeError: at least one tensor of ``state_dict`` under ``prefix``
            has another shape than the model's tensor of that name.
    """
    own = dict(module.state_dict(keep_vars=True))
    wrong = []
    for name, tensor in own.items():
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and value.shape != tensor.shape:
            wrong.append((name, tuple(value.shape), tuple(tensor.shape)))
    if not wrong:
        return
    name, saved, pruned = wrong[0]
    where = f' (structure {source})' if source else ''
    raise RuntimeError(
        f'the checkpoint does not fit this pruned model{where}: {len(wrong)} '
        f'of its tensors have other shapes, e.g. {name}: {saved} in the '
        f'checkpoint, {pruned} in the pruned model. An unpruned checkpoint '
        'needs the unpruned config; an exported pruned.pth needs the '
        'deploy_config.py written next to it (or the structure.json it was '
        'exported with). Nothing was loaded.')


MODELS.register_module(name='PrunedModel', module=PrunedModel)
