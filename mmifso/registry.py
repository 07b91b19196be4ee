"""Registries of mmifso.

Every registry is a child of the mmengine root registry of the same kind, so
``type='mmifso.XXX'`` resolves from any OpenMMLab config (``default_scope``
``mmpretrain`` or ``mmdet``), and modules built inside mmifso objects without a
scope prefix (e.g. an mmpretrain ``ImageClassifier``) resolve through the
config's default scope.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TASK_UTILS as MMENGINE_TASK_UTILS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, locations=['mmifso.models'])
MODEL_WRAPPERS = Registry(
    'model_wrapper',
    parent=MMENGINE_MODEL_WRAPPERS,
    locations=['mmifso.engine.distributed'])
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, locations=['mmifso.engine.hooks'])
DATASETS = Registry(
    'dataset', parent=MMENGINE_DATASETS, locations=['mmifso.datasets'])
TRANSFORMS = Registry(
    'transform', parent=MMENGINE_TRANSFORMS, locations=['mmifso.datasets'])
# Pruning criteria, demo-input builders and other non-module helpers.
TASK_UTILS = Registry(
    'task util', parent=MMENGINE_TASK_UTILS, locations=['mmifso.models'])
