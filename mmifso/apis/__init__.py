from mmifso.utils.checkpoint_checks import (CheckpointConfigMismatch,
                                            check_checkpoint_matches_config,
                                            checkpoint_kind, model_kind)
from . import checks  # noqa: F401  (``mmifso.apis.checks`` re-exports them)
from .export import export_checkpoint
from .onnx import OnnxExportError, export_onnx, time_onnx
from .pruning import (analyse_model, export_model, prune_to_target,
                      score_channels)
from .runner import (RunnerSetupError, add_pruning_arguments,
                     add_runner_arguments, build_runner, build_tool_runner,
                     checkpoint_to_load, default_work_dir, exit_on_errors,
                     flops_checkpoint, load_config, pruning_hook_index,
                     run_config, set_local_rank)

__all__ = [
    'CheckpointConfigMismatch', 'check_checkpoint_matches_config',
    'checkpoint_kind', 'model_kind', 'export_checkpoint', 'analyse_model',
    'export_model', 'prune_to_target', 'score_channels', 'RunnerSetupError',
    'add_pruning_arguments', 'add_runner_arguments', 'build_runner', 'build_tool_runner',
    'checkpoint_to_load', 'default_work_dir', 'exit_on_errors',
    'flops_checkpoint',
    'load_config', 'pruning_hook_index', 'run_config', 'set_local_rank', 'OnnxExportError',
    'export_onnx', 'time_onnx'
]
