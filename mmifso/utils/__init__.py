from .io import atomic_write, load_checkpoint_file, save_json, save_torch

__all__ = ['atomic_write', 'load_checkpoint_file', 'save_json', 'save_torch']
