"""Run the GPU-marked tests in several pytest processes at once.

The first use of each Triton kernel variant compiles it (minutes for the backward at large d_state), and one pytest
process compiles one variant at a time; spreading the tests over processes compiles them in parallel (Triton's disk
cache is shared). Tests are dealt round robin, so neighbouring parametrisations land in different processes.

    python tools/run_gpu_tests.py                          # every GPU test under tests/
    python tools/run_gpu_tests.py --jobs 8 -k cross tests/test_ops_triton.py

Each process writes its log to ``--log-dir`` (pytest -v: a line per finished test); the summary lists every
process's last line, and for a process that ran out of time the tests it did not finish, to run again on their own.
Exit status: 0 when every process passed (tests skipped without CUDA count as passed, as in pytest), 1 if any failed
or ran out of time, 5 if nothing was collected.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def collect(paths: list[str], keyword: str | None) -> list[str]:
    """Node ids of the GPU-marked tests under ``paths`` (optionally filtered by ``-k keyword``)."""
    cmd = [sys.executable, '-m', 'pytest', '--collect-only', '-q', '-m', 'gpu', '-p', 'no:cacheprovider', *paths]
    if keyword:
        cmd += ['-k', keyword]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f'test collection failed:\n{done.stdout}\n{done.stderr}')
    return [line.strip() for line in done.stdout.splitlines() if '::' in line]


def deal(ids: list[str], jobs: int) -> list[list[str]]:
    """Round robin over at most ``jobs`` groups (no empty group)."""
    groups = [ids[i::jobs] for i in range(min(jobs, len(ids)))]
    return [g for g in groups if g]


def unfinished(group: list[str], log_text: str) -> list[str]:
    """The tests of ``group`` without an outcome in their process's pytest -v log."""
    return [t for t in group if not re.search(re.escape(t) + r' (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)', log_text)]


def summary(log_name: str, group: list[str], code: int | None, log_text: str) -> str:
    """One process's line: its log, test count, exit status (None: timed out) and last log line."""
    lines = log_text.strip().splitlines()
    line = f'{log_name}: {len(group)} tests, {"timed out" if code is None else f"exit {code}"}: ' + (
        lines[-1] if lines else '(no output)')
    if code is None:
        line += '\n  not finished: ' + ' '.join(unfinished(group, log_text))
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('paths', nargs='*', default=['tests'], help='test files or directories (default: tests)')
    parser.add_argument('-k', dest='keyword', help='pytest -k expression applied when collecting')
    parser.add_argument('--jobs', type=int, default=8, help='pytest processes at once (default 8)')
    parser.add_argument('--timeout', type=float, default=1800, help='seconds each process may run (default 1800)')
    parser.add_argument('--log-dir', default='work_dirs/gpu_tests', help='one log per process')
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f'--jobs must be at least 1, got {args.jobs}')
    ids = collect(args.paths, args.keyword)
    if not ids:
        print('no GPU tests collected (check the paths and -k)')
        return 5  # as pytest: nothing collected
    log_dir = ROOT / args.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    procs = []
    for i, group in enumerate(deal(ids, args.jobs)):
        log = log_dir / f'job{i}.log'
        cmd = [sys.executable, '-m', 'pytest', '-m', 'gpu', '-v', '-rfEs', '-p', 'no:cacheprovider', *group]
        with log.open('w') as out:
            procs.append((log, group, subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)))
    failed = False
    for log, group, proc in procs:
        try:
            code = proc.wait(timeout=max(1.0, args.timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        print(summary(log.name, group, code, log.read_text()))
        failed |= code != 0
    print(f'{len(ids)} GPU tests in {len(procs)} processes, {time.monotonic() - start:.0f} s; logs in {log_dir}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
