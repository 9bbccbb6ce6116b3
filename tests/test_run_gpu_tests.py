"""tools/run_gpu_tests.py: GPU tests, each in its own pytest process, from a queue (run here on CPU, where they
skip)."""
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import run_gpu_tests  # noqa: E402

TOOL = os.path.join(ROOT, 'tools', 'run_gpu_tests.py')


def test_outcome_of_a_finished_test_process():
    assert run_gpu_tests.outcome(0, 'tests/a.py .\n1 passed in 0.5s\n') == 'passed'
    assert run_gpu_tests.outcome(0, 'SKIPPED [1] tests/a.py:3: CUDA needed\n1 skipped in 0.5s\n') == 'skipped'
    assert run_gpu_tests.outcome(1, 'FAILED tests/a.py::test_x\n1 failed in 0.5s\n') == 'failed (exit 1)'
    assert run_gpu_tests.outcome(5, '') == 'failed (exit 5)'


def test_queue_runs_tests_in_order_until_the_timeout(tmp_path):
    """One process at a time: a passing test, a failing one, one that outlives the timeout (killed) and one that
    the timeout leaves unstarted."""
    scripts = {'pass': 'print("1 passed in 0.01s")', 'fail': 'import sys; print("1 failed"); sys.exit(1)',
               'slow': 'import time; time.sleep(60)', 'later': 'print("1 passed in 0.01s")'}
    reported, start = [], time.monotonic()
    results = run_gpu_tests.run_queue(list(scripts), 1, 8.0, tmp_path,
                                      command=lambda test: [sys.executable, '-c', scripts[test]],
                                      report=lambda test, result, log: reported.append((test, result,
                                                                                        time.monotonic() - start)))
    assert results == {'pass': 'passed', 'fail': 'failed (exit 1)', 'slow': 'timed out', 'later': 'not run'}
    assert [(test, result) for test, result, _ in reported] == list(results.items())  # each once, in order
    assert reported[0][2] < 6.0 <= reported[2][2]  # 'pass' reported when it ended, not at the 8 s deadline
    assert sorted(p.name for p in tmp_path.iterdir()) == ['000_pass.log', '001_fail.log', '002_slow.log']


def test_a_timed_out_test_is_killed_with_the_processes_it_started(tmp_path):
    pid_file = tmp_path / 'child.pid'
    spawn = ('import subprocess, sys, time; '
             'child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]); '
             f'open({str(pid_file)!r}, "w").write(str(child.pid)); time.sleep(120)')
    results = run_gpu_tests.run_queue(['spawns'], 1, 4.0, tmp_path, command=lambda test: [sys.executable, '-c', spawn])
    assert results == {'spawns': 'timed out'}
    child = int(pid_file.read_text())
    for _ in range(50):  # killed; reaped by init shortly after
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if open(f'/proc/{child}/stat').read().split()[2] == 'Z':
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f'the test\'s child process {child} outlived the timeout')


def test_a_failure_is_printed_with_pytests_error_lines_even_when_debug_output_follows(tmp_path, capsys):
    log = tmp_path / 'fail.log'
    log.write_text('line 0\n>       assert rel < tol\nE   AssertionError: gradients differ\nE   assert 0.3 <= 0.0001\n'
                   + ''.join(f'DEBUG trace {i}\n' for i in range(100))
                   + 'FAILED tests/a.py::test_x - AssertionError: gradients differ\n1 failed in 2.0s\n')
    printer = run_gpu_tests.outcome_printer(3)
    printer('tests/a.py::test_x', 'failed (exit 1)', log)
    printer('tests/a.py::test_y', 'passed', log)
    printer('tests/a.py::test_z', 'not run', None)
    assert capsys.readouterr().out == ('failed (exit 1) tests/a.py::test_x\n'
                                       '    | E   AssertionError: gradients differ\n    | E   assert 0.3 <= 0.0001\n'
                                       '    | FAILED tests/a.py::test_x - AssertionError: gradients differ\n'
                                       'passed    tests/a.py::test_y\nnot run   tests/a.py::test_z\n')


def test_a_crash_without_error_lines_is_printed_with_the_end_of_its_log(tmp_path, capsys):
    log = tmp_path / 'crash.log'
    log.write_text(''.join(f'line {i}\n' for i in range(100)) + 'Fatal Python error: Segmentation fault\n')
    run_gpu_tests.outcome_printer(2)('tests/a.py::test_x', 'failed (exit -11)', log)
    assert capsys.readouterr().out == ('failed (exit -11) tests/a.py::test_x\n    | line 99\n'
                                       '    | Fatal Python error: Segmentation fault\n')


def test_collects_only_gpu_tests_and_runs_each_in_its_own_process(tmp_path):
    ids = run_gpu_tests.collect(['tests/test_ops_triton.py'], 'test_look_back_gpu or test_dispatch_picks_triton')
    assert ids == ['tests/test_ops_triton.py::test_look_back_gpu',
                   'tests/test_ops_triton.py::test_dispatch_picks_triton_on_cuda']
    done = subprocess.run([sys.executable, TOOL, '--jobs', '2', '--log-dir', str(tmp_path), '-k',
                           'test_look_back_gpu or test_dispatch_picks_triton', 'tests/test_ops_triton.py'],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'skipped   tests/test_ops_triton.py::test_look_back_gpu\n' in done.stdout  # no CUDA here
    assert '2 GPU tests, 2 at a time, ' in done.stdout and ': 2 skipped; logs in ' in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ['000_test_ops_triton.py_test_look_back_gpu.log',
                                                         '001_test_ops_triton.py_test_dispatch_picks_triton_on_cuda.log']


@pytest.mark.parametrize('args,message', [(['--jobs', '0'], '--jobs must be at least 1'),
                                          (['-k', 'no_such_test_anywhere'], 'no GPU tests collected')])
def test_bad_or_empty_selection(args, message):
    done = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=600)
    assert message in done.stdout + done.stderr
    assert done.returncode == (2 if '--jobs' in args else 5)
