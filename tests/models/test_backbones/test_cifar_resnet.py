"""CifarResNet options: depth check and the normalisation-free variant."""
import copy

import pytest
import torch

from helpers import OTHER_ARCH, build_algorithm, random_prune
from mmifso.apis.export import verify_export
from mmifso.models.backbones import CifarResNet


def test_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match='6n \\+ 2'):
        CifarResNet(depth=10)


def test_without_norm_convs_have_biases():
    net = CifarResNet(depth=8, base_channels=4, norm_cfg=None)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 9 and all(c.bias is not None for c in convs)
    assert not any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for m in net.modules())
    out, = net(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 16, 2, 2)


def test_without_norm_prunes_and_exports_exactly():
    """Conv biases are cut with their channels: the exported model computes
    what the masked one does (``verify_export`` raises otherwise)."""
    arch = copy.deepcopy(OTHER_ARCH)
    arch['backbone'].update(norm_cfg=None, act_cfg=dict(type='SiLU'))
    torch.manual_seed(0)
    algo = build_algorithm(arch, input_shape=(1, 3, 8, 8)).eval()
    with torch.no_grad():  # biases start at 0: make them matter
        for m in algo.architecture.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_()
    random_prune(algo.mutator, 0.5, seed=0)
    pruned, _ = algo.export()
    diff, _ = verify_export(algo, pruned.eval(), atol=1e-5)
    assert diff < 1e-5
    kept = [m.out_channels for m in pruned.modules()
            if isinstance(m, torch.nn.Conv2d)]
    assert sum(kept) < sum(m.out_channels for m in algo.architecture.modules()
                           if isinstance(m, torch.nn.Conv2d))
