"""Training-flag and hook scopes for the forwards mmifso runs on a user's
model."""
import contextlib
from typing import Callable, Dict, Iterator, Sequence

import torch
import torch.nn as nn


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every module's own ``training`` flag on exit (a model may
    mix modes, e.g. ``norm_eval`` backbones, so ``model.train()`` would not
    restore it)."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Put ``model`` in eval mode (a demo or tracing forward must not update
    BatchNorm statistics, and train-mode BN rejects 1x1 maps of a single
    image); every module's flag is restored on exit.

    Args:
        model (nn.Module): The model.
        enabled (bool): False leaves the modes as they are.
    """
    if not enabled:
        yield
        return
    with preserved_modes(model):
        model.eval()
        yield


@contextlib.contextmanager
def removing_hooks(handles: Sequence) -> Iterator[None]:
    """Remove the hook ``handles`` (``RemovableHandle``) on exit, also when
    the body raises (a hook left behind would run in every later forward of
    the user's model)."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def forward_with_pre_hooks(model: nn.Module, forward_fn: Callable,
                           pre_hooks: Dict[nn.Module, Callable]) -> None:
    """Run ``forward_fn(model)`` once in eval mode without gradients, with
    ``pre_hooks`` (module -> forward pre-hook) registered for that forward
    only (to read input shapes and the like)."""
    handles = [m.register_forward_pre_hook(h) for m, h in pre_hooks.items()]
    with removing_hooks(handles), eval_mode(model), torch.no_grad():
        forward_fn(model)
