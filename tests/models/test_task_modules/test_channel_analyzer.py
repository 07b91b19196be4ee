"""ChannelAnalyzer: coupled channel units from one demo forward."""
import pytest
import torch

from mmifso.models.task_modules import ChannelAnalyzer, FrozenUnitError
from tiny import TinyNet


def demo(model):
    return model(torch.rand(1, 2, 5, 5))


def test_residual_add_couples_two_producers():
    result = ChannelAnalyzer(demo).analyse(TinyNet())
    units = {u.name: u for u in result.units}
    # conv1 and conv3 feed one add: one unit of 4 channels (named after its
    # root, conv3), read by conv2 and fc; conv2's outputs are a unit alone.
    assert set(units) == {'conv3', 'conv2'}
    assert units['conv3'].num_channels == 4
    assert sorted(units['conv3'].modules('out')) == ['conv1', 'conv3']
    assert sorted(units['conv3'].modules('in')) == ['conv2', 'fc']
    assert units['conv2'].num_channels == 5
    assert units['conv2'].modules('in') == ['conv3']
    # The classifier's outputs are predictions: never a unit.
    assert [s.name for s in result.skipped] == ['fc']
    assert 'outputs of the model' in result.skipped[0].reason
    assert result.output_layers == ['fc']
    assert result.call_counts == {'conv1': 1, 'conv2': 1, 'conv3': 1,
                                  'fc': 1}


def test_training_flags_are_restored():
    model = TinyNet(bn=True)
    model.train()
    model.bn.eval()
    ChannelAnalyzer(demo).analyse(model)
    assert model.training and not model.bn.training


def test_frozen_unit_skipped_on_request():
    model = TinyNet()
    model.conv2.weight.requires_grad_(False)
    with pytest.raises(FrozenUnitError, match='conv2 has frozen parameters'):
        ChannelAnalyzer(demo).analyse(model)
    # Both units touch conv2 (its input and its output channels).
    result = ChannelAnalyzer(demo, frozen='skip').analyse(model)
    assert not result.units
    assert sorted(s.name for s in result.skipped
                  if 'frozen' in s.reason) == ['conv2', 'conv3']
    with pytest.raises(ValueError, match="frozen must be 'error' or 'skip'"):
        ChannelAnalyzer(demo, frozen='ignore')


def test_min_channels():
    result = ChannelAnalyzer(demo, min_channels=4).analyse(TinyNet())
    assert [u.name for u in result.units] == ['conv2']  # 5 channels > 4
    assert any(s.name == 'conv3' and 'min_channels=4' in s.reason
               for s in result.skipped)


def test_output_layers_follow_the_channels_to_the_outputs():
    """A conv whose norm's output is returned produces predictions too; a
    layer that runs but whose output is not used is no prediction."""

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(2, 4, 1)
            self.pred = torch.nn.Conv2d(4, 3, 1)
            self.bn = torch.nn.BatchNorm2d(3)
            self.unused = torch.nn.Conv2d(4, 2, 1)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            self.unused(x)
            return self.bn(self.pred(x))

    model = Head().eval()
    result = ChannelAnalyzer(demo).analyse(model)
    assert result.output_layers == ['pred']
    assert [u.name for u in result.units] == ['stem']
