"""mamba_ssm backend: ``selective_scan`` through mamba_ssm's CUDA kernel, when that package imports.

Importing this module raises ImportError when mamba_ssm (or its compiled extension) cannot be loaded, which
:mod:`.dispatch` reports as 'unavailable'. Only ``selective_scan`` is provided; the other operators come from the
reference or the Triton backend.
"""
from __future__ import annotations

import torch

try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
except Exception as err:  # a broken install (missing CUDA library, ABI mismatch) counts as absent too
    raise ImportError(f'mamba_ssm is not usable: {type(err).__name__}: {err}') from err


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = True,
                   return_last_state: bool = False, float32_output: bool = True):
    """:func:`reference.selective_scan` through mamba_ssm's kernel.

    mamba_ssm computes in float32 and stores y in u's dtype; ``float32_output`` casts that result to float32 (so
    for half-precision u it carries the rounding of u's dtype, unlike the other backends).
    """
    out = selective_scan_fn(u, delta, A, B, C, D, None, delta_bias, delta_softplus, return_last_state)
    y, last_state = out if return_last_state else (out, None)
    if float32_output:
        y = y.float()
    return (y, last_state) if return_last_state else y
