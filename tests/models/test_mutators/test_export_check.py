"""mmifso.models.mutators.export_check and ChannelMutator(check_export):
units whose removal the export does not reproduce are left out, named,
with the reason; exact models keep every unit."""
import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor, BaseModel

from helpers import (assert_masked_equals_exported, prepared_mutator,
                     prune_at_random, warnings_logged)
from mmifso.models.mutators import ChannelMutator
from mmifso.models.mutators.export_check import (export_mismatch,
                                                 failing_items)
from mmifso.models.task_modules import DemoInput


class Tiny(BaseModel):
    """stem (8) -> fc1 (16) -> [a channel-mixing op] -> fc2 (8, added to
    the stem's output: one unit named ``fc2``) -> head.

    ``mix``: ``'none'``, ``'grn'`` (ConvNeXt-V2's global response norm: a
    mean over the hidden channels, which the traced graph shows as a plain
    reduction) or ``'reshape'`` (VAN: the hidden channel count held in an
    attribute and used in a reshape).
    """

    def __init__(self, mix: str = 'none') -> None:
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.mix, self.hidden = mix, 16
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Conv2d(8, self.hidden, 1)
        self.gamma = nn.Parameter(torch.zeros(self.hidden))
        self.fc2 = nn.Conv2d(self.hidden, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = torch.relu(self.bn(self.stem(inputs)))
        h = torch.relu(self.fc1(x))
        if self.mix == 'grn':
            gx = h.norm(p=2, dim=(2, 3), keepdim=True)
            nx = gx / (gx.mean(dim=1, keepdim=True) + 1e-6)
            h = self.gamma.view(1, -1, 1, 1) * (h * nx) + h
        elif self.mix == 'reshape':
            n, _, height, width = h.shape
            h = h.permute(0, 2, 3, 1).reshape(n, height, width, self.hidden)
            h = h.permute(0, 3, 1, 2)
        return self.head(x + self.fc2(h))


def build(mix: str, **kwargs) -> ChannelMutator:
    torch.manual_seed(0)
    model = Tiny(mix)
    mutator = ChannelMutator(demo_input=DemoInput((1, 3, 8, 8)), **kwargs)
    with warnings_logged() as warnings:
        mutator.prepare_from_supernet(model)
    return model, mutator, warnings


def test_failing_items_bisects():
    calls = []

    def trial(part, bad=(3, 7)):
        calls.append(len(part))
        hit = [i for i in part if i in bad]
        return f'{hit} fail' if hit else None

    assert failing_items(list(range(10)), trial) == {3: '[3] fail',
                                                     7: '[7] fail'}
    # All pass: one trial, of every item.
    calls.clear()
    assert failing_items(list(range(10)),
                         lambda p: trial(p, bad=())) == {}
    assert calls == [10]
    # Failing only together (1 and 4 fall in different halves): the whole
    # failing set is named, and why.
    together = failing_items(
        list(range(6)), lambda p: 'both' if {1, 4} <= set(p) else None)
    assert set(together) == set(range(6))
    assert 'only when 6 units lose channels together' in together[1]


def test_export_mismatch_is_relative_above_one():
    assert export_mismatch(5e-5, 0.5) is None
    assert export_mismatch(5e-4, 10.0) is None  # 1e-4 x 10
    why = export_mismatch(2e-3, 10.0)
    assert 'differ from the masked model\'s by 0.002' in why
    assert export_mismatch(float('inf'), 1.0) is not None


@pytest.mark.parametrize('mix, why', [
    ('grn', "the exported model's outputs differ"),
    ('reshape', 'the exported model fails: RuntimeError: shape'),
])
def test_a_unit_the_export_cannot_reproduce_is_left_out(mix, why):
    model, mutator, warnings = build(mix)
    assert {u.name for u in mutator.units} == {'fc2'}
    skipped = {s.name: s.reason for s in mutator.analysis.skipped}
    assert skipped['fc1'].startswith(
        "removing its channels does not give the masked model's outputs: ")
    assert why in skipped['fc1']
    # Named in a warning, and the kept units export exactly.
    assert any(m.startswith('[mmifso] left out 1 units') and 'fc1 (' in m
               for m in warnings)
    g = torch.Generator().manual_seed(0)
    for unit in mutator.units:
        prune_at_random(unit, g)
    assert_masked_equals_exported(model.eval(), mutator, g)
    # Without the check the unit is kept (and its export would differ).
    _, unchecked, _ = build(mix, check_export=False)
    assert {u.name for u in unchecked.units} == {'fc1', 'fc2'}


def test_an_exact_model_keeps_every_unit_untouched():
    torch.manual_seed(0)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    mutator = prepared_mutator(model)
    after_rng = torch.rand(3)
    assert {u.name for u in mutator.units} == {'fc1', 'fc2'}
    # Every mask restored, the weights untouched (the check randomises a
    # copy), and the global random state as without the check.
    assert all(u.num_alive == u.num_channels for u in mutator.units)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model = Tiny()
    torch.manual_seed(1)
    ChannelMutator(demo_input=DemoInput((1, 3, 8, 8)),
                   check_export=False).prepare_from_supernet(model)
    assert torch.equal(torch.rand(3), after_rng)


def test_check_export_must_be_a_bool():
    with pytest.raises(TypeError, match="check_export must be True or "
                       "False, got 'false'"):
        ChannelMutator(check_export='false')
