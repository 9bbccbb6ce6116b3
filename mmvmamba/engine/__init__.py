"""MMEngine machinery for the tools: checkpoints read without running code, written atomically, runs resumed
exactly. Importing this package registers the safe local checkpoint loader, the atomic file backend and the hooks."""
from .atomic_write import AtomicLocalBackend, write_atomically
from .hooks import AtomicCheckpointHook, RandomStateHook
from .resume import newest_intact_checkpoint, read_training_checkpoint
from .safe_load import CheckpointError, allow_unsafe_load, load_checkpoint_file, mmengine_types_allowed

__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend', 'CheckpointError', 'RandomStateHook', 'allow_unsafe_load',
           'load_checkpoint_file', 'mmengine_types_allowed', 'newest_intact_checkpoint', 'read_training_checkpoint',
           'write_atomically']
