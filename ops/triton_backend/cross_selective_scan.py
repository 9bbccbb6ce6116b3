"""cross_selective_scan on Triton: cross-scan -> selective scan -> cross-merge in one forward and one backward kernel.

The routes are applied inside the kernels' loads and stores: x, delta, B and C are read in image coordinates (the
model's channel-last views, no copies) and the four routes add into one float32 (B, L, C) output. Given delta as the
rank-R input of dt_proj and its weight, the forward kernel expands it as it loads it, up to rank
``IN_KERNEL_RANK`` (the full delta is not written); the backward makes it with one batched matmul, rounded as the
forward rounds it, and takes the gradients of the rank-R input and the weight from the full delta's with two more.
The chunk states kept for the backward are stored in bfloat16 when x is bf16 or fp16.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .scan import (
    Geometry,
    Operand,
    backward_flags,
    cast,
    launch_backward,
    launch_forward,
    new_states,
    scan_config,
    zeroed_gradients,
)

ROUTES = 4
# The largest dt_proj rank the forward kernel expands itself (its route's weight held in registers, a row a rank,
# one compiled variant per power of two): VMamba's first stage (rank 6 at width 96, 8 at 128), where the maps are
# largest. Larger ranks are expanded by a batched matmul first: at rank 12 the kernel would spill and hold half the
# warps a multiprocessor (tools/analysis/kernel_resources.py, docs/ops.md).
IN_KERNEL_RANK = 8


def _positions_flat(t: torch.Tensor) -> torch.Tensor:
    """t, or a contiguous copy where its (H, W) dims do not merge into one position dim (the kernels address image
    positions by their row-major index)."""
    height, width = t.shape[-2:]
    return t if height == 1 or width == 1 or t.stride(-2) == width * t.stride(-1) else t.contiguous()


def _dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    """t's strides where t is contiguous or channel-last (the layout the model passes), else the contiguous ones: a
    gradient laid out as ``torch.empty_like(t)`` would lay it out for the inputs this op sees."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t.stride()
    return torch.empty(t.shape, device='meta').stride()


def _image_operand(t: torch.Tensor) -> Operand:
    """(batch, C, H, W) shared by the routes (route stride 0), or (batch, 4, C|N, H, W) per route; its (H, W) dims
    must merge (see :func:`_positions_flat`)."""
    position = t.stride(-1) if t.shape[-1] > 1 else t.stride(-2)
    return Operand(t, (t.stride(0), 0, t.stride(1), position) if t.dim() == 4 else (*t.stride()[:3], position))


def _merged_operand(t: torch.Tensor) -> Operand:
    """(batch, C, L) in image order, shared by the routes."""
    return Operand(t, (t.stride(0), 0, t.stride(1), t.stride(2)))


