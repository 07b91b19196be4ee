from .hooks import *  # noqa: F401,F403
from .distributed import CPUDistributedDataParallel, setup_distributed

__all__ = ['CPUDistributedDataParallel', 'setup_distributed']
