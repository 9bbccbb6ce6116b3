"""Registers, spills and occupancy of the Triton kernels that one VMamba training step launches, compiled for a GPU
architecture (default sm_90a, the H100) on any machine: no GPU needed.

A kernel that needs more than 255 registers a thread spills to local memory, and the registers a thread takes decide
how many programs share a multiprocessor: both are fixed at compile time, so they can be read before a GPU is at
hand. The tool runs one bf16 training step of the model on CPU tensors with the Triton backend in layout-only mode
and the GPU's tile sizes (every launch recorded with its real arguments, nothing run; a child process under
Triton's interpreter), then compiles each distinct kernel variant for the target with Triton, specialised as
Triton would specialise it for those arguments, and reads ptxas's report. The counts come from this machine's Triton
and ptxas: another version (the GPU machine's) allocates differently, so compare code revisions with one toolchain.

    python tools/analysis/kernel_resources.py                      # VMamba-T, sm_90a, batch 2 at 224x224
    python tools/analysis/kernel_resources.py --batch 32 --only scan_fwd_kernel scan_bwd_kernel   # training's tiles
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
REGISTERS_PER_SM, MAX_WARPS_PER_SM, MAX_PROGRAMS_PER_SM = 65536, 64, 32  # sm_80 to sm_90
DTYPES = {str(t).removeprefix('torch.'): t for t in (torch.float32, torch.bfloat16, torch.float16, torch.int32,
                                                     torch.int64, torch.uint8)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='tiny', help='VMamba preset whose training step is recorded')
    parser.add_argument('--size', type=int, default=224, help='input side (tiles follow the feature maps)')
    parser.add_argument('--batch', type=int, default=2,
                        help='batch (tiles follow it: at 2 the scans cut rows into segments, as at detection sizes; '
                             'from about 32 at 224 they do not, as in classification training)')
    parser.add_argument('--capability', type=int, default=90, help='CUDA compute capability to compile for')
    parser.add_argument('--only', nargs='+', default=None, metavar='KERNEL', help='compile only these kernels')
    parser.add_argument('--record-to', default=None, help=argparse.SUPPRESS)  # the child process's output file
    return parser.parse_args(argv)


def _describe(value: object) -> object:
    """A launch argument as JSON: a tensor as its dtype and 16-byte alignment, anything else as it is."""
    if isinstance(value, torch.Tensor):
        return {'dtype': str(value.dtype).removeprefix('torch.'), 'aligned': value.data_ptr() % 16 == 0}
    return value


def record_launches(arch: str, size: int, batch: int) -> list[dict]:
    """The distinct kernel launches (kernel, arguments, warps) of one bf16 training step of ``arch``, the Triton
    backend in layout-only mode (call under TRITON_INTERPRET=1, which lets it take CPU tensors)."""
    from mmvmamba.models import VMambaClassifier
    from mmvmamba.ops import dispatch, use_backend

    backend = dispatch.module('triton')
    importlib.import_module(f'{backend.__name__}.scan').interpreter_tiles = False  # the GPU's tiles, not run here
    torch.manual_seed(0)
    model = VMambaClassifier(arch).train()
    images = torch.randn(batch, 3, size, size)
    with use_backend('triton'), backend.layout_only.recording() as launched:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = model(images).float().square().mean()
        loss.backward()
    distinct = {}
    for kernel, _, arguments in launched:
        fn = getattr(kernel, 'fn', kernel)
        entry = {'module': fn.__module__, 'kernel': fn.__name__,
                 'arguments': {name: _describe(value) for name, value in arguments.items()}}
        distinct.setdefault(json.dumps(entry, sort_keys=True), entry)
    return list(distinct.values())


def _stand_in(description: object) -> object:
    """A CPU tensor with the recorded dtype and alignment (what Triton specialises a pointer on), or the value."""
    if not isinstance(description, dict):
        return description
    dtype = DTYPES[description['dtype']]
    buffer = torch.empty(64, dtype=dtype)
    return buffer if description['aligned'] else buffer[1:]


def _ptxas_report(ptx: str, capability: int) -> dict[str, int]:
    """ptxas's registers, spill bytes (stores and loads) and shared memory for the PTX of one kernel."""
    from triton.backends.nvidia.compiler import get_ptxas
    arch = f'sm_{capability}a' if capability >= 90 else f'sm_{capability}'
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'kernel.ptx')
        Path(path).write_text(ptx)
        done = subprocess.run([get_ptxas(capability).path, f'-arch={arch}', '-v', path, '-o', os.devnull],
                              capture_output=True, text=True)
    report = done.stdout + done.stderr
    if done.returncode:
        raise RuntimeError(f'ptxas failed:\n{report[-2000:]}')

    def number(pattern: str) -> int:
        found = re.search(pattern, report)
        return int(found.group(1)) if found else 0
    return {'registers': number(r'Used (\d+) registers'), 'spill_stores': number(r'(\d+) bytes spill stores'),
            'spill_loads': number(r'(\d+) bytes spill loads'), 'shared': number(r'(\d+) bytes smem')}


