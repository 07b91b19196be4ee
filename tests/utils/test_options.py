"""``check_choice``: one wording for every enumerated option."""
import pytest

from mmifso.models import ChannelMutator
from mmifso.utils import check_choice


def test_check_choice_returns_a_valid_value():
    assert check_choice('gate', 'input', ('weight', 'input')) == 'input'


@pytest.mark.parametrize('choices, allowed', [
    (('mean', ), "'mean'"),
    (('weight', 'input'), "'weight' or 'input'"),
    (('acts', 'flops', 'none'), "'acts', 'flops' or 'none'"),
])
def test_check_choice_names_every_choice(choices, allowed):
    with pytest.raises(ValueError) as err:
        check_choice('opt', 'bad', choices)
    assert str(err.value) == f"opt must be {allowed}, got 'bad'"


def test_an_option_of_the_package_uses_it():
    with pytest.raises(ValueError, match="gate must be 'weight' or 'input', "
                       "got 'output'"):
        ChannelMutator(gate='output')
