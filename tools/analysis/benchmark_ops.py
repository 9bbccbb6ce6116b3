"""Time VMamba's scan operators at VMamba-T stage shapes and print one table.

For each shape: forward and forward+backward of the cross selective scan through the reference (small shapes only:
it materialises every per-step state), the unfused Triton path (cross_scan -> selective_scan -> cross_merge), the
fused Triton kernel, and mamba_ssm's selective scan between the Triton cross-scan/merge when mamba_ssm imports.
Inputs are laid out as the model makes them (channel-last x, delta from an einsum, B/C as views of one projection),
u/delta/B/C in ``--dtype`` (bf16 by default, as in training), A/D/bias float32, float32 output.

Time: ``triton.testing.do_bench`` median (L2 flushed before each run, warm-up excluded). Bandwidth: the bytes the
fused operator must move, each input read once and each output written once (forward: x, delta, B, C, y; backward
adds the output gradient read and the gradients of x, delta, B, C written), over the time; the same byte count for
every implementation. Device copy bandwidth: a 1 GiB device-to-device copy, bytes read plus written.

Every implementation of a shape runs on the same inputs; with ``--rounds R`` they take turns R times and the table
shows each one's median, which is how two kernels should be compared: the small shapes' timings move by up to 2x
between runs and machines, much less between neighbouring calls.

    python tools/analysis/benchmark_ops.py                       # the table
    python tools/analysis/benchmark_ops.py --sweep               # Triton tile configurations of the fused kernel
    python tools/analysis/benchmark_ops.py --only 'triton fused' --baseline ../other-checkout --rounds 3
                                                                 # this fused kernel against another checkout's

The first use of each Triton kernel variant compiles it, one at a time in a process: on a fresh machine the table
spends most of its time compiling (minutes a shape). ``--compile-jobs N`` first runs every (shape, implementation)
once in its own process, N at a time, which compiles the variants in parallel into Triton's disk cache; the timing
process then loads them.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import importlib
import importlib.util
import pathlib
import statistics
import subprocess
import sys
import time
import types

import torch

from mmvmamba import ops
from mmvmamba.utils.cli import add_rounds_option, format_table

reference = importlib.import_module(f'{ops.__name__}.reference')
triton_backend = importlib.import_module(f'{ops.__name__}.triton_backend')
HAS_MAMBA_SSM = ops.backend_status()['mamba_ssm'] == 'available'

import triton  # noqa: E402  (after the backend, which needs it anyway)

CLASSIFICATION = [(128, 56, 56, 96), (128, 28, 28, 192), (128, 14, 14, 384), (128, 7, 7, 768)]
DETECTION = [(2, 200, 304, 96), (2, 100, 152, 192), (2, 50, 76, 384), (2, 25, 38, 768)]
DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}
# --sweep: tile configurations of the fused kernel (fields of triton_backend.TileConfig over its defaults), at
# stage-1 and stage-3 classification and stage-1 detection shapes
SWEEP = [{}, dict(T=4), dict(BC=64), dict(S=2), dict(S=8), dict(programs=4096), dict(programs=16384)]
SWEEP_SHAPES = [CLASSIFICATION[0], CLASSIFICATION[2], DETECTION[0]]
COLUMNS = ('shape', 'implementation', 'fwd ms', 'fwd TB/s', 'fwd %copy', 'fwd+bwd ms', 'fwd+bwd TB/s',
           'fwd+bwd %copy')


@dataclasses.dataclass
class Case:
    batch: int
    height: int
    width: int
    channels: int
    n_state: int
    dtype: torch.dtype

    @property
    def length(self) -> int:
        return self.height * self.width

    def label(self) -> str:
        return f'B{self.batch} {self.height}x{self.width} C{self.channels}'

    def bytes_moved(self, backward: bool) -> int:
        """x + delta (4 routes) + B, C (4 routes) read, y (float32) written; the backward also reads the output
        gradient and writes gradients of x, delta, B, C in the inputs' dtype."""
        s = torch.finfo(self.dtype).bits // 8
        elems = self.batch * self.channels * self.length
        states = self.batch * 4 * self.n_state * self.length
        forward = elems * s + 4 * elems * s + 2 * states * s + elems * 4
        return forward + (elems * 4 + elems * s + 4 * elems * s + 2 * states * s if backward else 0)

    def inputs(self) -> dict:
        b, h, w, c, n = self.batch, self.height, self.width, self.channels, self.n_state
        rank = -(-c // 16)
        dev = 'cuda'
        x_dbl = torch.randn(b, h, w, 4, rank + 2 * n, device=dev).to(self.dtype)
        dt_low, bs, cs = x_dbl.split([rank, n, n], dim=-1)
        dt_w = (torch.rand(4, c, rank, device=dev) * 2 - 1).mul_(rank ** -0.5).to(self.dtype)
        dt = torch.exp(torch.rand(4 * c, device=dev) * (torch.log(torch.tensor(0.1)) - torch.log(torch.tensor(1e-3)))
                       + torch.log(torch.tensor(1e-3)))
        return dict(x=torch.randn(b, h, w, c, device=dev).to(self.dtype).permute(0, 3, 1, 2),
                    delta=torch.einsum('bhwkr,kdr->bkdhw', dt_low, dt_w),
                    A=-torch.exp(torch.rand(4 * c, n, device=dev)), B=bs.permute(0, 3, 4, 1, 2),
                    C=cs.permute(0, 3, 4, 1, 2), D=torch.ones(4 * c, device=dev),
                    delta_bias=dt + torch.log(-torch.expm1(-dt)))


def unfused(scan_fn, cross_scan, cross_merge):
    def run(x, delta, A, B, C, D, delta_bias):
        batch, channels, height, width = x.shape
        ys = scan_fn(cross_scan(x).flatten(1, 2), cross_scan(delta).flatten(1, 2), A, cross_scan(B), cross_scan(C),
                     D, delta_bias, True, False, True)
        return cross_merge(ys.view(batch, 4, channels, height, width))
    return run


def load_baseline(checkout: str) -> types.ModuleType:
    """The ops of another checkout of this repository (its ``ops/`` imported as package ``baseline_ops``, beside
    this checkout's)."""
    package = pathlib.Path(checkout).resolve() / 'ops'
    if not (package / 'triton_backend' / '__init__.py').is_file():
        raise ValueError(f'{checkout} has no ops/triton_backend package: give the root of another checkout of this '
                         'repository')
    spec = importlib.util.spec_from_file_location('baseline_ops', package / '__init__.py',
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules['baseline_ops'] = module
    spec.loader.exec_module(module)
    return module


def implementations(baseline: types.ModuleType | None = None) -> dict:
    tb = types.SimpleNamespace(**{name: functools.partial(getattr(ops, name), backend='triton')
                                  for name in ('selective_scan', 'cross_scan', 'cross_merge', 'cross_selective_scan')})
    mamba_ssm_scan = functools.partial(ops.selective_scan, backend='mamba_ssm')
    impls = {'reference': reference.cross_selective_scan,
             'triton unfused': unfused(tb.selective_scan, tb.cross_scan, tb.cross_merge),
             'triton fused': tb.cross_selective_scan}
    if HAS_MAMBA_SSM:
        impls['mamba_ssm unfused'] = unfused(mamba_ssm_scan, tb.cross_scan, tb.cross_merge)
    if baseline is not None:
        impls['baseline fused'] = functools.partial(baseline.cross_selective_scan, backend='triton')
    return impls


def chosen(impls: dict, only: list[str] | None, case: Case, reference_max_elements: float) -> dict:
    """The implementations timed at ``case``: those named by ``--only`` (all without it) and the baseline when there
    is one, less the reference where batch x C x H x W exceeds ``reference_max_elements``."""
    names = set(only or impls) | ({'baseline fused'} & set(impls))
    too_big = case.batch * case.channels * case.length > reference_max_elements
    return {name: fn for name, fn in impls.items() if name in names and not (name == 'reference' and too_big)}


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode='median')


@dataclasses.dataclass
class Inputs:
    """One shape's inputs, shared by the implementations: without and with autograd, and the output gradient."""
    plain: dict
    leaves: dict
    grad_out: torch.Tensor

    @classmethod
    def make(cls, case: Case) -> Inputs:
        plain = case.inputs()
        leaves = {k: v.detach().requires_grad_() for k, v in plain.items()}
        grad_out = torch.randn(case.batch, case.channels, case.length, device=plain['x'].device)
        return cls(plain, leaves, grad_out)


def time_case(fn, inputs: Inputs) -> tuple[float, float]:
    """Median milliseconds of the forward (no autograd) and of forward + backward."""
    with torch.no_grad():
        grad_out = inputs.grad_out.to(fn(**inputs.plain).dtype)
        fwd = bench(lambda: fn(**inputs.plain))
    leaves = list(inputs.leaves.values())
    fwd_bwd = bench(lambda: torch.autograd.grad(fn(**inputs.leaves), leaves, grad_out))
    return fwd, fwd_bwd


def time_in_turns(fns: dict, inputs: Inputs, rounds: int) -> dict[str, tuple[float, float]]:
    """Each function timed ``rounds`` times, the functions taking turns; the median forward and forward + backward
    of each."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_case(fn, inputs))
    return {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
            for name, ts in times.items()}


def run_once(fn, inputs: Inputs) -> None:
    """One forward without autograd and one forward + backward: what compiles every kernel variant ``fn`` uses."""
    with torch.no_grad():
        out = fn(**inputs.plain)
    torch.autograd.grad(fn(**inputs.leaves), list(inputs.leaves.values()), inputs.grad_out.to(out.dtype))


def warm_commands(args: argparse.Namespace, cases: list[Case], impls: dict) -> dict[tuple[str, int], list[str]]:
    """For each (implementation, shape index) timed, a command that runs it once (:func:`run_once`) and exits: this
    script with the same options, ``--only`` that implementation and ``--warm-case`` the shape's index."""
    options = ['--dtype', args.dtype, '--d-state', str(args.d_state), '--shapes', args.shapes,
               '--reference-max-elements', str(args.reference_max_elements),
               *(['--baseline', args.baseline] if args.baseline else []), *(['--sweep'] if args.sweep else [])]
    script = str(pathlib.Path(__file__).resolve())
    return {(name, i): [sys.executable, script, *options, '--only', name, '--warm-case', str(i)]
            for i, case in enumerate(cases)
            for name in chosen(impls, ['triton fused'] if args.sweep else args.only, case,
                               args.reference_max_elements)}


def warm_cache(commands: dict[tuple[str, int], list[str]], jobs: int) -> None:
    """Run the commands of :func:`warm_commands`, ``jobs`` at a time; a failure is reported (the timing run then
    compiles for itself)."""
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        done = dict(zip(commands, pool.map(lambda cmd: subprocess.run(cmd, capture_output=True, text=True),
                                           commands.values()), strict=True))
    for (name, index), result in done.items():
        if result.returncode:
            print(f'compiling {name!r} at shape {index} failed (exit {result.returncode}):\n'
                  f'{result.stderr[-2000:]}', file=sys.stderr, flush=True)
    print(f'compiled the kernels of {len(commands)} (shape, implementation) pairs in {jobs} processes at once in '
          f'{time.monotonic() - start:.0f} s', file=sys.stderr, flush=True)


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, bytes read + written per second."""
    src = torch.randn(2 ** 28, device='cuda')
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3)


def header(copy_bw: float, args) -> list[str]:
    props = torch.cuda.get_device_properties(0)
    return [f'GPU: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, '
            f'triton {triton.__version__}, mamba_ssm {"yes" if HAS_MAMBA_SSM else "not installed"}',
            f'inputs {args.dtype}, d_state {args.d_state}, float32 output; device copy bandwidth '
            f'{copy_bw / 1e12:.2f} TB/s; bandwidth = bytes that must move / time (see --help)']


def row(label: str, name: str, case: Case, times: tuple[float, float], copy_bw: float) -> tuple:
    print(f'{label} | {name}: {times[0]:.3f} ms forward, {times[1]:.3f} ms forward+backward', file=sys.stderr,
          flush=True)
    out = [label, name]
    for ms, backward in zip(times, (False, True), strict=True):
        bw = case.bytes_moved(backward) / (ms * 1e-3)
        out += [f'{ms:.3f}', f'{bw / 1e12:.2f}', f'{100 * bw / copy_bw:.0f}%']
    return tuple(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='bf16', help='dtype of u, delta, B, C')
    parser.add_argument('--d-state', type=int, default=1)
    parser.add_argument('--shapes', choices=('all', 'classification', 'detection'), default='all')
    parser.add_argument('--reference-max-elements', type=float, default=1e7,
                        help='time the reference only where batch * C * H * W is at most this (default 1e7)')
    parser.add_argument('--only', action='append', metavar='NAME',
                        help="time only this implementation (repeatable): 'reference', 'triton unfused', "
                             "'triton fused', 'mamba_ssm unfused'")
    parser.add_argument('--sweep', action='store_true',
                        help='time the fused Triton kernel over tile configurations (see SWEEP) at three of the '
                             'shapes')
    parser.add_argument('--baseline', metavar='CHECKOUT',
                        help="root of another checkout of this repository: its fused kernel is timed too (whatever "
                             "--only says), as 'baseline fused', on the same inputs")
    parser.add_argument('--compile-jobs', type=int, default=0, metavar='N',
                        help='first compile the kernels of every (shape, implementation) in its own process, N at '
                             'a time (a fresh machine spends minutes a shape compiling; default 0: no)')
    parser.add_argument('--warm-case', type=int, help=argparse.SUPPRESS)  # a --compile-jobs process: run one shape
    add_rounds_option(parser, 'the implementations of a shape')
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f'--rounds must be at least 1, got {args.rounds}')
    if args.compile_jobs < 0:
        parser.error(f'--compile-jobs must be 0 or more, got {args.compile_jobs}')
    if args.sweep and (args.baseline or args.rounds > 1):
        parser.error('--sweep times this checkout\'s fused kernel once per tile configuration: drop --baseline and '
                     '--rounds, or run them without --sweep')
    try:
        baseline = load_baseline(args.baseline) if args.baseline else None
    except ValueError as err:
        parser.error(f'--baseline: {err}')
    impls = implementations(baseline)
    unknown = set(args.only or ()) - set(impls)
    if unknown:
        parser.error(f'--only: unknown implementation(s) {sorted(unknown)}; available: {sorted(impls)}')
    torch.manual_seed(0)
    shapes = {'all': CLASSIFICATION + DETECTION, 'classification': CLASSIFICATION, 'detection': DETECTION}[args.shapes]
    if args.sweep:
        shapes = [s for s in SWEEP_SHAPES if s in shapes]
    cases = [Case(*s, args.d_state, DTYPES[args.dtype]) for s in shapes]
    if args.warm_case is not None:
        case = cases[args.warm_case]
        inputs = Inputs.make(case)
        for fn in (impls[name] for name in args.only):  # exactly the one named (not the baseline beside it)
            for cfg in SWEEP if args.sweep else [{}]:
                with triton_backend.tile_config(**cfg):
                    run_once(fn, inputs)
        torch.cuda.synchronize()
        return
    if args.compile_jobs:
        warm_cache(warm_commands(args, cases, impls), args.compile_jobs)
    copy_bw = copy_bandwidth()
    rows = []
    if args.sweep:
        for case in cases:
            inputs = Inputs.make(case)
            for cfg in SWEEP:
                with triton_backend.tile_config(**cfg):
                    name = ' '.join(f'{k}={v}' for k, v in cfg.items()) or 'default'
                    rows.append(row(case.label(), name, case, time_case(impls['triton fused'], inputs), copy_bw))
    else:
        for case in cases:
            fns = chosen(impls, args.only, case, args.reference_max_elements)
            for name, times in time_in_turns(fns, Inputs.make(case), args.rounds).items():
                rows.append(row(case.label(), name, case, times, copy_bw))
    print('\n'.join(header(copy_bw, args)))
    print(format_table(COLUMNS, rows))


if __name__ == '__main__':
    main()
