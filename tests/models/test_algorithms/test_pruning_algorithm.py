"""PruningAlgorithm (the masked model) and PrunedModel (its export)."""
import pytest
import torch
from mmengine.registry import init_default_scope

from helpers import (MUTATOR16, TINY_CLASSIFIER, build_algorithm,
                     digits_batch, random_prune)
from mmifso.models.algorithms import PrunedModel, PruningAlgorithm
from mmifso.registry import MODELS


def test_state_dict_holds_weights_and_masks():
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    keys = list(algo.state_dict())
    prefixes = ('architecture.', 'mutator.', 'data_preprocessor.')
    assert all(k.startswith(prefixes) for k in keys)
    masks = [k for k in keys if k.startswith('mutator.units.')]
    assert masks and all(k.endswith('.mask') for k in masks)
    assert len(masks) == len(algo.mutator.units)


def test_forward_is_the_gated_architecture():
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    algo.eval()
    data = algo.data_preprocessor(digits_batch(4, size=16), False)
    with torch.no_grad():
        full = algo(data['inputs'])
        assert torch.equal(full, algo.architecture(data['inputs']))
        random_prune(algo.mutator, 0.5)
        pruned = algo(data['inputs'])
    assert not torch.allclose(full, pruned)
    losses = algo(**algo.data_preprocessor(digits_batch(4, size=16), True),
                  mode='loss')
    assert set(losses) == {'loss'}


def test_plain_checkpoint_loads_and_keeps_the_masks():
    """A checkpoint of the bare architecture (upstream key names) loads into
    the masked model strictly; it has no masks, so the masks stay."""
    init_default_scope('mmpretrain')
    plain = MODELS.build(TINY_CLASSIFIER)
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.5)
    masks = [u.mask.clone() for u in algo.mutator.units]
    algo.load_state_dict(plain.state_dict(), strict=True)
    for k, v in plain.state_dict().items():
        assert torch.equal(algo.architecture.state_dict()[k], v), k
    assert all(torch.equal(m, u.mask)
               for m, u in zip(masks, algo.mutator.units))


def test_export_then_pruned_model_reproduce_the_masked_outputs():
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    random_prune(algo.mutator, 0.4)
    algo.eval()
    pruned, structure = algo.export()
    rebuilt = PrunedModel(TINY_CLASSIFIER, structure)
    rebuilt.load_state_dict(pruned.state_dict())
    rebuilt.eval()
    x = algo.data_preprocessor(digits_batch(4, size=16), False)['inputs']
    with torch.no_grad():
        masked = algo(x)
        assert torch.allclose(pruned(x), masked, atol=1e-5)
        assert torch.allclose(rebuilt(x), masked, atol=1e-5)
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(
        p.numel() for p in algo.architecture.parameters())
    assert rebuilt._mmifso_structure == structure


def test_built_from_config():
    init_default_scope('mmpretrain')
    algo = MODELS.build(
        dict(type='mmifso.PruningAlgorithm', architecture=TINY_CLASSIFIER,
             mutator=MUTATOR16))
    assert isinstance(algo, PruningAlgorithm)
    assert algo.mutator.units


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
def test_pruning_algorithm_without_architecture():
    init_default_scope('mmpretrain')
    with pytest.raises(TypeError, match="missing 1 required positional "
                       "argument: 'architecture'"):
        MODELS.build(dict(type='mmifso.PruningAlgorithm', mutator=MUTATOR16))


def test_architecture_is_not_a_model():
    init_default_scope('mmpretrain')
    with pytest.raises(TypeError, match='architecture must build an mmengine '
                       'BaseModel.*got CifarResNet'):
        MODELS.build(
            dict(
                type='mmifso.PruningAlgorithm',
                architecture=dict(type='mmifso.CifarResNet', depth=8),
                mutator=MUTATOR16))


def test_attributes_of_the_architecture():
    """Upstream hooks reach into runner.model for the model's parts (mmdet's
    YOLOXModeSwitchHook sets runner.model.bbox_head.use_l1): the masked
    model answers with its architecture's; the wrapper's own come first."""
    import copy
    algo = build_algorithm(input_shape=(1, 3, 16, 16))
    assert algo.head is algo.architecture.head
    assert algo.with_neck is True  # a property of the classifier
    algo.head.marker = 1
    assert algo.architecture.head.marker == 1
    # The wrapper's own attributes are not the architecture's.
    assert algo.mutator is algo._modules['mutator']
    assert not hasattr(algo, 'detector')
    with pytest.raises(AttributeError, match="architecture .*'detector'"):
        algo.detector
    # Copies (EMA) and pickles are built before the architecture exists.
    twin = copy.deepcopy(algo)
    assert twin.head is twin.architecture.head
    assert twin.head is not algo.head
