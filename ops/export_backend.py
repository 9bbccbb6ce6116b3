"""The 'export' backend: the scans in standard ops, so that ONNX graphs keep their input size dynamic.

The reference scan sizes its Python loops and buffers from the sequence length, which a trace bakes in. This scan
computes the same recurrence h_t = a_t h_{t-1} + b_t by a doubling (Hillis-Steele) scan with a fixed number of
out-of-place steps: step 2**i composes each position with the one 2**i steps back, so ``max_log2_length`` steps cover
any sequence up to 2**max_log2_length, and steps past the length change nothing. Every size in the graph is then
derived from the input's shape, and the graph has only standard ops (Slice, Concat, Mul, Add, Exp, Softplus, ...).
Select it with ``mmvmamba.ops.use_backend('export', max_log2_length=...)`` around the export; it matches the
reference to float rounding. The other operators are the reference's (plain tensor ops already). Forward only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import add_layer_norm, cross_merge, cross_scan, depthwise_conv_silu, layer_norm

__all__ = ['MAX_LOG2_LENGTH', 'add_layer_norm', 'cross_merge', 'cross_scan', 'cross_selective_scan',
           'depthwise_conv_silu', 'layer_norm', 'linear_recurrence', 'selective_scan']

ROUTES = 4
MAX_LOG2_LENGTH = 18  # sequences of up to 2**18 steps: inputs up to 2048 x 2048 (stage 0 has stride 4)


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, max_log2_length: int = MAX_LOG2_LENGTH) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along dim 1, h_{-1} = 0, for sequences of up to ``2**max_log2_length`` steps.

    Step i composes each position with the one 2**i steps back: b <- b + a * b_shifted, a <- a * a_shifted, the
    first 2**i positions unchanged; past the sequence's length the slices are empty and the step changes nothing.
    """
    for i in range(max_log2_length):
        step = 2 ** i
        b = torch.cat([b[:, :step], b[:, step:] + a[:, step:] * b[:, :-step]], dim=1)
        if i + 1 < max_log2_length:
            a = torch.cat([a[:, :step], a[:, step:] * a[:, :-step]], dim=1)
    return b


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = True,
                   return_last_state: bool = False, float32_output: bool = True,
                   max_log2_length: int = MAX_LOG2_LENGTH):
    """:func:`mmvmamba.ops.selective_scan` (same arguments and results) in export-friendly ops."""
    dtype = _compute_dtype(u, delta, A, B, C)
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    u_seq = u.to(dtype).transpose(1, 2).reshape(batch, length, groups, -1)  # (batch, L, G, Dg)
    dt = delta.to(dtype).transpose(1, 2).reshape(batch, length, groups, -1)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype).view(groups, -1)
    if delta_softplus:
        dt = F.softplus(dt)
    a = torch.exp(dt.unsqueeze(-1) * A.to(dtype).view(groups, -1, d_state))  # (batch, L, G, Dg, N)
    b_seq = B.to(dtype).permute(0, 3, 1, 2).unsqueeze(3)  # (batch, L, G, 1, N)
    c_seq = C.to(dtype).permute(0, 3, 1, 2).unsqueeze(3)
    h = linear_recurrence(a, (dt * u_seq).unsqueeze(-1) * b_seq, max_log2_length)
    y = (h * c_seq).sum(-1)
    if D is not None:
        y = y + D.to(dtype).view(groups, -1) * u_seq
    y = y.reshape(batch, length, channels).transpose(1, 2)
    if not float32_output:
        y = y.to(u.dtype)
    if return_last_state:
        return y, h[:, -1].reshape(batch, channels, d_state)
    return y


def cross_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                         delta_softplus: bool = True, float32_output: bool = True,
                         delta_weight: torch.Tensor | None = None,
                         max_log2_length: int = MAX_LOG2_LENGTH) -> torch.Tensor:
    """:func:`mmvmamba.ops.cross_selective_scan` in export-friendly ops: the four routes as one scan of 4*C channels,
    with the reference cross-scan and cross-merge (flips, transposes and reshapes)."""
    batch, channels, height, width = x.shape
    if delta_weight is not None:
        delta = torch.einsum('bkrhw,kcr->bkchw', delta, delta_weight.to(delta.dtype))
    y = selective_scan(cross_scan(x).flatten(1, 2), cross_scan(delta).flatten(1, 2), A, cross_scan(B), cross_scan(C),
                       D, delta_bias, delta_softplus, float32_output=float32_output, max_log2_length=max_log2_length)
    return cross_merge(y.view(batch, ROUTES, channels, height, width))
