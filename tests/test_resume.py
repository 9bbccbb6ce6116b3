"""A killed run loses nothing, and resuming is exact.

On CPU (one thread, the demo's seed), the demo Mask R-CNN and UperNet trained N iterations give the same losses,
weights and optimizer state as N/2 iterations, a stop and ``--resume`` to N. A last checkpoint cut short (a kill while
it was written) is skipped by ``--resume``, which resumes from the one before. Checkpoints are written atomically.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner

import mmvmamba.engine  # noqa: F401  (registers the hooks and the atomic backend)
from mmvmamba.engine import load_checkpoint_file, write_atomically
from tests.test_train_test_tools import CONFIGS, demo_options, run

ITERS = 4


def train(task: str, data: Path, work: Path, iters: int, *extra: str) -> str:
    """tools/train.py on the demo config, checkpoints every ITERS // 2 iterations, every iteration's own loss logged."""
    options = demo_options(task, data, iters=iters, checkpoint_interval=ITERS // 2)
    return run([sys.executable, 'tools/train.py', CONFIGS[task], '--work-dir', str(work), *extra, '--cfg-options',
                *options, 'log_processor.window_size=1'])


def logged_losses(work: Path) -> dict[int, dict[str, float]]:
    """Every logged iteration's losses, from the scalars MMEngine writes (full precision), over all runs in ``work``."""
    losses = {}
    for scalars in sorted(work.glob('*/vis_data/scalars.json')):
        for line in scalars.read_text().splitlines():
            record = json.loads(line)
            losses[record['iter']] = {k: v for k, v in record.items() if k.startswith('loss') or k == 'loss'}
    return losses


def assert_same_training_state(path_a: Path, path_b: Path) -> None:
    a, b = load_checkpoint_file(path_a), load_checkpoint_file(path_b)
    assert a['meta']['iter'] == b['meta']['iter']
    assert a['state_dict'].keys() == b['state_dict'].keys()
    different = [k for k in a['state_dict'] if not torch.equal(a['state_dict'][k], b['state_dict'][k])]
    assert not different, f'{len(different)} tensors differ, e.g. {different[:5]}'
    for index, state in a['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(value, b['optimizer']['state'][index][name]), (index, name)


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def uninterrupted(request, demo_data, tmp_path_factory) -> tuple[str, Path]:
    """(task, work dir of a run of ITERS iterations without a stop)."""
    work = tmp_path_factory.mktemp(f'{request.param}_uninterrupted')
    train(request.param, demo_data, work, ITERS)
    return request.param, work


def test_resume_gives_the_same_losses_and_weights(uninterrupted, demo_data, tmp_path):
    task, reference = uninterrupted
    work = tmp_path / 'work'
    train(task, demo_data, work, ITERS // 2)
    output = train(task, demo_data, work, ITERS, '--resume')
    assert f'resumed epoch: 0, iter: {ITERS // 2}' in output
    expected, resumed = logged_losses(reference), logged_losses(work)
    assert sorted(expected) == list(range(1, ITERS + 1)) and resumed == expected
    assert_same_training_state(work / f'iter_{ITERS}.pth', reference / f'iter_{ITERS}.pth')


def test_resume_skips_a_truncated_last_checkpoint(uninterrupted, demo_data, tmp_path):
    """The last checkpoint cut in half (a run killed while writing it): --resume says it skips it, resumes from the
    previous one and ends where the uninterrupted run ended."""
    task, reference = uninterrupted
    work = tmp_path / 'work'
    shutil.copytree(reference, work, ignore=shutil.ignore_patterns('2*'))  # the checkpoints, not the logs
    last = work / f'iter_{ITERS}.pth'
    (work / 'last_checkpoint').write_text(str(last))
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])
    output = train(task, demo_data, work, ITERS, '--resume')
    assert f'--resume: skipping {last}' in output and 'is truncated' in output, output[-3000:]
    assert f'resumed epoch: 0, iter: {ITERS // 2}' in output
    assert_same_training_state(last, reference / f'iter_{ITERS}.pth')


class Linear(BaseModel):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode='tensor'):
        loss = (self.layer(inputs) - labels).square().mean()
        return dict(loss=loss) if mode == 'loss' else loss


def toy_runner(work: Path, **checkpoint: object) -> Runner:
    dataset = [dict(inputs=torch.randn(2), labels=torch.randn(1)) for _ in range(8)]
    return Runner(model=Linear(), work_dir=str(work), train_cfg=dict(by_epoch=False, max_iters=3),
                  train_dataloader=dict(dataset=dataset, sampler=dict(type='InfiniteSampler'), batch_size=2,
                                        collate_fn=dict(type='default_collate')),
                  optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
                  default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, **checkpoint)),
                  custom_hooks=[dict(type='RandomStateHook')], default_scope='mmengine', experiment_name=str(work))


def test_kill_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """max_keep_ckpts=1 and the third save dies half-way: iter_2.pth is still there, intact, and last_checkpoint points
    to it (MMEngine's CheckpointHook deletes the old checkpoint before writing the new one)."""
    runner = toy_runner(tmp_path, interval=1, max_keep_ckpts=1)
    save = runner.save_checkpoint

    def dies_at_third(out_dir, filename, *args, **kwargs):
        if filename == 'iter_3.pth':
            raise KeyboardInterrupt('killed while writing')
        return save(out_dir, filename, *args, **kwargs)

    monkeypatch.setattr(runner, 'save_checkpoint', dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_2.pth']
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_2.pth')
    assert load_checkpoint_file(tmp_path / 'iter_2.pth')['meta']['iter'] == 2


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / 'iter_2.pth'
    path.write_bytes(b'old')

    def interrupted(fd):
        raise KeyboardInterrupt('killed before the data reached the disk')

    monkeypatch.setattr('os.fsync', interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, b'new' * 1000)
    assert path.read_bytes() == b'old' and [p.name for p in tmp_path.iterdir()] == ['iter_2.pth']
    monkeypatch.undo()
    write_atomically(path, b'new')
    assert path.read_bytes() == b'new'


def test_random_state_is_saved_and_restored(tmp_path):
    """The checkpoints carry the random generators' states; a resumed toy run draws what the uninterrupted one drew."""
    runner = toy_runner(tmp_path / 'a', interval=3)
    runner.train()
    assert set(load_checkpoint_file(tmp_path / 'a' / 'iter_3.pth')['random_state']) >= {'python', 'numpy', 'torch'}
    expected = torch.rand(3)
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    runner = toy_runner(tmp_path / 'b', interval=3)
    runner._resume, runner._load_from = True, str(tmp_path / 'b' / 'iter_3.pth')
    runner.train()
    assert torch.equal(torch.rand(3), expected)



@pytest.mark.parametrize('hooks,expected', [
    (None, dict(type='AtomicCheckpointHook', interval=1)),
    (dict(checkpoint=dict(type='CheckpointHook', interval=5)), dict(type='AtomicCheckpointHook', interval=5)),
    (dict(checkpoint=None), None),
    (dict(checkpoint=dict(type='MyCheckpointHook')), dict(type='MyCheckpointHook')),
], ids=['default', 'mmengine', 'disabled', 'custom'])
def test_train_tool_makes_checkpoints_atomic_and_saves_random_states(hooks, expected):
    from mmengine.config import Config

    from tests.test_train_test_tools import import_train_tool
    cfg = Config({} if hooks is None else dict(default_hooks=hooks))
    import_train_tool().add_run_safety_hooks(cfg)
    assert cfg.default_hooks.checkpoint == expected
    assert cfg.custom_hooks == [dict(type='RandomStateHook')]
