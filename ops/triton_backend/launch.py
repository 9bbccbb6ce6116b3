"""Starting the backend's Triton kernels, in one place: the CUDA device guard, and layout-only runs.

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
