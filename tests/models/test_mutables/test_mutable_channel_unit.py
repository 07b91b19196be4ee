"""MutableChannelUnit: the mask of one coupled channel group."""
import pytest
import torch

from helpers import build_algorithm
from mmifso.models.mutables import MutableChannelUnit


def unit(num_channels=6, min_channels=1, blocks=None):
    return MutableChannelUnit('conv', num_channels, [], min_channels, blocks)


def test_prune_and_choice():
    u = unit()
    assert u.num_alive == 6 and u.num_prunable == 5
    u.prune([1, 4])
    assert u.mask.tolist() == [1, 0, 1, 1, 0, 1]
    assert u.current_choice == [0, 2, 3, 5]
    assert u.alive.tolist() == [True, False, True, True, False, True]
    u.current_choice = [0, 1]
    assert u.num_alive == 2 and u.current_choice == [0, 1]


def test_mask_is_a_buffer_of_the_state_dict():
    u = unit()
    u.prune([0])
    other = unit()
    other.load_state_dict(u.state_dict())
    assert torch.equal(other.mask, u.mask)


def test_blocks_are_removed_whole():
    u = unit(blocks=[[0, 3], [1, 4], [2, 5]])
    assert u.block_size == 2 and u.block_of(4) == [1, 4]
    with pytest.raises(ValueError, match='whole blocks'):
        u.prune([1])
    u.prune([1, 4])
    assert u.current_choice == [0, 2, 3, 5]
    with pytest.raises(ValueError, match='whole blocks'):
        u.current_choice = [0, 2, 3]
    # Single-channel blocks are no blocks.
    assert unit(blocks=[[i] for i in range(6)]).blocks is None
    with pytest.raises(ValueError, match='partition'):
        unit(blocks=[[0, 1], [1, 2]])


def test_sample_gate_multiplies_the_mask():
    u = unit(num_channels=3)
    u.prune([1])
    u.sample_gate = torch.tensor([[2.0, 2.0, 2.0], [0.5, 1.0, 1.0]])
    assert u.effective_mask.tolist() == [[2.0, 0.0, 2.0], [0.5, 0.0, 1.0]]
    u.sample_gate = None
    assert u.effective_mask is u.mask


def test_pruning_below_min_channels():
    algo = build_algorithm(input_shape=(1, 3, 16, 16), min_channels=2)
    u = algo.mutator.units[0]
    with pytest.raises(ValueError, match=f'unit {u.name}: pruning '
                       f'{u.num_channels - 1} channels would leave fewer '
                       'than min_channels=2'):
        u.prune(list(range(u.num_channels - 1)))
    assert u.num_alive == u.num_channels  # nothing changed
