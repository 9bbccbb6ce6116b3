"""mamba_ssm backend: ``selective_scan`` through mamba_ssm's compiled CUDA kernel (its ``selective_scan_cuda``).

Importing this module raises ImportError when that extension cannot be loaded, which :mod:`.dispatch` reports as
'unavailable' (``tools/build_mamba_ssm.py`` builds it from mamba_ssm's source release). Only ``selective_scan`` is
provided, as the forward/backward pair of :mod:`.library`, so it runs under ``torch.compile`` like the Triton
backend; the fused cross op is not: select it and the dispatcher raises, naming the backends that have it.

What the kernel cannot do raises ValueError before it starts, instead of a wrong result or a bare C++ check:
delta, B and C must share u's dtype (float32, float16 or bfloat16); A, D and delta_bias are float32; d_state is at
most 256. y is stored in u's dtype; ``float32_output`` casts that to float32, so for half-precision u it carries the
rounding of u's dtype, unlike the other backends.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .layout import LayoutOnly, gradient_layouts

try:
    import selective_scan_cuda
except Exception as err:  # a broken build (missing CUDA library, ABI mismatch) counts as absent too
    raise ImportError(f'mamba_ssm is not usable: {type(err).__name__}: {err} (tools/build_mamba_ssm.py builds it)') \
        from err

MAX_D_STATE = 256
CHUNK = 2048  # the kernel keeps one state per 2048 steps for its backward
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
layout_only = LayoutOnly()  # within ``with layout_only():`` the functions allocate their results and start nothing


def check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                 delta_bias: Tensor | None) -> None:
    """Raise ValueError, saying what to change, for inputs the kernel does not take."""
    if u.dtype not in _DTYPES:
        raise ValueError(f'the mamba_ssm backend takes u in float32, float16 or bfloat16, got {u.dtype}; '
                         f"use backend='reference' for float64")
    mismatched = [f'{name} is {t.dtype}' for name, t in (('delta', delta), ('B', B), ('C', C)) if t.dtype != u.dtype]
    if mismatched:
        raise ValueError(f"the mamba_ssm backend needs delta, B and C in u's dtype {u.dtype}, but "
                         f"{', '.join(mismatched)}; cast them, or use backend='triton' which mixes dtypes")
    wrong = [f'{name} is {t.dtype}' for name, t in (('A', A), ('D', D), ('delta_bias', delta_bias))
             if t is not None and t.dtype != torch.float32]
    if wrong:
        raise ValueError(f"the mamba_ssm backend needs A, D and delta_bias in float32, but {', '.join(wrong)}")
    if A.shape[1] > MAX_D_STATE:
        raise ValueError(f'the mamba_ssm backend supports d_state <= {MAX_D_STATE}, got {A.shape[1]}; '
                         f"use backend='triton'")


def _last_dim_contiguous(t: Tensor | None) -> Tensor | None:
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def selective_scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                           delta_bias: Tensor | None, delta_softplus: bool, float32_output: bool,
                           save_states: bool) -> tuple[Tensor, Tensor, Tensor]:
    """y, the last state (batch, channels, N) and the kernel's chunk states (the backward's residual)."""
    check_inputs(u, delta, A, B, C, D, delta_bias)
    batch, channels, length = u.shape
    d_state = A.shape[1]
    if layout_only.active:
        y = u.new_empty(u.shape, dtype=torch.float32 if float32_output else u.dtype)
        states = u.new_empty((batch, channels, -(-length // CHUNK), 2 * d_state), dtype=torch.float32)
        return y, u.new_empty((batch, channels, d_state), dtype=torch.float32), states
    u, delta, B, C = (_last_dim_contiguous(t) for t in (u, delta, B, C))
    y, states, *_ = selective_scan_cuda.fwd(u, delta, A.contiguous(), B, C, _last_dim_contiguous(D), None,
                                            _last_dim_contiguous(delta_bias), delta_softplus)
    last = states[:, :, -1, 1::2].contiguous()
    return (y.float() if float32_output else y), last, states


def selective_scan_backward(grad_y: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                            D: Tensor | None, delta_bias: Tensor | None, residual: Tensor, delta_softplus: bool
                            ) -> tuple[Tensor | None, ...]:
    """Gradients of (u, delta, A, B, C, D, delta_bias), each in its input's dtype (None for an absent input)."""
    if layout_only.active:
        return gradient_layouts((u, delta, A, B, C, D, delta_bias))
    u, delta, B, C = (_last_dim_contiguous(t) for t in (u, delta, B, C))
    grad_y = grad_y.to(u.dtype).contiguous()
    du, ddelta, dA, dB, dC, dD, dbias, *_ = selective_scan_cuda.bwd(
        u, delta, A.contiguous(), B, C, _last_dim_contiguous(D), None, _last_dim_contiguous(delta_bias), grad_y,
        residual, None, None, delta_softplus, False)
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dbias if delta_bias is not None else None)
