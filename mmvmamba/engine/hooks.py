"""Hooks that make training runs safe to kill and exact to resume.

- :class:`AtomicCheckpointHook`: MMEngine's ``CheckpointHook`` whose checkpoints and ``last_checkpoint`` file are
  written atomically, and which removes outdated checkpoints only after the new one is on disk.
- :class:`RandomStateHook`: keeps the random generators' states in each checkpoint and restores them on resume, so
  that a resumed run draws the same random numbers (augmentations, drop path, samplers) as an uninterrupted one.
"""
from __future__ import annotations

import os.path as osp
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from .atomic_write import ATOMIC_BACKEND, write_atomically

RANDOM_STATE_KEY = 'random_state'


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that a kill at any moment cannot leave without an intact checkpoint.

    Each checkpoint is written under a temporary name and renamed, then ``last_checkpoint`` is updated the same way,
    and only then are checkpoints beyond ``max_keep_ckpts`` removed (MMEngine removes the oldest one first, so with
    ``max_keep_ckpts=1`` a kill while writing left none). Takes every argument of ``CheckpointHook``; local output
    only (``backend_args`` defaults to the atomic local backend).
    """

    def __init__(self, *args: Any, backend_args: dict | None = None, **kwargs: Any):
        super().__init__(*args, backend_args=backend_args or dict(backend=ATOMIC_BACKEND), **kwargs)

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        write_atomically(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt.encode())
        for old_step in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)


def capture_random_state() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's global generators (and CUDA's when it is in use)."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_random_state`."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class _ReplayedBatches:
    """The loop's data iterator after this hook has already advanced it past the trained batches: the loop's own
    fast-forward (``skipped`` calls) gets placeholders, later calls get the real batches."""

    def __init__(self, iterator: Iterator, skipped: int):
        self.iterator = iterator
        self.skipped = skipped

    def __iter__(self) -> _ReplayedBatches:
        return self

    def __next__(self) -> Any:
        if self.skipped:
            self.skipped -= 1
            return None
        return next(self.iterator)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the random generators' states with each checkpoint; restore them when a run resumes.

    The states are taken when the checkpoint is written, between two iterations. On resume they are restored at the
    start of training, once the data loader has been fast-forwarded past the trained batches (which draws from the
    generators too): the run then continues with the numbers the uninterrupted run drew. In multi-process runs the
    checkpoint holds rank 0's states, which every rank restores.
    """

    priority = 'LOWEST'  # before_train_epoch: after the sampler seed hook

    def __init__(self) -> None:
        self.resumed_state: dict[str, Any] | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[RANDOM_STATE_KEY] = capture_random_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.resumed_state = checkpoint.get(RANDOM_STATE_KEY)

    def before_train_epoch(self, runner) -> None:
        state, self.resumed_state = self.resumed_state, None
        loop = runner.train_loop
        if state is None or (loop.iter == 0 and loop.epoch == 0):  # nothing resumed (or load_from only)
            return
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0:
            for _ in range(loop.iter):
                next(loop.dataloader_iterator)
            loop.dataloader_iterator = _ReplayedBatches(loop.dataloader_iterator, loop.iter)
        restore_random_state(state)
