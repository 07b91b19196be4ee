"""Layer kinds the channel analysis distinguishes."""
import torch.nn as nn

#: Module types whose *input* channels can be gated exactly in a forward
#: pre-hook (the gate multiplies the input along the channel dimension).
GATEABLE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
#: Normalisation layers whose statistics mix channels: removing a channel
#: changes the output of the others, which an input gate cannot reproduce.
#: The mutator recomputes them over the alive channels instead, where the
#: analysis finds each call to be a LayerNorm over the channel dim (see
#: :mod:`.channel_norms`). (GroupNorm mixes channels only within a group: it
#: is supported by tying the channels of each group, see the module
#: docstring.)
CROSS_CHANNEL_NORMS = (nn.LayerNorm, )
#: Layers with per-channel parameters or statistics only: channels pass
#: through them unmixed.
PER_CHANNEL_TYPES = (nn.modules.batchnorm._BatchNorm,
                     nn.modules.instancenorm._InstanceNorm, nn.PReLU)


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise convolution: one input and one output channel per group."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def is_grouped(module: nn.Module) -> bool:
    """A grouped convolution that is not depthwise."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and not is_depthwise(module))
