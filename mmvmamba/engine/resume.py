"""Choosing the checkpoint a training run resumes from."""
from __future__ import annotations

import glob
import os
import os.path as osp

from mmengine.logging import print_log

from .safe_load import CheckpointError, load_checkpoint_file

TRAINING_KEYS = ('meta', 'state_dict')


def read_training_checkpoint(path: str, source: str) -> dict:
    """Check that ``path`` is an intact, safe MMEngine training checkpoint (tensors mapped, not read); returns it."""
    checkpoint = load_checkpoint_file(path, source=source, mmap=True)
    missing = [key for key in TRAINING_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(f'{path!r} ({source}) is not a training checkpoint written by MMEngine (no '
                              f'{" or ".join(missing)}): resume from a checkpoint of this run\'s work dir, or give '
                              f'weights to start from as load_from.')
    return checkpoint


def _candidates(work_dir: str) -> list[str]:
    """The checkpoints in ``work_dir`` (and where ``last_checkpoint`` points), newest written first."""
    paths = set(glob.glob(osp.join(work_dir, '*.pth')))
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as file:
            last = file.read().strip()
        if last:
            paths.add(last)
            paths.update(glob.glob(osp.join(osp.dirname(last), '*.pth')))
    existing = [path for path in paths if osp.isfile(path)]
    return sorted(existing, key=lambda path: (os.stat(path).st_mtime_ns, path), reverse=True)


def newest_intact_checkpoint(work_dir: str) -> str | None:
    """The newest checkpoint in ``work_dir`` that reads as an intact training checkpoint; ``None`` when there is none.

    Checkpoints that cannot be read (truncated by a kill, damaged, unsafe) are skipped with a message saying so. Raises
    :class:`CheckpointError` when checkpoints exist but none of them is intact.
    """
    skipped = []
    for path in _candidates(work_dir):
        try:
            read_training_checkpoint(path, source='--resume')
        except CheckpointError as err:
            skipped.append(path)
            print_log(f'--resume: skipping {path}: {err}', logger='current')
            continue
        if skipped:
            print_log(f'--resume: resuming from {path}, the newest intact checkpoint', logger='current')
        return path
    if skipped:
        raise CheckpointError(f'--resume: none of the checkpoints in {work_dir!r} can be read ({", ".join(skipped)}). '
                              f'Remove them to train from the start, or resume from a copy with --resume PATH.')
    return None
