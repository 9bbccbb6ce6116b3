"""Build mamba_ssm's CUDA selective scan from its PyPI source release, for one GPU architecture, offline.

mamba_ssm's setup compiles its kernels for nine GPU architectures and first tries to download a prebuilt wheel. This
unpacks the release, keeps only the architecture asked for (default: the visible GPU's) in its setup, and installs
it with pip offline, with no build isolation and no dependencies, into ``--target``; then it imports the built
extension and prints how long the build took. Only the compiled ``selective_scan_cuda`` is used by mmvmamba's
'mamba_ssm' backend, so mamba_ssm's own Python dependencies need not be installed.

    # where a package index is reachable, in an environment with torch (pip runs the setup for its metadata):
    MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-build-isolation mamba_ssm==2.3.2.post1
    python tools/build_mamba_ssm.py mamba_ssm-2.3.2.post1.tar.gz --target work_dirs/mamba_ssm
    PYTHONPATH=work_dirs/mamba_ssm:$PYTHONPATH python tools/run_gpu_tests.py tests/test_ops_mamba_ssm.py
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
import time

# one architecture of mamba_ssm's setup.py: a "-gencode" flag and its "arch=compute_XX,code=sm_XX" value
_GENCODE = re.compile(r'cc_flag\.append\("-gencode"\)\n(\s*)cc_flag\.append\("arch=compute_(\d+a?),code=sm_\d+a?"\)')


def keep_one_architecture(setup_source: str, arch: str) -> str:
    """mamba_ssm's setup.py with every ``-gencode`` pair but ``arch``'s (e.g. '90') replaced by ``pass``."""
    found = [m.group(2) for m in _GENCODE.finditer(setup_source)]
    if not found:
        raise RuntimeError("mamba_ssm's setup.py does not list its architectures as cc_flag.append(\"-gencode\") "
                           'pairs any more; this script needs updating for that release')
    if arch not in found:
        raise ValueError(f'architecture {arch} is not among those mamba_ssm builds for ({", ".join(found)})')
    return _GENCODE.sub(lambda m: m.group(0) if m.group(2) == arch else 'pass', setup_source)


def visible_gpu_arch() -> str:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit('no CUDA GPU is visible: pass --arch (e.g. 90 for H100/H200)')
    major, minor = torch.cuda.get_device_capability()
    return f'{major}{minor}'


def unpack(sdist: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    """Extract the release (tar.gz) and return its top-level folder."""
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter='data')
    folders = [p for p in into.iterdir() if p.is_dir()]
    if len(folders) != 1 or not (folders[0] / 'setup.py').is_file():
        raise ValueError(f'{sdist} is not a mamba_ssm source release (expected one folder with a setup.py)')
    return folders[0]


def build(sdist: pathlib.Path, target: pathlib.Path, arch: str, jobs: int) -> float:
    """Build and install into ``target``; returns the seconds pip took."""
    with tempfile.TemporaryDirectory(prefix='mamba_ssm_build_') as tmp:
        source = unpack(sdist, pathlib.Path(tmp))
        setup = source / 'setup.py'
        setup.write_text(keep_one_architecture(setup.read_text(), arch))
        env = dict(os.environ, MAMBA_FORCE_BUILD='TRUE', MAX_JOBS=str(jobs),
                   TORCH_CUDA_ARCH_LIST=f'{arch[:-1]}.{arch[-1]}')
        cmd = [sys.executable, '-m', 'pip', 'install', '--no-build-isolation', '--no-deps', '--no-index',
               '--no-cache-dir', '--upgrade', '--target', str(target), str(source)]
        print(' '.join(cmd), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        return time.perf_counter() - start


def check_import(target: pathlib.Path) -> str:
    """Import the built extension in a fresh process; returns where it was loaded from."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(target), os.environ.get('PYTHONPATH')])))
    code = 'import torch, selective_scan_cuda; print(selective_scan_cuda.__file__)'
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f'the build finished but selective_scan_cuda does not import:\n{done.stderr}')
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sdist', type=pathlib.Path, help="mamba_ssm's source release, a .tar.gz")
    parser.add_argument('--target', type=pathlib.Path, default=pathlib.Path('work_dirs/mamba_ssm'),
                        help='install folder, to put on PYTHONPATH (default: work_dirs/mamba_ssm)')
    parser.add_argument('--arch', help='GPU architecture as in sm_XX, e.g. 90 (default: the visible GPU)')
    parser.add_argument('--jobs', type=int, default=os.cpu_count(), help='parallel compile jobs (default: CPUs)')
    args = parser.parse_args()
    if not args.sdist.is_file():
        raise SystemExit(f'{args.sdist} does not exist: download it with MAMBA_SKIP_CUDA_BUILD=TRUE pip download '
                         f'--no-deps --no-build-isolation mamba_ssm (where torch is installed)')
    arch = args.arch or visible_gpu_arch()
    seconds = build(args.sdist, args.target.resolve(), arch, args.jobs)
    print(f'built {args.sdist.name} for sm_{arch} with {args.jobs} jobs in {seconds:.0f} s; '
          f'selective_scan_cuda: {check_import(args.target.resolve())}')


if __name__ == '__main__':
    main()
