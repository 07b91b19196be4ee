"""What the channel analysis finds: units, their sites, skipped groups."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class ChannelSite:
    """Where a unit's channels live in one module.

    Args:
        module (str): Name of the module in the analysed model.
        role (str): ``'in'`` for input channels of a conv/linear consumer,
            ``'out'`` for output channels of a conv/linear producer,
            ``'param'`` for per-channel parameters of other layers (norms).
        idxs (list[int]): Channel indices along the module's channel dim.
        root_idxs (list[int]): For each entry of ``idxs``, the channel of the
            unit (``0 .. num_channels - 1``) it belongs to.
    """
    module: str
    role: str
    idxs: List[int]
    root_idxs: List[int]


@dataclass
class UnitSpec:
    """A coupled channel group, the result of the analysis.

    Args:
        name (str): Name of the root producer whose output channels index the
            unit.
        num_channels (int): Number of coupled channels.
        sites (list[ChannelSite]): Every place the channels appear.
        blocks (list[list[int]], optional): Channels that can only be removed
            together (a partition of ``range(num_channels)``), from GroupNorm
            groups and grouped convolutions; ``None`` when every channel can
            be removed on its own.
        bare_params (list[ChannelSite]): Unwrapped per-channel parameters
            the channels scale (ConvNeXt's layer scale ``gamma``), role
            ``'param'`` and ``module`` the parameter's name. They need no
            gate (the masked forward scales dead channels by zero anyway)
            and the export slices them; only the params count reads them.
    """
    name: str
    num_channels: int
    sites: List[ChannelSite] = field(default_factory=list)
    blocks: Optional[List[List[int]]] = None
    bare_params: List[ChannelSite] = field(default_factory=list)

    def modules(self, role: Optional[str] = None) -> List[str]:
        return [s.module for s in self.sites if role in (None, s.role)]


@dataclass
class SkippedUnit:
    """A coupled group that is not prunable, and why."""
    name: str
    num_channels: int
    reason: str


@dataclass
class AnalysisResult:
    """Units found in a model plus everything that was left out."""
    units: List[UnitSpec]
    skipped: List[SkippedUnit]
    #: ``{module_name: number_of_calls}`` for conv/linear modules seen.
    call_counts: Dict[str, int]
    #: Leaf modules with parameters that DepGraph does not understand.
    opaque_modules: List[str]
    #: Conv/linear layers whose output channels reach the model outputs
    #: (predictions; never prunable), in analysis order.
    output_layers: List[str] = field(default_factory=list)
