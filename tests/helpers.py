"""Builders shared by the tests (real mmpretrain models and data)."""
import copy

import torch
from mmengine.registry import init_default_scope

import mmifso  # noqa: F401

TINY_CLASSIFIER = dict(
    type='ImageClassifier',
    backbone=dict(type='mmifso.CifarResNet', depth=8, base_channels=4),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=16,
        loss=dict(type='CrossEntropyLoss')),
    data_preprocessor=dict(
        type='ClsDataPreprocessor',
        num_classes=10,
        mean=[85.0] * 3,
        std=[110.0] * 3,
        to_rgb=False))


def build_algorithm(arch=None, input_shape=(1, 3, 32, 32), **mutator_kw):
    init_default_scope('mmpretrain')
    from mmifso.registry import MODELS
    return MODELS.build(
        dict(
            type='mmifso.PruningAlgorithm',
            architecture=copy.deepcopy(arch or TINY_CLASSIFIER),
            mutator=dict(
                type='mmifso.ChannelMutator',
                demo_input=dict(
                    type='mmifso.DemoInput', input_shape=input_shape),
                **mutator_kw)))


def digits_batch(n=32, seed=0, size=32):
    from mmpretrain.structures import DataSample
    from mmifso.datasets import DigitsDataset
    ds = DigitsDataset(split='train', image_size=size, pipeline=[
        dict(type='PackInputs')
    ])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].tolist()
    items = [ds[i] for i in idx]
    return dict(
        inputs=[it['inputs'] for it in items],
        data_samples=[it['data_samples'] for it in items])


def random_prune(mutator, fraction=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for unit in mutator.units:
        k = min(int(unit.num_channels * fraction),
                unit.num_channels - unit.min_channels)
        if k > 0:
            unit.prune(
                torch.randperm(unit.num_channels, generator=g)[:k].tolist())
