"""Host cost of the Triton backend's operators: what one call costs the host before any kernel runs (the operator's
Python, its allocations and PyTorch calls, the autograd bookkeeping), forward and backward, with the number of
PyTorch operator calls each makes.

A training step is host-bound when the host takes longer to issue its work than the GPU takes to run it; these
operators run a few dozen times a step, so every microsecond here counts a few dozen times. The operators run as
VMamba's blocks call them (bf16 autocast, the model's layouts), on CPU tensors with the backend in layout-only mode
(every buffer allocated as in a real run, no kernel started) under Triton's interpreter: no GPU is needed, and the
numbers compare code revisions on one machine. The kernel launches themselves are not included (see the lean launch
path in ops/triton_backend/launch.py).

    python tools/analysis/host_overhead.py                  # VMamba-T's stage-1 widths, batch 2
    python tools/analysis/host_overhead.py --channels 384 --calls 500
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable

os.environ['TRITON_INTERPRET'] = '1'  # before triton is imported: the backend runs on CPU tensors

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mmvmamba.models.backbones.vmamba import SS2D, LayerNorm  # noqa: E402
from mmvmamba.ops import depthwise_conv_silu, dispatch, use_backend  # noqa: E402
from mmvmamba.utils.cli import format_table  # noqa: E402
from mmvmamba.utils.timing import time_step  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--channels', type=int, default=96, help='block width (the scan runs at ssm_ratio 1)')
    parser.add_argument('--size', type=int, default=2,
                        help='feature map side; the host cost does not depend on it, small keeps the CPU work out')
    parser.add_argument('--calls', type=int, default=200, help='calls per timed repeat')
    parser.add_argument('--repeats', type=int, default=5, help='timed repeats; the median is reported')
    return parser.parse_args(argv)


def median_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the wall time of one call of ``fn``, in microseconds, after one untimed call."""
    return time_step(fn, 'cpu', warmup=1, repeats=repeats, calls=calls).median * 1e6


def torch_calls(fn: Callable[[], object]) -> int:
    """PyTorch operator calls made by one call of ``fn``, counting only calls not made by another operator."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith('aten::')]
    ids = {id(e) for e in events}
    return sum(1 for e in events if e.cpu_parent is None or id(e.cpu_parent) not in ids)


Outputs = torch.Tensor | tuple[torch.Tensor, ...]


class Op:
    """One operator as a block calls it: ``forward()`` returns the output (or outputs, all used), ``backward(out,
    grad)`` runs its backward."""

    def __init__(self, forward: Callable[[], Outputs], inputs: tuple[torch.Tensor, ...]):
        self.forward_fn, self.inputs = forward, inputs

    def forward(self) -> Outputs:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return self.forward_fn()

    def zero_grad_outputs(self) -> Outputs:
        """Zero gradients for the outputs of :meth:`forward`."""
        out = self.forward()
        return tuple(map(torch.zeros_like, out)) if isinstance(out, tuple) else torch.zeros_like(out)

    def backward(self, out: Outputs, grad: Outputs) -> None:
        torch.autograd.grad(out, self.inputs, grad)  # no accumulation into .grad, as for a block's inner tensors


def block_ops(batch: int, channels: int, size: int) -> dict[str, Op]:
    """VMamba's Triton operators with the inputs a VSS block gives them: the LayerNorm before a Linear (float32
    residual stream in, bf16 out); the same fused with the residual add before it, and for comparison the add and the
    norm apart (with the add that sums the gradients of the sum's two uses); the fused cross selective scan (bf16
    maps in the model's channel-last views); the depthwise convolution with its SiLU (bf16 in_proj output), and for
    comparison the PyTorch calls that it replaces (run on the CPU here: their count, not cuDNN's host cost)."""
    torch.manual_seed(0)
    norm = LayerNorm(channels, linear_input=True)
    stream = torch.randn(batch, size, size, channels, requires_grad=True)
    ss2d = SS2D(channels, d_state=1, ssm_ratio=1.0, gated=False, conv_bias=True)
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        x = torch.randn(batch, size, size, channels, dtype=torch.bfloat16).permute(0, 3, 1, 2)
        dt_low, b, c = ss2d.project(x)
    leaves = tuple(t.detach().requires_grad_() for t in (x, dt_low, b, c))
    projected = torch.randn(batch, size, size, channels, dtype=torch.bfloat16, requires_grad=True)
    conv = ss2d.conv2d
    branch = torch.randn(batch, size, size, channels, dtype=torch.bfloat16, requires_grad=True)
    mask = torch.ones(batch)  # DropPath's keep mask, nothing dropped

    def add_then_norm() -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.addcmul(stream, branch, mask.view(-1, 1, 1, 1), value=1.25)
        return total, norm(total)
    return {'layer_norm': Op(lambda: norm(stream), (stream,)),
            'add_layer_norm': Op(lambda: norm.add_forward(stream, branch, mask, 1.25), (stream, branch)),
            'addcmul + layer_norm (unfused)': Op(add_then_norm, (stream, branch)),
            'cross_selective_scan': Op(lambda: ss2d.selective_scan(*leaves), leaves),
            'depthwise_conv_silu': Op(lambda: depthwise_conv_silu(projected, conv.weight, conv.bias), (projected,)),
            'conv2d + silu (PyTorch)': Op(lambda: F.silu(conv(projected.permute(0, 3, 1, 2))), (projected,))}


def backward_us(op: Op, grad: Outputs, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the wall time of one backward of ``op`` with output gradient ``grad``, in
    microseconds (the forwards whose graphs they run are made before the timing)."""
    outs = iter([op.forward() for _ in range(calls * repeats + 1)])
    return median_us(lambda: op.backward(next(outs), grad), calls, repeats)


def measure(ops: dict[str, Op], calls: int, repeats: int) -> list[list[str]]:
    """A table row per operator: forward and backward microseconds a call and PyTorch calls."""
    triton_backend = dispatch.module('triton')
    rows = []
    with use_backend('triton'), triton_backend.layout_only():
        for name, op in ops.items():
            grad = op.zero_grad_outputs()
            forward_calls = torch_calls(op.forward)
            backward_calls = torch_calls(lambda op=op, grad=grad: op.backward(op.forward(), grad)) - forward_calls
            rows.append([name, f'{median_us(op.forward, calls, repeats):.1f}',
                         f'{backward_us(op, grad, calls, repeats):.1f}', str(forward_calls), str(backward_calls)])
    return rows


def main(argv: list[str] | None = None) -> list[list[str]]:
    args = parse_args(argv)
    rows = measure(block_ops(args.batch, args.channels, args.size), args.calls, args.repeats)
    print(f'Host cost of one call, no kernel started (batch {args.batch}, {args.channels} channels, torch '
          f'{torch.__version__}, {args.calls} calls x {args.repeats} repeats, median)')
    print(format_table(['operator', 'forward us', 'backward us', 'forward torch calls', 'backward torch calls'],
                       rows))
    return rows


if __name__ == '__main__':
    main()
