"""Checkpoint/config checks, re-exported from
:mod:`mmifso.utils.checkpoint_checks` (where the engine's pruning hook uses
them too), so ``mmifso.apis.checks`` keeps working."""
from mmifso.utils.checkpoint_checks import *  # noqa: F401,F403
from mmifso.utils.checkpoint_checks import __all__  # noqa: F401
