"""Where the time of a VSS block goes: each part of one block timed alone, forward and forward+backward.

Builds one block per stage of a preset at the stage's feature size, runs each part on its own input under bf16
autocast (or fp32), times with CUDA events (median of repeats after warm-up) and prints one table per stage plus a
total over the whole model (part time x blocks per stage). The last row, not part of the block, is the depthwise
convolution and SiLU as PyTorch runs them (cuDNN), against the block's own operator. ``--trace`` instead profiles
whole training steps of the 1000-class classifier (forward, backward, AdamW) with torch.profiler and prints the CUDA
kernels by total time.

    python tools/analysis/profile_block.py --arch tiny --batch 128 --size 224
    python tools/analysis/profile_block.py --arch tiny --batch 2 --size 800 1216 --dtype fp32
    python tools/analysis/profile_block.py --arch tiny --batch 128 --trace
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmvmamba.models import VMamba, VMambaClassifier
from mmvmamba.ops import depthwise_conv_silu, use_backend
from mmvmamba.utils.cli import format_table
from mmvmamba.utils.timing import time_step

WARMUP = 3  # untimed calls before each timing
COLUMNS = ('part', 'fwd ms', 'fwd+bwd ms')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='tiny', help='VMamba preset')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--size', type=int, nargs='+', default=[224], help='input H [W]')
    parser.add_argument('--dtype', choices=['bf16', 'fp32'], default='bf16', help='autocast dtype (fp32: none)')
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--backend', default=None, help='ops backend (default: by device)')
    parser.add_argument('--trace', action='store_true', help='kernel table of whole training steps instead')
    return parser.parse_args()


def time_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median CUDA-event milliseconds of one call of ``fn`` after warm-up."""
    return time_step(fn, 'cuda', warmup=WARMUP, repeats=repeats).median * 1e3


def block_parts(block, x: torch.Tensor, backend: str | None) -> dict[str, tuple[Callable, tuple]]:
    """Each part of ``block`` as (function, inputs); inputs are the real intermediate tensors of one forward."""
    op = block.op
    with torch.no_grad():
        normed = block.norm(x)
        projected = op.in_proj(normed)
        conv_in = projected[..., :op.d_inner]
        conv_out = depthwise_conv_silu(conv_in, op.conv2d.weight, op.conv2d.bias).permute(0, 3, 1, 2)
        dt_low, b, c = op.project(conv_out)
        scanned = op.selective_scan(conv_out, dt_low, b, c)
        y = op.out_norm(scanned).to(conv_out.dtype)
        branch = op.out_proj(y)

    def scan(*inputs: torch.Tensor) -> torch.Tensor:  # dt_proj included: the scan takes the rank-R delta
        with use_backend(backend):
            return op.selective_scan(*inputs)

    def conv(t: torch.Tensor) -> torch.Tensor:
        with use_backend(backend):
            return depthwise_conv_silu(t, op.conv2d.weight, op.conv2d.bias)

    parts = {
        'norm': (block.norm, (x,)),
        'in_proj': (op.in_proj, (normed,)),
        'dwconv+silu': (conv, (conv_in,)),
        'x_proj': (op.project, (conv_out,)),
        'dt_proj+scan': (scan, (conv_out, dt_low, b, c)),
        'out_norm': (lambda t: op.out_norm(t).to(conv_out.dtype), (scanned,)),
        'out_proj': (op.out_proj, (y,)),
    }
    if block.mlp_ratio > 0:  # the first residual add runs inside norm2's operator
        parts['residual+norm2'] = (block.norm2.add_forward, (x, branch))
        parts['mlp'] = (block.mlp, (normed,))
    parts['block'] = (block, (x,))
    # what the block ran before its own depthwise-conv operator (cuDNN's convolution on CUDA), for comparison
    parts['dwconv+silu, PyTorch'] = (lambda t: F.silu(op.conv2d(t.permute(0, 3, 1, 2))), (conv_in,))
    return parts


def trace_training_steps(args: argparse.Namespace, height: int, width: int, steps: int = 3) -> None:
    """CUDA kernels of ``steps`` training steps (forward, backward, AdamW) by total time."""
    model = VMambaClassifier(args.arch).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, height, width, device='cuda')
    target = torch.randint(0, 1000, (args.batch,), device='cuda')

    def step():
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=args.dtype == 'bf16'):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    wall_ms = time_step(step, 'cuda', warmup=WARMUP, calls=steps).median * 1e3
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.self_device_time_total for e in events if e.device_type.name == 'CUDA') / 1e3 / steps
    print(f'step: {wall_ms:.1f} ms wall, {kernels:.1f} ms of CUDA kernels '
          f'(the rest is the GPU waiting for the host)')
    print(f'CUDA kernels of {steps} training steps (times are totals over the steps)')
    print(events.table(sort_by='self_device_time_total', row_limit=25, max_name_column_width=60))
    print('host side, by self CPU time')
    print(events.table(sort_by='self_cpu_time_total', row_limit=25, max_name_column_width=60))


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('profile_block times CUDA kernels: run it on a GPU machine.')
    height, width = (args.size * 2)[:2]
    if args.trace:
        trace_training_steps(args, height, width)
        return
    model = VMamba(args.arch, drop_path_rate=0.0).cuda().train()
    autocast = torch.autocast('cuda', dtype=torch.bfloat16, enabled=args.dtype == 'bf16')
    print(f'{torch.cuda.get_device_name()}, VMamba {args.arch}, batch {args.batch}, {height}x{width}, {args.dtype}')
    totals: dict[str, list[float]] = {}
    for i, (layer, dim) in enumerate(zip(model.layers, model.dims, strict=True)):
        stride = 2 ** (i + 2)
        x = torch.randn(args.batch, math.ceil(height / stride), math.ceil(width / stride), dim, device='cuda')
        block = layer.blocks[0]
        with autocast:
            parts = block_parts(block, x, args.backend)
        rows = []
        for name, (fn, inputs) in parts.items():
            inputs = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in inputs)

            def forward(fn=fn, inputs=inputs):
                with autocast:
                    return fn(*inputs)

            def forward_backward(fn=fn, inputs=inputs):
                out = forward()
                sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()

            with torch.no_grad():
                fwd = time_ms(forward, args.repeats)
            both = time_ms(forward_backward, args.repeats)
            rows.append([name, f'{fwd:.3f}', f'{both:.3f}'])
            total = totals.setdefault(name, [0.0, 0.0])
            total[0] += fwd * len(layer.blocks)
            total[1] += both * len(layer.blocks)
        print(f'\nstage {i}: {tuple(x.shape)} x {len(layer.blocks)} blocks')
        print(format_table(COLUMNS, rows))
    print('\nwhole model, all blocks (part time x blocks per stage)')
    print(format_table(COLUMNS, [[name, f'{fwd:.2f}', f'{both:.2f}'] for name, (fwd, both) in totals.items()]))


if __name__ == '__main__':
    main()
