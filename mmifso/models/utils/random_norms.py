"""Random norm parameters, so that a check of masked against exported
outputs sees every removed channel."""
import torch
import torch.nn as nn


def randomise_norm_parameters(model: nn.Module,
                              generator: torch.Generator) -> None:
    """Give the norms and layer scales of ``model`` random values, in place.

    BatchNorm and GroupNorm weights are drawn from [0.5, 1.5), their biases
    from [-0.3, 0.3): with a bias != 0 a removed channel's activation is not
    zero, so masking must really remove it. Layer scales (1-d parameters
    named ``gamma`` or ``layer_scale``) are drawn from [0.5, 1.5): ConvNeXt's
    start at 1e-6 and ConvNeXt-V2's GRN ``gamma`` at 0, which would hide any
    error of the branch they scale.

    Args:
        model (nn.Module): Changed in place.
        generator (torch.Generator): Draws the values (CPU).
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split('.')[-1] in ('gamma', 'layer_scale') and \
                    p.dim() == 1:
                p.copy_(_uniform(p, 0.5, 1.5, generator))
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) \
                    and getattr(m, 'weight', None) is not None:
                m.weight.copy_(_uniform(m.weight, 0.5, 1.5, generator))
                m.bias.copy_(_uniform(m.bias, -0.3, 0.3, generator))


def _uniform(like: torch.Tensor, low: float, high: float,
             generator: torch.Generator) -> torch.Tensor:
    """Values from [low, high) drawn on the CPU (the generator's device)."""
    return torch.empty(like.shape).uniform_(low, high, generator=generator)
