"""mmifso: influence-function global channel pruning for OpenMMLab."""
from .version import __version__

# Importing the sub-packages registers every module in the mmifso registries,
# so ``custom_imports = dict(imports=['mmifso'])`` is all a config needs.
from . import datasets, engine, models, structures  # noqa: F401,E402
from . import apis  # noqa: F401,E402

__all__ = ['__version__']
