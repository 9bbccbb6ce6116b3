"""Run the GPU-marked tests, each in its own pytest process, several at once.

The first use of each Triton kernel variant compiles it (minutes for the backward at large d_state), and one pytest
process compiles one variant at a time; running the tests in parallel processes compiles them in parallel (Triton's
disk cache is shared). Each test gets its own process, started from a queue as others finish, so a test that
compiles for minutes holds up no other test.

    python tools/run_gpu_tests.py                          # every GPU test under tests/
    python tools/run_gpu_tests.py --jobs 8 -k cross tests/test_ops_triton.py

Each test's pytest output goes to its own log in ``--log-dir``. Every test's outcome is printed as soon as it is
known (so a run killed from outside keeps what finished): passed, skipped, failed, timed out (``--timeout``, counted
from the start, collection included, ran out while it ran) or not run (it ran out before the test started); then the
counts. A test that runs out of time is killed with every process it started. A failed test's outcome comes with
pytest's error lines from its log (the assertion or exception and the summary; the log's last lines when there are
none), at most ``--failure-lines``, so that the reason travels with the summary when the logs stay behind on another
machine. Exit status: 0 when every test passed or was skipped (as in pytest, GPU tests skip without
CUDA), 1 if any failed, timed out or did not run, 5 if nothing was collected.
"""
from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
OK = ('passed', 'skipped')
PYTEST_GPU = [sys.executable, '-m', 'pytest', '-m', 'gpu', '-p', 'no:cacheprovider']


def collect(paths: list[str], keyword: str | None) -> list[str]:
    """Node ids of the GPU-marked tests under ``paths`` (optionally filtered by ``-k keyword``)."""
    cmd = [*PYTEST_GPU, '--collect-only', '-q', *paths]
    if keyword:
        cmd += ['-k', keyword]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f'test collection failed:\n{done.stdout}\n{done.stderr}')
    return [line.strip() for line in done.stdout.splitlines() if '::' in line]


def pytest_command(test: str) -> list[str]:
    return [*PYTEST_GPU, '-q', '-rfEs', test]


def outcome(code: int, log_text: str) -> str:
    """A finished single-test pytest process's outcome, from its exit status and the summary line of its log."""
    lines = log_text.strip().splitlines()
    last = lines[-1] if lines else ''
    if code != 0:
        return f'failed (exit {code})'
    return 'skipped' if re.search(r'\bskipped\b', last) and not re.search(r'\bpassed\b', last) else 'passed'


def run_queue(tests: list[str], jobs: int, timeout: float, log_dir: pathlib.Path,
              command: Callable[[str], list[str]] = pytest_command,
              report: Callable[[str, str, pathlib.Path | None], None] = lambda test, result, log: None
              ) -> dict[str, str]:
    """Run ``command(test)`` for every test, at most ``jobs`` at once, in queue order, until ``timeout`` seconds
    have passed; each process's output goes to its own log, each outcome to ``report(test, outcome, log)`` (no log for
    a test not run) as soon as it is known. Returns every test's outcome, in the tests' order."""
    deadline = time.monotonic() + timeout
    pending = collections.deque(enumerate(tests))
    running: dict[subprocess.Popen, tuple[str, pathlib.Path]] = {}
    results: dict[str, str] = {}

    def record(test: str, result: str, log: pathlib.Path | None = None) -> None:
        results[test] = result
        report(test, result, log)

    while pending or running:
        while pending and len(running) < jobs and time.monotonic() < deadline:
            index, test = pending.popleft()
            log = log_dir / f'{index:03d}_{re.sub(r"[^A-Za-z0-9_.-]+", "_", test.split("/")[-1])[:120]}.log'
            with log.open('w') as out:
                # a session of its own: a timed-out test is killed with everything it started (inductor's compile
                # workers, Triton's compiler), which would otherwise keep loading the machine's cores
                running[subprocess.Popen(command(test), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)] = (test, log)
        for proc in [p for p in running if p.poll() is not None]:
            test, log = running.pop(proc)
            record(test, outcome(proc.returncode, log.read_text()), log)
        if time.monotonic() >= deadline:
            for proc, (test, log) in running.items():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                record(test, 'timed out', log)
            for _, test in pending:
                record(test, 'not run')
            break
        time.sleep(0.2)
    return {test: results[test] for test in tests}


def failure_excerpt(log_text: str, count: int) -> list[str]:
    """The last ``count`` of the lines pytest marks as the error ('E ...': the assertion or exception) and its
    'FAILED'/'ERROR' summary lines, or the log's last ``count`` lines when it has none (a crash). A log that ends in
    captured output (a compiler's debug logging) still shows why the test failed."""
    lines = log_text.rstrip().splitlines()
    errors = [line for line in lines if line.startswith(('E ', 'FAILED ', 'ERROR '))]
    return (errors or lines)[-count:]


def outcome_printer(failure_lines: int) -> Callable[[str, str, pathlib.Path | None], None]:
    """Prints each outcome on a line, a failure followed by ``failure_lines`` lines of its log (see
    :func:`failure_excerpt`)."""
    def print_outcome(test: str, result: str, log: pathlib.Path | None) -> None:
        print(f'{result:9s} {test}', flush=True)
        if result.startswith('failed') and log is not None and failure_lines > 0:
            excerpt = failure_excerpt(log.read_text(errors='replace'), failure_lines)
            print(''.join(f'    | {line}\n' for line in excerpt), end='', flush=True)
    return print_outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('paths', nargs='*', default=['tests'], help='test files or directories (default: tests)')
    parser.add_argument('-k', dest='keyword', help='pytest -k expression applied when collecting')
    parser.add_argument('--jobs', type=int, default=8, help='pytest processes at once (default 8)')
    parser.add_argument('--timeout', type=float, default=1800, help='seconds for the whole run (default 1800)')
    parser.add_argument('--log-dir', default='work_dirs/gpu_tests', help='one log per test')
    parser.add_argument('--failure-lines', type=int, default=40,
                        help='error lines of a failed test\'s log printed after its outcome (default 40; 0: none)')
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f'--jobs must be at least 1, got {args.jobs}')
    if args.failure_lines < 0:
        parser.error(f'--failure-lines must be 0 or more, got {args.failure_lines}')
    start = time.monotonic()
    tests = collect(args.paths, args.keyword)
    if not tests:
        print('no GPU tests collected (check the paths and -k)')
        return 5  # as pytest: nothing collected
    log_dir = ROOT / args.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    results = run_queue(tests, args.jobs, args.timeout - (time.monotonic() - start), log_dir,
                        report=outcome_printer(args.failure_lines))
    counts = collections.Counter(r.split(' (')[0] for r in results.values())
    print(f'{len(tests)} GPU tests, {args.jobs} at a time, {time.monotonic() - start:.0f} s: '
          + ', '.join(f'{n} {r}' for r, n in sorted(counts.items())) + f'; logs in {log_dir}')
    return 0 if all(r in OK for r in results.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
