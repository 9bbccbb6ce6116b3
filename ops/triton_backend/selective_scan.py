"""selective_scan on Triton: the chunked scan kernels with one route per group of channels, in identity order.

The forward saves only the float32 states entering each chunk; the backward recomputes the states inside a chunk
from them. u and delta are read with their channels adjacent in memory (a transposed view of a (batch, L, channels)
buffer, copied into that layout when they are not).
"""
from __future__ import annotations

import torch

from .scan import (
    Geometry,
    Operand,
    backward_flags,
    launch_backward,
    launch_forward,
    new_states,
    scan_config,
    zeroed_gradients,
)


def _geometry(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> Geometry:
    batch, channels, length = u.shape
    groups = B.shape[1]
    return Geometry(batch, groups, channels // groups, A.shape[1], 1, length, cross=False)


def _channels_fastest(t: torch.Tensor) -> torch.Tensor:
    """(batch, channels, L) with the channels adjacent in memory: t itself when they already are, else a copy."""
    return t if t.stride(1) == 1 else t.transpose(1, 2).contiguous().transpose(1, 2)


def _seq_operand(t: torch.Tensor, groups: int) -> Operand:
    """(batch, channels, L) seen as (batch, group, channel in group, L)."""
    return Operand(t, (t.stride(0), t.stride(1) * (t.shape[1] // groups), t.stride(1), t.stride(2)))


def _state_operand(t: torch.Tensor) -> Operand:
    """(batch, G, N, L) seen as (batch, group, state, L)."""
    return Operand(t, t.stride())


def _last_state(states: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(batch, routes * channels, N) from the final slot of the chunk states, a new tensor (never a view of them)."""
    rows, _, n_pad, bc = states.shape
    final = states[:, -1].view(geo.batch, geo.routes, rows // (geo.batch * geo.routes), n_pad, bc)
    final = final.permute(0, 1, 2, 4, 3).reshape(geo.batch, geo.routes, -1, n_pad)
    return final[:, :, :geo.channels, :geo.n_state].reshape(geo.batch, geo.routes * geo.channels, geo.n_state).clone()


def _parameters(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    return tuple(None if t is None else t.contiguous() for t in tensors)


def selective_scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, float32_output: bool,
                           save_states: bool):
    """y (batch, channels, L) in u's channel-fastest layout, the last state (batch, channels, N) and the chunk
    states (the backward's residual; only the final state's slot unless ``save_states``)."""
    geo = _geometry(u, A, B)
    cfg = scan_config(geo.n_state, geo.channels, geo.length, geo.batch * geo.routes)
    A, D, delta_bias = _parameters(A, D, delta_bias)
    u, delta = _channels_fastest(u), _channels_fastest(delta)
    y = torch.empty_like(u, dtype=torch.float32 if float32_output else u.dtype)
    states = new_states(geo, cfg, save_states, u.device)
    operands = dict(u=_seq_operand(u, geo.routes), delta=_seq_operand(delta, geo.routes), B=_state_operand(B),
                    C=_state_operand(C), y=_seq_operand(y, geo.routes))
    launch_forward(geo, operands, A, D, delta_bias, delta_softplus, cfg, states)
    return y, _last_state(states, geo), states


def selective_scan_backward(grad_y, u, delta, A, B, C, D, delta_bias, states, delta_softplus: bool):
    """Gradients of (u, delta, A, B, C, D, delta_bias) (None for an absent D or delta_bias), each in its input's
    dtype; u's and delta's in their channel-fastest layout."""
    geo = _geometry(u, A, B)
    cfg = scan_config(geo.n_state, geo.channels, geo.length, geo.batch * geo.routes)
    A_c, D_c, bias_c = _parameters(A, D, delta_bias)
    u, delta, grad_y = _channels_fastest(u), _channels_fastest(delta), _channels_fastest(grad_y)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    # the gradients the kernel adds into, zeroed with one memset: A's, D's, the bias's, its flags, B's and C's
    *zeroed, dBC = zeroed_gradients(A_c, D is not None, delta_bias is not None, backward_flags(geo, cfg),
                                    (2 * B.numel(),))
    dB, dC = dBC.view(2, *B.shape)  # B and C have one shape
    g = geo.routes
    operands = dict(u=_seq_operand(u, g), delta=_seq_operand(delta, g), B=_state_operand(B), C=_state_operand(C),
                    gy=_seq_operand(grad_y, g), du=_seq_operand(du, g), ddelta=_seq_operand(ddelta, g),
                    dB=_state_operand(dB), dC=_state_operand(dC))
    dA, dD, dbias = launch_backward(geo, operands, A_c, D_c, bias_c, delta_softplus, states, cfg, tuple(zeroed))
    return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), None if D is None else dD.to(D.dtype),
            None if delta_bias is None else dbias.to(delta_bias.dtype))
