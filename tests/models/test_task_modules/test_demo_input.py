"""DemoInput: the demo forward that traces a model."""
import pytest

from helpers import build_algorithm
from mmifso.models.task_modules import DemoInput, DemoInputError


def test_round_trip_through_a_config_dict():
    demo = DemoInput(input_shape=(1, 3, 16, 16))
    cfg = demo.to_dict()
    assert cfg['type'] == 'mmifso.DemoInput'
    assert tuple(cfg['input_shape']) == (1, 3, 16, 16)


def test_demo_input_of_wrong_shape():
    with pytest.raises(DemoInputError, match='rejected the demo input of '
                       r'shape \(1, 1, 32, 32\).*Set mutator.demo_input.'
                       'input_shape'):
        build_algorithm(input_shape=(1, 1, 32, 32))
    with pytest.raises(DemoInputError, match='input_shape must be'):
        build_algorithm(input_shape=(1, 3, 0, 32))
