"""Physical pruning from a structure: apply_structure and the attributes it
fixes (the structure_file fixture is in tests/conftest.py)."""
import copy

import pytest
import torch
from mmengine.registry import init_default_scope

from helpers import (OTHER_ARCH, TINY_CLASSIFIER, build_algorithm,
                     digits_batch, random_prune)
from mmifso.models.algorithms import PrunedModel
from mmifso.models.mutators import export_pruned_model, strip_gates
from mmifso.models.task_modules import apply_structure
from mmifso.registry import MODELS
from mmifso.structures import StructureMismatchError, make_structure


def test_apply_structure_equals_the_masked_model():
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.4)
    algo.eval()
    structure = make_structure(algo.mutator)
    plain = copy.deepcopy(algo.architecture)
    strip_gates(plain)
    assert apply_structure(plain, structure) is plain
    x = algo.data_preprocessor(digits_batch(4, size=16), False)['inputs']
    with torch.no_grad():
        assert torch.allclose(plain(x), algo(x), atol=1e-5)
    for unit in structure['units']:
        conv = plain.get_submodule(unit['name'])
        assert conv.out_channels == unit['num_channels'] - len(unit['pruned'])


def test_export_pruned_model_leaves_the_gated_model_alone():
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.4)
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    pruned, structure = export_pruned_model(algo.architecture, algo.mutator,
                                            dict(flops_ratio=0.5))
    assert structure['resources'] == dict(flops_ratio=0.5)
    for k, v in algo.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_pre_hooks for m in pruned.modules())


def test_a_structure_cannot_be_applied_twice():
    init_default_scope('mmpretrain')
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.4)
    structure = make_structure(algo.mutator)
    model = MODELS.build(copy.deepcopy(TINY_CLASSIFIER))
    apply_structure(model, structure)
    with pytest.raises(StructureMismatchError, match='applied twice'):
        apply_structure(model, structure)


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
def test_structure_of_another_architecture(structure_file):
    init_default_scope('mmpretrain')
    with pytest.raises(StructureMismatchError, match='channels in the '
                       'structure file but .* in the model: the structure '
                       'file belongs to another architecture'):
        PrunedModel(OTHER_ARCH, structure_file)
    PrunedModel(TINY_CLASSIFIER, structure_file)  # its own one builds
