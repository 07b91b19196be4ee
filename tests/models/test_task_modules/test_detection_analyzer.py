"""Analyzer safeguards found by tools/analysis/coverage.py: channel splits,
layers that return predictions directly, layers DepGraph does not know."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor, BaseModel

from mmifso.models.mutators import ChannelMutator
from mmifso.models.task_modules import DemoInput


class Net(BaseModel):

    def __init__(self):
        super().__init__(data_preprocessor=BaseDataPreprocessor())
        self.stem = nn.Conv2d(3, 8, 3, padding=1)


def analyse(model):
    mutator = ChannelMutator(demo_input=DemoInput((1, 3, 8, 8)))
    mutator.prepare_from_supernet(model)
    return ({u.name: u for u in mutator.units},
            {s.name: s.reason for s in mutator.analysis.skipped})


def test_units_crossing_a_fixed_channel_split_are_skipped():

    class Split(Net):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            x = torch.relu(self.stem(inputs))
            xa, xb = torch.split(x, 4, dim=1)  # fixed chunk size
            return self.head(torch.cat([self.a(xa), self.b(xb)], 1))

    units, skipped = analyse(Split())
    assert 'cut by torch.split' in skipped['stem']
    assert {'a', 'b'} <= set(units)  # the branches' own outputs are fine


def test_a_layer_returning_a_prediction_is_never_pruned():

    class Returns(Net):
        def __init__(self):
            super().__init__()
            self.cls = nn.Conv2d(8, 4, 1)  # a prediction ...
            self.refine = nn.Conv2d(4, 4, 1)  # ... that is also consumed

        def forward(self, inputs, data_samples=None, mode='tensor'):
            cls = self.cls(torch.relu(self.stem(inputs)))
            return cls, self.refine(cls)

    units, skipped = analyse(Returns())
    assert 'cls' not in units
    assert 'outputs of the model' in skipped['cls']
    assert 'stem' in units


def test_units_crossing_unknown_layers_are_skipped():

    class MyConv(nn.Module):  # not a _ConvNd: DepGraph does not know it
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 8, 1, 1))

        def forward(self, x):
            return F.conv2d(x, self.weight)

    class Opaque(Net):
        def __init__(self):
            super().__init__()
            self.mine = MyConv()
            self.mid = nn.Conv2d(8, 8, 1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            x = self.mine(torch.relu(self.stem(inputs)))
            return self.head(torch.relu(self.mid(x)))

    units, skipped = analyse(Opaque())
    assert 'mine (MyConv)' in skipped['stem']
    assert 'mid' in units


def test_layers_whose_output_is_unused_still_lose_input_channels():
    from mmifso.models.mutators import export_pruned_model

    class Dead(Net):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(8, 2, 1)
            self.unused = nn.Conv2d(8, 16, 1)  # runs, output never returned

        def forward(self, inputs, data_samples=None, mode='tensor'):
            x = torch.relu(self.stem(inputs))
            self.unused(x)
            return self.head(x)

    model = Dead()
    mutator = ChannelMutator(demo_input=DemoInput((1, 3, 8, 8)))
    mutator.prepare_from_supernet(model)
    (stem, ) = [u for u in mutator.units if u.name == 'stem']
    assert 'unused' in {s.module for s in stem.sites if s.role == 'in'}
    stem.prune([0, 1, 2])
    pruned, _ = export_pruned_model(model, mutator)
    assert pruned.unused.in_channels == 5 and pruned.unused.out_channels == 16
    pruned(torch.rand(1, 3, 8, 8))  # runs