def _route_states(both: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """B's and C's (batch, 4, N, H, W) views of a (2, batch, H, W, 4, N) buffer, the layout of the model's
    projections."""
    return tuple(t.permute(0, 3, 4, 1, 2) for t in both)


def _route_state_operands(both: torch.Tensor) -> tuple[Operand, Operand]:
    """The operands of B's and C's (batch, 4, N, H, W) views of a contiguous (2, batch, H, W, 4, N) buffer (see
    :func:`_route_states`), without making the views: their strides follow from the layout."""
    _, _, height, width, routes, n_state = both.shape
    strides = (height * width * routes * n_state, n_state, 1, routes * n_state)
    return Operand(both, strides), Operand(both[1], strides)


def _states_dtype(x: torch.Tensor) -> torch.dtype:
    """The stored chunk states' dtype: bfloat16 for a 16-bit x (bf16 or fp16 autocast), which halves the largest
    tensor the op keeps for the backward (float32 states every 8 steps take as many bytes as a 16-bit x); bfloat16
    has float32's range, which float16's would not give the states. float32 inputs keep float32 states."""
    return torch.float32 if x.dtype == torch.float32 else torch.bfloat16


def _geometry(x: torch.Tensor, A: torch.Tensor) -> tuple[Geometry, object]:
    batch, channels, height, width = x.shape
    geo = Geometry(batch, ROUTES, channels, A.shape[1], height, width, cross=True)
    return geo, scan_config(geo.n_state, channels, geo.length, batch * ROUTES)


def _aligned_rank(rank: int) -> int:
    """Ranks padded to a multiple of 8, so the bf16/fp16 matmuls over them meet the tensor cores' 16-byte alignment
    (at rank 6 or 12, cuBLAS falls back to kernels several times slower)."""
    return -(-rank // 8) * 8


def _low_rank_operands(delta: torch.Tensor, delta_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """delta (B, 4, R, H, W) as (4, B*H*W, R8) and delta_weight (4, C, R) as (4, C, R8), zero-padded, delta's dtype."""
    batch, routes, rank, height, width = delta.shape
    padded = _aligned_rank(rank)
    low = F.pad(delta.permute(1, 0, 3, 4, 2), (0, padded - rank))  # one copy kernel writes values and zeros
    if padded == rank:
        weight = cast(delta_weight, delta.dtype)
    else:  # a memset and a casting copy (F.pad of the cast weight takes three kernels)
        weight = delta_weight.new_zeros((*delta_weight.shape[:-1], padded), dtype=delta.dtype)
        weight[..., :rank] = delta_weight
    return low.reshape(routes, -1, padded), weight


def _expand(low: torch.Tensor, weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The full delta (B, 4, C, H, W) from the padded operands (one batched matmul over the routes, in delta's dtype):
    a view of a (4, B, H, W, C) buffer, per route a contiguous (positions, C) matrix, which the backward kernel reads
    channel-last and whose gradient it writes in the same layout for the transposed matmuls."""
    batch, routes, _, height, width = shape
    full = torch.bmm(low, weight.transpose(1, 2))
    return full.view(routes, batch, height, width, -1).permute(1, 0, 4, 2, 3)


def cross_selective_scan_forward(x, delta, A, B, C, D, delta_bias, delta_weight, delta_softplus: bool,
                                 float32_output: bool, save_states: bool, A_is_log: bool = False):
    """The output (B, C, L), a transposed view of a channel-last (B, L, C) float32 buffer (in x's dtype unless
    ``float32_output``), and the chunk states (the backward's residual). With ``A_is_log`` A holds log(-A)."""
    if delta_weight is not None and delta_weight.shape[2] > IN_KERNEL_RANK:
        delta, delta_weight = _expand(*_low_rank_operands(delta, delta_weight), delta.shape), None
    x, B, C, delta = _positions_flat(x), _positions_flat(B), _positions_flat(C), _positions_flat(delta)
    geo, cfg = _geometry(x, A)
    A, D, delta_bias = (None if p is None else p.contiguous() for p in (A, D, delta_bias))
    out = torch.empty(geo.batch, geo.length, geo.channels, device=x.device, dtype=torch.float32).transpose(1, 2)
    states = new_states(geo, cfg, save_states, x.device, _states_dtype(x))
    operands = dict(u=_image_operand(x), delta=_image_operand(delta), B=_image_operand(B), C=_image_operand(C),
                    y=_merged_operand(out))
    launch_forward(geo, operands, A, D, delta_bias, delta_softplus, cfg, states, A_is_log, delta_weight)
    return (out if float32_output else out.to(x.dtype)), states


def cross_selective_scan_backward(grad_out, x, delta, A, B, C, D, delta_bias, delta_weight, states,
                                  delta_softplus: bool, A_is_log: bool = False):
    """Gradients of (x, delta, A, B, C, D, delta_bias, delta_weight), each in its input's dtype (None where the
    input is absent); with ``delta_weight``, delta's is that of its rank-R input; with ``A_is_log``, A's is that of
    the log it holds."""
    x, B, C = _positions_flat(x), _positions_flat(B), _positions_flat(C)
    if delta_weight is None:
        full = _positions_flat(delta)
    else:
        low, weight = _low_rank_operands(delta, delta_weight)
        full = _expand(low, weight, delta.shape)
    geo, cfg = _geometry(x, A)
    A_c, D_c, bias_c = (None if p is None else p.contiguous() for p in (A, D, delta_bias))
    dfull = torch.empty_like(full)
    # the gradients that the kernel adds into, zeroed with one memset: A's, D's, the bias's, its flags, x's (float32,
    # x's layout) and those of B and C (float32 (2, batch, H, W, 4, N), cast in one copy afterwards)
    bc_shape = (2, geo.batch, geo.height, geo.width, ROUTES, geo.n_state)
    *zeroed, dx, dBC = zeroed_gradients(A_c, D is not None, delta_bias is not None, backward_flags(geo, cfg),
                                        (x.numel(), math.prod(bc_shape)))
    dx = dx.as_strided(x.shape, _dense_strides(x))
    dBC = dBC.view(bc_shape)
    dB_operand, dC_operand = _route_state_operands(dBC)
    operands = dict(u=_image_operand(x), delta=_image_operand(full), B=_image_operand(B), C=_image_operand(C),
                    gy=_merged_operand(grad_out), du=_image_operand(dx), ddelta=_image_operand(dfull),
                    dB=dB_operand, dC=dC_operand)
    dA, dD, dbias = launch_backward(geo, operands, A_c, D_c, bias_c, delta_softplus, states, cfg, tuple(zeroed),
                                    A_is_log)
    ddelta, dweight = dfull, None
    if delta_weight is not None:
        batch, routes, rank, height, width = delta.shape
        dfull = dfull.permute(1, 0, 3, 4, 2).reshape(routes, -1, dfull.shape[2])
        ddelta = torch.bmm(dfull, weight)[..., :rank].view(routes, batch, height, width, rank).permute(1, 0, 4, 2, 3)
        dweight = cast(torch.bmm(low.transpose(1, 2), dfull)[:, :rank].transpose(1, 2), delta_weight.dtype)
    if B.dtype == C.dtype:
        dB, dC = _route_states(cast(dBC, B.dtype))
    else:
        dB, dC = _route_states(dBC)
        dB, dC = cast(dB, B.dtype), cast(dC, C.dtype)
    return (cast(dx, x.dtype), ddelta, cast(dA, A.dtype), dB, dC, None if D is None else cast(dD, D.dtype),
            None if delta_bias is None else cast(dbias, delta_bias.dtype), dweight)
