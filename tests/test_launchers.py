"""The launchers' multi-node variables (tools/dist_env.sh): NNODES, NODE_RANK, MASTER_ADDR and PORT for
tools/dist_train.sh and tools/dist_test.sh (torchrun), the same for tools/slurm_train.sh and tools/slurm_test.sh
(srun, stood in for by a script that records how it was called), and the errors for bad values."""
from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.test_train_test_tools import CONFIGS, ROOT, demo_options, free_port, run, tool_env, train_losses

DIST_TRAIN = ['bash', 'tools/dist_train.sh', CONFIGS['upernet'], '2']
RUN_VARIABLES = ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT', 'MASTER_PORT', 'GPUS', 'GPUS_PER_NODE')


def launcher_env(**settings: str) -> dict[str, str]:
    """:func:`tool_env` without the run's variables (its free PORT included), then ``settings``."""
    env = {key: value for key, value in tool_env().items() if key not in RUN_VARIABLES}
    return env | settings


@pytest.mark.parametrize('settings, message', [
    (dict(NNODES='2', NODE_RANK='0'),
     'NNODES=2 needs MASTER_ADDR: the address of the node with NODE_RANK=0, reachable from every node'),
    (dict(NNODES='2', NODE_RANK='2', MASTER_ADDR='10.0.0.1'),
     'NODE_RANK=2 is not a node of NNODES=2: number the nodes 0 to 1'),
    (dict(NODE_RANK='-1'), 'NODE_RANK=-1 is not a node of NNODES=1'),
    (dict(NNODES='0'), "NNODES must be the number of nodes (1 or more), got '0'"),
    (dict(PORT='29500', MASTER_PORT='29501'), 'PORT=29500 and MASTER_PORT=29501 differ: set one of them'),
    (dict(PORT='70000'), "PORT must be a TCP port (1 to 65535) free on the node at MASTER_ADDR, got '70000'"),
])
def test_dist_train_refuses_bad_multi_node_settings(settings, message):
    """Each bad value stops the launcher before torchrun starts, with a message that names the fix."""
    output = run(DIST_TRAIN, succeeds=False, env=launcher_env(**settings), timeout=30)
    assert f'dist_train.sh: {message}' in output
    assert 'torch.distributed' not in output and 'Traceback' not in output


def test_dist_test_needs_the_number_of_processes():
    output = run(['bash', 'tools/dist_test.sh', CONFIGS['upernet'], 'ckpt.pth'], succeeds=False, env=launcher_env(),
                 timeout=30)
    assert ("dist_test.sh: GPUS must be the number of processes on this node (one per GPU), got ''. "
            'Usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS') in output


def test_two_nodes_of_one_process_train_over_gloo(demo_data, tmp_path):
    """The multi-node recipe on one machine: dist_train.sh on "node" 1 and on "node" 0 (NNODES=2, the same
    MASTER_ADDR and PORT) form one run of 2 ranks that trains. Each node has its own work dir, as nodes without a
    shared disk have: only node 0's (rank 0's) holds a checkpoint."""
    node = dict(NNODES='2', MASTER_ADDR='127.0.0.1', PORT=str(free_port()))

    def node_args(work: Path) -> list[str]:
        return DIST_TRAIN[:-1] + ['1', '--work-dir', str(work), '--cfg-options',
                                  *demo_options('upernet', demo_data, iters=2)]

    second = subprocess.Popen(node_args(tmp_path / 'node1'), cwd=ROOT, env=launcher_env(**node, NODE_RANK='1'),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = run(node_args(tmp_path / 'node0'), env=launcher_env(**node, NODE_RANK='0'))
        second_log, _ = second.communicate(timeout=120)
    finally:
        second.kill()
    assert second.returncode == 0, second_log[-6000:]
    assert 'rank 0 of 2 runs on CPU with gloo' in log
    losses = train_losses(log)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    assert sorted(p.name for p in (tmp_path / 'node0').rglob('*.pth')) == ['iter_2.pth']
    assert not list((tmp_path / 'node1').rglob('*.pth')) and not (tmp_path / 'node1' / 'last_checkpoint').exists()


def fake_srun(tmp_path: Path) -> dict[str, str]:
    """A launcher's environment whose ``srun`` (first on the PATH) prints its arguments and the rendezvous variables
    instead of starting tasks."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'
    srun.write_text('#!/usr/bin/env bash\necho "srun $* MASTER_ADDR=${MASTER_ADDR-unset} MASTER_PORT=$MASTER_PORT"\n')
    srun.chmod(0o755)
    return launcher_env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')


@pytest.mark.parametrize('tool, args', [
    ('slurm_train.sh', [CONFIGS['mask_rcnn'], 'work_dirs/x', '--amp']),
    ('slurm_test.sh', [CONFIGS['mask_rcnn'], 'iter_2.pth', '--aug-test']),
])
def test_slurm_launchers_read_the_same_variables(tool, args, tmp_path):
    """NNODES and GPUS_PER_NODE give the task layout, PORT and MASTER_ADDR reach the tasks as MASTER_PORT and
    MASTER_ADDR (which MMEngine's Slurm launcher reads); without NNODES, GPUS counts the tasks of the job."""
    env = fake_srun(tmp_path)
    output = run(['bash', f'tools/{tool}', 'gpu', 'job', *args],
                 env=env | dict(NNODES='2', GPUS_PER_NODE='4', PORT='29611', MASTER_ADDR='node-0'))
    srun = re.search(r'^srun .*$', output, re.M).group(0)
    for option in ('-p gpu', '--job-name=job', '--nodes=2', '--gres=gpu:4', '--ntasks=8', '--ntasks-per-node=4'):
        assert f' {option} ' in srun, srun
    assert srun.endswith('--launcher=slurm ' + args[-1] + ' MASTER_ADDR=node-0 MASTER_PORT=29611'), srun
    srun = re.search(r'^srun .*$', run(['bash', f'tools/{tool}', 'gpu', 'job', *args], env=env | dict(GPUS='12')),
                     re.M).group(0)
    for option in ('--nodes=2', '--gres=gpu:8', '--ntasks=12', '--ntasks-per-node=8'):
        assert f' {option} ' in srun, srun
    assert srun.endswith('MASTER_ADDR=unset MASTER_PORT=29500'), srun


@pytest.mark.parametrize('settings, message', [
    (dict(NNODES='2', GPUS='8'), 'GPUS=8 is not NNODES x GPUS_PER_NODE = 2 x 8: set GPUS (all tasks) or NNODES'),
    (dict(GPUS_PER_NODE='0'), "GPUS_PER_NODE must be the number of GPUs (tasks) per node, 1 or more, got '0'"),
    (dict(GPUS='two'), "GPUS must be the number of GPUs (tasks) of the whole job, 1 or more, got 'two'"),
])
def test_slurm_train_refuses_bad_settings(settings, message, tmp_path):
    output = run(['bash', 'tools/slurm_train.sh', 'gpu', 'job', CONFIGS['upernet'], 'work_dirs/x'], succeeds=False,
                 env=fake_srun(tmp_path) | settings)
    assert f'slurm_train.sh: {message}' in output and 'srun ' not in output
