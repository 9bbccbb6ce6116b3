"""Starting the backend's Triton kernels, in one place: the CUDA device guard, layout-only runs, and the integer
helpers that size launches.

The operators' fake implementations (what ``torch.compile`` traces with) run the same Python code as the real ones
inside ``layout_only()``: every buffer is allocated exactly as in a real run, so the fake outputs have the real
shapes and strides, and no kernel starts.
"""
from __future__ import annotations

import torch

from ..layout import LayoutOnly

layout_only = LayoutOnly()  # within ``with layout_only():`` :func:`launch` starts nothing


def launch(kernel, grid: tuple[int, ...], device: torch.device, **arguments) -> None:
    """``kernel[grid](**arguments)`` on ``device`` (the current CUDA device is switched only when it differs)."""
    if layout_only.active:
        return
    if device.type == 'cuda' and device.index is not None and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            kernel[grid](**arguments)
    else:
        kernel[grid](**arguments)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of positive integers. ``triton.cdiv`` computes the same through Triton's constexpr-function
    wrapper, several microseconds a call on the host: the launches of one training step use these hundreds of
    times."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), as ``triton.next_power_of_2`` without its wrapper's cost."""
    return 1 << max(n - 1, 0).bit_length()
