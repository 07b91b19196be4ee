from .checkpoint_checks import (ArchitectureMismatch, CheckpointConfigMismatch,
                                check_checkpoint_fits_model,
                                check_checkpoint_matches_config,
                                checkpoint_kind, model_kind,
                                pruned_architecture_cfg)
from .config_input import pipeline_input_size
from .io import (ATOMIC_BACKEND, ATOMIC_BACKEND_ARGS, AtomicLocalBackend,
                 atomic_write, load_checkpoint_file, remove_stale_temp_files,
                 save_json, save_text, save_torch)
from .options import (KeyValueAction, ParseTimeVariableError,
                      add_cfg_options, check_choice, merge_cfg_options)
from .safe_pickle import UnsafeCheckpointError

__all__ = [
    'ATOMIC_BACKEND', 'ATOMIC_BACKEND_ARGS', 'AtomicLocalBackend',
    'UnsafeCheckpointError', 'atomic_write', 'load_checkpoint_file',
    'remove_stale_temp_files', 'save_json', 'save_text', 'save_torch',
    'ArchitectureMismatch', 'CheckpointConfigMismatch',
    'check_checkpoint_fits_model', 'check_checkpoint_matches_config',
    'checkpoint_kind', 'model_kind', 'pruned_architecture_cfg',
    'pipeline_input_size', 'check_choice', 'KeyValueAction',
    'add_cfg_options', 'merge_cfg_options', 'ParseTimeVariableError'
]
