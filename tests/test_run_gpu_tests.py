"""tools/run_gpu_tests.py: GPU tests spread over parallel pytest processes (run here on CPU, where they skip)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import run_gpu_tests  # noqa: E402

TOOL = os.path.join(ROOT, 'tools', 'run_gpu_tests.py')


def test_tests_are_dealt_round_robin_without_empty_groups():
    assert run_gpu_tests.deal(list('abcde'), 2) == [['a', 'c', 'e'], ['b', 'd']]
    assert run_gpu_tests.deal(['a'], 8) == [['a']]


def test_collects_only_gpu_tests_and_runs_them(tmp_path):
    ids = run_gpu_tests.collect(['tests/test_ops_triton.py'], 'test_look_back_gpu or test_dispatch_picks_triton')
    assert ids == ['tests/test_ops_triton.py::test_look_back_gpu',
                   'tests/test_ops_triton.py::test_dispatch_picks_triton_on_cuda']
    done = subprocess.run([sys.executable, TOOL, '--jobs', '2', '--log-dir', str(tmp_path), '-k',
                           'test_look_back_gpu or test_dispatch_picks_triton', 'tests/test_ops_triton.py'],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '2 GPU tests in 2 processes' in done.stdout
    assert done.stdout.count('1 tests, exit 0: ') == 2  # each process: one test, skipped without CUDA
    assert sorted(p.name for p in tmp_path.iterdir()) == ['job0.log', 'job1.log']


@pytest.mark.parametrize('args,message', [(['--jobs', '0'], '--jobs must be at least 1'),
                                          (['-k', 'no_such_test_anywhere'], 'no GPU tests collected')])
def test_bad_or_empty_selection(args, message):
    done = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=600)
    assert message in done.stdout + done.stderr
    assert done.returncode == (2 if '--jobs' in args else 5)
