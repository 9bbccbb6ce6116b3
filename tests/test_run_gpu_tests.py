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


def test_timed_out_process_lists_the_tests_it_did_not_finish():
    group = ['tests/a.py::test_x[1-2]', 'tests/a.py::test_x[3-4]', 'tests/a.py::test_y']
    log = ('tests/a.py::test_x[1-2] PASSED                                     [ 33%]\n'
           'tests/a.py::test_y FAILED                                          [ 66%]\n')
    assert run_gpu_tests.unfinished(group, log) == ['tests/a.py::test_x[3-4]']
    line = run_gpu_tests.summary('job3.log', group, None, log)
    assert line.startswith('job3.log: 3 tests, timed out: tests/a.py::test_y FAILED')
    assert line.endswith('\n  not finished: tests/a.py::test_x[3-4]')
    assert run_gpu_tests.summary('job0.log', group, 0, '') == 'job0.log: 3 tests, exit 0: (no output)'


@pytest.mark.parametrize('args,message', [(['--jobs', '0'], '--jobs must be at least 1'),
                                          (['-k', 'no_such_test_anywhere'], 'no GPU tests collected')])
def test_bad_or_empty_selection(args, message):
    done = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=600)
    assert message in done.stdout + done.stderr
    assert done.returncode == (2 if '--jobs' in args else 5)
