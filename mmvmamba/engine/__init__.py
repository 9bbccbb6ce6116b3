"""MMEngine machinery for the tools: checkpoints read without running code. Importing this package registers the
safe local checkpoint loader."""
from .safe_load import CheckpointError, allow_unsafe_load, load_checkpoint_file, mmengine_types_allowed

__all__ = ['CheckpointError', 'allow_unsafe_load', 'load_checkpoint_file', 'mmengine_types_allowed']