def specialise(entry: dict, capability: int) -> tuple:
    """(kernel, its compile arguments for the target, a key equal for launches that compile to one variant): the
    recorded launch bound and specialised as Triton's launcher would bind it."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = getattr(importlib.import_module(entry['module']), entry['kernel'])
    target = GPUTarget('cuda', capability, 32)
    backend = make_backend(target)
    arguments = {name: _stand_in(value) for name, value in entry['arguments'].items()}
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(**arguments)
    options, signature, constexprs, attrs = kernel._pack_args(backend, arguments, bound, specialization, options)
    key = (entry['module'], entry['kernel'], repr(signature), repr(sorted(constexprs.items())),
           repr(sorted(attrs.items())), repr(sorted(options.__dict__.items())))
    return kernel, (ASTSource(kernel, signature, constexprs, attrs), target, options), key


def compile_for(kernel, compile_arguments: tuple, capability: int) -> dict:
    """Compile one kernel variant for the target; ptxas's report, its warps and its constexprs."""
    from triton.compiler import compile as triton_compile

    source, target, options = compile_arguments
    compiled = triton_compile(source, target=target, options=options.__dict__)
    report = _ptxas_report(compiled.asm['ptx'], capability)
    report['shared'] = max(report['shared'], compiled.metadata.shared)
    report['warps'] = options.num_warps
    # the kernel's declared meta-parameters (not the integers Triton made constant because they equal 1)
    report['constexprs'] = {kernel.params[path[0]].name: value for path, value in source.constants.items()
                            if kernel.params[path[0]].is_constexpr}
    return report


def programs_per_sm(registers: int, warps: int) -> int:
    """Programs of ``warps`` warps that fit a multiprocessor at ``registers`` a thread (allocated 8 at a time), by
    registers, warps and the program limit (shared memory not counted)."""
    per_program = math.ceil(max(registers, 1) / 8) * 8 * 32 * warps
    return min(REGISTERS_PER_SM // per_program, MAX_WARPS_PER_SM // warps, MAX_PROGRAMS_PER_SM)


def _variant(constexprs: dict, varying: Iterable[str]) -> str:
    return ' '.join(f'{name}={constexprs.get(name, "-")}' for name in varying) or '-'


def table(entries: list[dict], reports: list[dict]) -> list[list[str]]:
    """One row per compiled variant: kernel, the constexprs that differ between its variants, warps, registers,
    spills, programs and warps a multiprocessor."""
    by_kernel: dict[str, list[dict]] = {}
    for report in reports:
        by_kernel.setdefault(report['kernel'], []).append(report['constexprs'])
    rows = []
    for entry, report in zip(entries, reports, strict=True):
        variants = by_kernel[entry['kernel']]
        names = dict.fromkeys(name for v in variants for name in v)
        varying = [name for name in names if len({str(v.get(name)) for v in variants}) > 1]
        programs = programs_per_sm(report['registers'], report['warps'])
        rows.append([entry['kernel'], _variant(report['constexprs'], varying), str(report['warps']),
                     str(report['registers']), f"{report['spill_stores']}/{report['spill_loads']}", str(programs),
                     str(programs * report['warps'])])
    return rows


def _recorded(args: argparse.Namespace) -> list[dict]:
    """Record the launches in a child process under Triton's interpreter (it must be set before triton loads)."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, 'launches.json')
        done = subprocess.run([sys.executable, __file__, '--arch', args.arch, '--size', str(args.size), '--batch',
                               str(args.batch), '--record-to', out], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, 'TRITON_INTERPRET': '1',
                                   'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])})
        if done.returncode:
            raise RuntimeError(f'recording the launches failed:\n{done.stderr[-3000:]}')
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> list[list[str]]:
    args = parse_args(argv)
    if args.record_to:
        Path(args.record_to).write_text(json.dumps(record_launches(args.arch, args.size, args.batch)))
        return []
    if os.environ.get('TRITON_INTERPRET') == '1':
        raise SystemExit('kernel_resources compiles the kernels: run it without TRITON_INTERPRET=1.')
    from mmvmamba.utils.cli import format_table

    variants = {}
    for entry in _recorded(args):
        if args.only is None or entry['kernel'] in args.only:
            kernel, compile_arguments, key = specialise(entry, args.capability)
            variants.setdefault(key, (entry, kernel, compile_arguments))
    if not variants:
        raise SystemExit(f'no recorded launch of {args.only}; kernels a step launches are listed without --only.')
    variants = dict(sorted(variants.items(), key=lambda item: item[0][1]))  # by kernel name
    entries = [entry for entry, _, _ in variants.values()]
    reports = [{'kernel': entry['kernel'], **compile_for(kernel, compile_arguments, args.capability)}
               for entry, kernel, compile_arguments in variants.values()]
    rows = table(entries, reports)
    print(f'Triton kernels of one bf16 training step of VMamba {args.arch} (batch {args.batch}, '
          f'{args.size}x{args.size}), compiled for sm_{args.capability} (Triton '
          f'{importlib.import_module("triton").__version__}); spills: bytes stored / loaded a thread')
    print(format_table(['kernel', 'variant', 'warps', 'registers', 'spills', 'programs/SM', 'warps/SM'], rows))
    return rows


if __name__ == '__main__':
    main()
