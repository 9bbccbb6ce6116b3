"""Pure-PyTorch reference operators: exact, vectorised, any device, float64-checkable.

Shapes (the block equations and route orders are in docs/design.md):

- ``cross_scan(x)``: (B, C, H, W) -> (B, 4, C, L), or a per-route input (B, 4, C, H, W) -> (B, 4, C, L)
  where route k reads its own map ``x[:, k]``.
- ``cross_merge(y)``: (B, 4, C, H, W) -> (B, C, L), the adjoint of ``cross_scan`` (``y[:, k]`` holds route k's
  sequence laid out row-major as H x W, as the scan produced it).
- ``selective_scan``: Mamba's selective scan with grouped B/C (batch, G, N, L).
- ``cross_selective_scan``: cross_scan -> selective_scan -> cross_merge in one call, with delta/B/C given per route
  in image coordinates.

The scan is a linear recurrence h_t = a_t * h_{t-1} + b_t evaluated by a chunked doubling (Hillis-Steele) scan:
no Python loop over the sequence, only products of decays in (0, 1] (no exp(cumsum) overflow on long sequences).
Internally sequences run along dim 1 with channels last, (batch, L, groups, channels), so every slice of the doubling
is a contiguous block; reversed routes are scanned backwards instead of being flipped, and the fused op reads the
row-major routes straight from a channel-last map. Backward passes are analytic (a scan in the opposite direction)
and recompute the states instead of storing them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ROUTES = 4
_CHUNK = 32


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Four routes over an image: row-major, column-major and both reversed. Returns (B, 4, C, H*W)."""
    if x.dim() == 4:
        rows = x.flatten(2)
        cols = x.transpose(2, 3).flatten(2)
        forward = torch.stack([rows, cols], dim=1)
        return torch.cat([forward, forward.flip(-1)], dim=1)
    if x.dim() == 5 and x.shape[1] == ROUTES:
        return torch.stack([
            x[:, 0].flatten(2),
            x[:, 1].transpose(2, 3).flatten(2),
            x[:, 2].flatten(2).flip(-1),
            x[:, 3].transpose(2, 3).flatten(2).flip(-1),
        ], dim=1)
    raise ValueError(f'cross_scan expects (B, C, H, W) or (B, 4, C, H, W), got shape {tuple(x.shape)}')


def cross_merge(y: torch.Tensor) -> torch.Tensor:
    """Undo each route of ``cross_scan`` and sum them: (B, 4, C, H, W) -> (B, C, H*W)."""
    if y.dim() != 5 or y.shape[1] != ROUTES:
        raise ValueError(f'cross_merge expects (B, 4, C, H, W), got shape {tuple(y.shape)}')
    b, _, c, h, w = y.shape
    seq = y.flatten(3)
    rows = seq[:, 0] + seq[:, 2].flip(-1)
    cols = seq[:, 1] + seq[:, 3].flip(-1)
    return rows + cols.view(b, c, w, h).transpose(2, 3).flatten(2)


def _doubling_(a: torch.Tensor, b: torch.Tensor, reverse: bool) -> None:
    """In place along dim 2: b <- h of h_t = a_t h_{t-1} + b_t (h_{t+1} if reverse), a <- running products."""
    length = a.shape[2]
    step = 1
    while step < length:
        if reverse:
            b[:, :, :-step] += a[:, :, :-step] * b[:, :, step:]
            a[:, :, :-step] = a[:, :, :-step] * a[:, :, step:]
        else:
            b[:, :, step:] += a[:, :, step:] * b[:, :, :-step]
            a[:, :, step:] = a[:, :, step:] * a[:, :, :-step]
        step *= 2


def _padded_length(length: int) -> int:
    return -(-length // _CHUNK) * _CHUNK


def _scan_(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> None:
    """In place along dim 1 of (batch, Lp, ...) buffers, Lp a multiple of the chunk: b <- states, a is consumed.

    Pad with a = 1, b = 0 after the sequence: the padding then never changes the states of real steps.
    """
    batch, length = a.shape[:2]
    chunks = length // _CHUNK
    a_c, b_c = a.view(batch, chunks, _CHUNK, *a.shape[2:]), b.view(batch, chunks, _CHUNK, *b.shape[2:])
    _doubling_(a_c, b_c, reverse)
    if chunks == 1:
        return
    edge = 0 if reverse else -1  # the step whose state leaves the chunk
    carry_a, carry_b = _pad_time(a_c[:, :, edge], 1.0), _pad_time(b_c[:, :, edge], 0.0)
    _scan_(carry_a, carry_b, reverse)
    if reverse:
        b_c[:, :-1] += a_c[:, :-1] * carry_b[:, 1:chunks].unsqueeze(2)
    else:
        b_c[:, 1:] += a_c[:, 1:] * carry_b[:, :chunks - 1].unsqueeze(2)


def _pad_time(t: torch.Tensor, value: float) -> torch.Tensor:
    """A new (batch, padded L, ...) buffer holding ``t`` then ``value``."""
    out = t.new_empty(t.shape[0], _padded_length(t.shape[1]), *t.shape[2:])
    out[:, :t.shape[1]] = t
    out[:, t.shape[1]:] = value
    return out


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along dim 1 (h_{t+1} if ``reverse``), zero initial state; inputs are kept."""
    a_p, b_p = _pad_time(a, 1.0), _pad_time(b, 0.0)
    _scan_(a_p, b_p, reverse)
    return b_p[:, :a.shape[1]]


def _states(u, dt, A, B, reverse):
    """Scan states (batch, L, G, Dg, N) of u, dt: (batch, L, G, Dg), A: (G, Dg, N), B: (batch, L, G, N)."""
    shape = (u.shape[0], _padded_length(u.shape[1]), *u.shape[2:], A.shape[-1])
    decay, h = u.new_empty(shape), u.new_empty(shape)
    length = u.shape[1]
    torch.mul(dt.unsqueeze(-1), A, out=decay[:, :length])
    decay[:, :length].exp_()
    decay[:, length:] = 1.0
    torch.mul((dt * u).unsqueeze(-1), B.unsqueeze(3), out=h[:, :length])
    h[:, length:] = 0.0
    _scan_(decay, h, reverse)
    return h[:, :length]


def _scan_out(u, dt, A, B, C, D, reverse):
    """y (batch, L, G, Dg) and the last state (batch, G, Dg, N) of one scan in the sequence-on-dim-1 layout."""
    h = _states(u, dt, A, B, reverse)
    y = (h * C.unsqueeze(3)).sum(-1)
    if D is not None:
        y += D * u
    return y, h[:, 0 if reverse else -1]


def _scan_grads(u, dt, A, B, C, D, grad_y, reverse):
    """Gradients of one scan w.r.t. u, dt, A, B, C, D (same layout as ``_scan_out``), recomputing the states.

    Adjoint states g_t = C_t gy_t + decay_{t+1} g_{t+1} (reverse scans: t-1) are a scan in the other direction.
    """
    length = u.shape[1]
    h = _states(u, dt, A, B, reverse)
    decay = torch.exp(dt.unsqueeze(-1) * A)
    later, earlier = (slice(0, length - 1), slice(1, length)) if reverse else (slice(1, length), slice(0, length - 1))
    a_adj = torch.zeros_like(decay)
    a_adj[:, earlier] = decay[:, later]
    g_h = linear_recurrence(a_adj, grad_y.unsqueeze(-1) * C.unsqueeze(3), reverse=not reverse)
    g_log_decay = torch.zeros_like(h)  # d loss / d (dt * A)
    g_log_decay[:, later] = g_h[:, later] * h[:, earlier] * decay[:, later]
    g_dtu = (g_h * B.unsqueeze(3)).sum(-1)  # d loss / d (dt * u)
    grad_dt = (g_log_decay * A).sum(-1) + g_dtu * u
    grad_u = g_dtu * dt
    grad_A = (g_log_decay * dt.unsqueeze(-1)).sum((0, 1))
    grad_B = (g_h * (dt * u).unsqueeze(-1)).sum(3)
    grad_C = (grad_y.unsqueeze(-1) * h).sum(3)
    grad_D = None
    if D is not None:
        grad_u += D * grad_y
        grad_D = (grad_y * u).sum((0, 1))
    return grad_u, grad_dt, grad_A, grad_B, grad_C, grad_D


def _check_scan_inputs(u, delta, A, B, C, D, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f'u and delta must both be (batch, channels, L); got {tuple(u.shape)} and '
                         f'{tuple(delta.shape)}')
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f'A must be (channels={channels}, d_state), got {tuple(A.shape)}')
    for name, t in (('B', B), ('C', C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != A.shape[1] or t.shape[3] != length:
            raise ValueError(f'{name} must be (batch={batch}, groups, d_state={A.shape[1]}, L={length}), '
                             f'got {tuple(t.shape)}')
        if channels % t.shape[1]:
            raise ValueError(f'{name} has {t.shape[1]} groups, which do not divide {channels} channels')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f'{name} must be ({channels},), got {tuple(t.shape)}')


def _check_cross_inputs(x, delta, A, B, C, D, delta_bias, delta_weight=None):
    if x.dim() != 4:
        raise ValueError(f'x must be (batch, C, H, W), got {tuple(x.shape)}')
    batch, channels, height, width = x.shape
    if delta_weight is not None:
        if delta_weight.dim() != 3 or delta_weight.shape[:2] != (ROUTES, channels):
            raise ValueError(f'delta_weight must be (4, C={channels}, rank), got {tuple(delta_weight.shape)}')
        expected = (batch, ROUTES, delta_weight.shape[2], height, width)
        if delta.shape != expected:
            raise ValueError(f'with delta_weight, delta must be (batch, 4, rank, H, W) = {expected}, '
                             f'got {tuple(delta.shape)}')
    elif delta.shape != (batch, ROUTES, channels, height, width):
        raise ValueError(f'delta must be (batch, 4, C, H, W) = {(batch, ROUTES, channels, height, width)}, '
                         f'got {tuple(delta.shape)}')
    if A.dim() != 2 or A.shape[0] != ROUTES * channels:
        raise ValueError(f'A must be (4 * C = {ROUTES * channels}, d_state), got {tuple(A.shape)}')
    for name, t in (('B', B), ('C', C)):
        if t.shape != (batch, ROUTES, A.shape[1], height, width):
            raise ValueError(f'{name} must be (batch, 4, d_state, H, W) = {(batch, ROUTES, A.shape[1], height, width)}'
                             f', got {tuple(t.shape)}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and t.shape != (ROUTES * channels,):
            raise ValueError(f'{name} must be ({ROUTES * channels},), got {tuple(t.shape)}')


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _delta_to_dt(pre: torch.Tensor, delta_softplus: bool) -> torch.Tensor:
    return F.softplus(pre) if delta_softplus else pre


def _seq_layout(t: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """(batch, channels, L) -> (batch, L, groups, channels // groups) in ``dtype`` (a view when possible)."""
    return t.to(dtype).transpose(1, 2).unflatten(2, (groups, t.shape[1] // groups))


def _scan_operands(u, delta, A, B, C, D, delta_bias):
    """The selective scan's operands in the sequence-on-dim-1 layout of :func:`_scan_out` (views where possible):
    compute dtype, u and the pre-activation delta + bias (batch, L, G, Dg), A (G, Dg, N), B, C (batch, L, G, N),
    D (G, Dg) or None."""
    dtype = _compute_dtype(u, delta, A, B, C)
    groups = B.shape[1]
    pre = _seq_layout(delta, groups, dtype)
    if delta_bias is not None:
        pre = pre + delta_bias.to(dtype).view(groups, -1)
    return (dtype, _seq_layout(u, groups, dtype), pre, A.to(dtype).view(groups, -1, A.shape[1]),
            B.to(dtype).permute(0, 3, 1, 2), C.to(dtype).permute(0, 3, 1, 2),
            None if D is None else D.to(dtype).view(groups, -1))


def _channels_layout(t: torch.Tensor) -> torch.Tensor:
    """(batch, L, G, Dg) -> contiguous (batch, channels, L)."""
    return t.flatten(2).transpose(1, 2).contiguous()


def selective_scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, float32_output: bool):
    """y (batch, channels, L) and the last state (batch, channels, N), both contiguous, without autograd."""
    dtype, u_s, pre, A_g, B_s, C_s, D_g = _scan_operands(u, delta, A, B, C, D, delta_bias)
    y, last = _scan_out(u_s, _delta_to_dt(pre, delta_softplus), A_g, B_s, C_s, D_g, reverse=False)
    y = _channels_layout(y)
    return (y if float32_output else y.to(u.dtype)), last.flatten(1, 2).contiguous()


def selective_scan_backward(grad_y, u, delta, A, B, C, D, delta_bias, delta_softplus: bool):
    """Gradients of (u, delta, A, B, C, D, delta_bias), each contiguous in its input's dtype (None for an absent
    D or delta_bias); the states are recomputed."""
    dtype, u_s, pre, A_g, B_s, C_s, D_g = _scan_operands(u, delta, A, B, C, D, delta_bias)
    dt = _delta_to_dt(pre, delta_softplus)
    g_u, g_dt, g_A, g_B, g_C, g_D = _scan_grads(u_s, dt, A_g, B_s, C_s, D_g, _seq_layout(grad_y, B.shape[1], dtype),
                                                reverse=False)
    g_pre = g_dt * torch.sigmoid(pre) if delta_softplus else g_dt
    return (_channels_layout(g_u).to(u.dtype), _channels_layout(g_pre).to(delta.dtype),
            g_A.reshape(A.shape).to(A.dtype), g_B.permute(0, 2, 3, 1).contiguous().to(B.dtype),
            g_C.permute(0, 2, 3, 1).contiguous().to(C.dtype), None if D is None else g_D.reshape(D.shape).to(D.dtype),
            None if delta_bias is None else g_pre.sum((0, 1)).reshape(delta_bias.shape).to(delta_bias.dtype))


class SelectiveScanReference(torch.autograd.Function):
    """:func:`selective_scan_forward` with :func:`selective_scan_backward` as its backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output):
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        y, last = selective_scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        return (*selective_scan_backward(grad_y, *ctx.saved_tensors, ctx.delta_softplus), None, None)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = True,
                   return_last_state: bool = False, float32_output: bool = True):
    """Mamba's selective scan, reference implementation.

    Args:
        u, delta: (batch, channels, L). A: (channels, N). B, C: (batch, G, N, L), G groups of channels.
        D, delta_bias: (channels,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the state after the last step, (batch, channels, N) (not differentiable).
        float32_output: output in float32 (float64 for float64 inputs); otherwise in ``u``'s dtype.
    """
    _check_scan_inputs(u, delta, A, B, C, D, delta_bias)
    args = (u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output)
    if _needs_grad(u, delta, A, B, C, D, delta_bias):
        y, last = SelectiveScanReference.apply(*args)
    else:  # plain tensor ops: no autograd bookkeeping
        y, last = selective_scan_forward(*args)
    return (y, last) if return_last_state else y


def _route_sequences(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> the row-major (B, H*W, C) and column-major (B, W*H, C) sequences, channel-last."""
    batch, channels = t.shape[:2]
    rows = t.permute(0, 2, 3, 1).reshape(batch, -1, channels)
    cols = t.permute(0, 3, 2, 1).reshape(batch, -1, channels)
    return rows, cols


def _to_image(seq: torch.Tensor, height: int, width: int, column_major: bool) -> torch.Tensor:
    """A route's (B, L, C) sequence back in image layout (B, H, W, C) (a view)."""
    if column_major:
        return seq.unflatten(1, (width, height)).transpose(1, 2)
    return seq.unflatten(1, (height, width))


def _cross_operands(x, delta, A, B, C, D, delta_bias, delta_weight, A_is_log=False):
    """Compute dtype, and x, the pre-activation delta (batch, 4, C, H, W) (dt_proj applied to a rank-R delta, in
    delta's dtype), A (-exp(A) when ``A_is_log``), B, C, D in it."""
    dtype = _compute_dtype(x, delta, A, B, C)
    if delta_weight is not None:
        delta = torch.einsum('bkrhw,kcr->bkchw', delta, delta_weight.to(delta.dtype))
    pre = delta.to(dtype)
    if delta_bias is not None:
        pre = pre + delta_bias.to(dtype).view(1, ROUTES, x.shape[1], 1, 1)
    A = -torch.exp(A.to(dtype)) if A_is_log else A.to(dtype)
    return dtype, (x.to(dtype), pre, A, B.to(dtype), C.to(dtype), None if D is None else D.to(dtype))


def cross_selective_scan_forward(x, delta, A, B, C, D, delta_bias, delta_weight, delta_softplus: bool,
                                 float32_output: bool, A_is_log: bool = False) -> torch.Tensor:
    """The fused forward without autograd: (B, C, H*W), a transposed view of a channel-last (B, H*W, C) buffer."""
    _, args = _cross_operands(x, delta, A, B, C, D, delta_bias, delta_weight, A_is_log)
    y = _cross_scan_out(*args, delta_softplus)
    return y if float32_output else y.to(x.dtype)


def cross_selective_scan_backward(grad_out, x, delta, A, B, C, D, delta_bias, delta_weight, delta_softplus: bool,
                                  A_is_log: bool = False):
    """Gradients of (x, delta, A, B, C, D, delta_bias, delta_weight), each contiguous in its input's dtype (None for
    an absent input; A's that of its log with ``A_is_log``); every route is recomputed."""
    dtype, (x_c, pre, A_c, B_c, C_c, D_c) = _cross_operands(x, delta, A, B, C, D, delta_bias, delta_weight,
                                                            A_is_log)
    batch, channels, height, width = x.shape
    grad_rows, grad_cols = _route_sequences(grad_out.to(dtype).reshape(batch, channels, height, width))
    grad_x = x_c.new_zeros(batch, height, width, channels)
    grad_pre = x_c.new_empty(batch, height, width, ROUTES, channels)
    grad_B = x_c.new_empty(batch, height, width, ROUTES, B.shape[2])
    grad_C = torch.empty_like(grad_B)
    grad_A, grad_D = torch.empty_like(A_c), None if D is None else torch.empty_like(D_c)
    for k, (u, dt, A_k, B_k, C_k, D_k) in enumerate(_routes(x_c, pre, A_c, B_c, C_c, D_c, delta_softplus)):
        column_major = k % 2 == 1
        grad_y = (grad_cols if column_major else grad_rows).unsqueeze(2)
        g_u, g_dt, g_A, g_B, g_C, g_D = _scan_grads(u, dt, A_k, B_k, C_k, D_k, grad_y, reverse=k >= 2)
        if delta_softplus:
            g_dt = g_dt * torch.sigmoid(_route_sequences(pre[:, k])[k % 2]).unsqueeze(2)
        grad_x += _to_image(g_u.squeeze(2), height, width, column_major)
        grad_pre[:, :, :, k] = _to_image(g_dt.squeeze(2), height, width, column_major)
        grad_B[:, :, :, k] = _to_image(g_B.squeeze(2), height, width, column_major)
        grad_C[:, :, :, k] = _to_image(g_C.squeeze(2), height, width, column_major)
        grad_A.view(ROUTES, channels, -1)[k] = g_A[0]
        if D is not None:
            grad_D.view(ROUTES, channels)[k] = g_D[0]
    if A_is_log:  # d(-exp(l)) / dl = -exp(l) = A
        grad_A = grad_A * A_c
    grad_pre = grad_pre.permute(0, 3, 4, 1, 2)
    grad_bias = None if delta_bias is None else grad_pre.sum((0, 3, 4)).reshape(delta_bias.shape)
    grad_weight = None
    if delta_weight is not None:
        low = delta.to(dtype)
        grad_weight = torch.einsum('bkchw,bkrhw->kcr', grad_pre, low).to(delta_weight.dtype)
        grad_pre = torch.einsum('bkchw,kcr->bkrhw', grad_pre, delta_weight.to(dtype))
    grads = (grad_x.permute(0, 3, 1, 2), grad_pre, grad_A, grad_B.permute(0, 3, 4, 1, 2),
             grad_C.permute(0, 3, 4, 1, 2), grad_D, grad_bias, grad_weight)
    inputs = (x, delta, A, B, C, D, delta_bias, delta_weight)
    return tuple(None if g is None else g.to(t.dtype).contiguous() for g, t in zip(grads, inputs, strict=True))


class CrossSelectiveScanReference(torch.autograd.Function):
    """:func:`cross_selective_scan_forward` with :func:`cross_selective_scan_backward` as its backward."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, delta_weight, delta_softplus, float32_output, A_is_log):
        ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, delta_weight)
        ctx.delta_softplus, ctx.A_is_log = delta_softplus, A_is_log
        return cross_selective_scan_forward(x, delta, A, B, C, D, delta_bias, delta_weight, delta_softplus,
                                            float32_output, A_is_log)

    @staticmethod
    def backward(ctx, grad_out):
        return (*cross_selective_scan_backward(grad_out, *ctx.saved_tensors, ctx.delta_softplus, ctx.A_is_log),
                None, None, None)


def _cross_scan_out(x, pre, A, B, C, D, delta_softplus):
    """The fused forward: (B, C, H*W) as a view of a channel-last (B, H, W, C) buffer."""
    batch, channels, height, width = x.shape
    out = x.new_zeros(batch, height, width, channels)
    for k, (u, dt, A_k, B_k, C_k, D_k) in enumerate(_routes(x, pre, A, B, C, D, delta_softplus)):
        y = _scan_out(u, dt, A_k, B_k, C_k, D_k, reverse=k >= 2)[0]
        out += _to_image(y.squeeze(2), height, width, column_major=k % 2 == 1)
    return out.flatten(1, 2).transpose(1, 2)


def _routes(x, pre, A, B, C, D, delta_softplus):
    """Per route k: u, dt (B, L, 1, C), A_k (1, C, N), B_k, C_k (B, L, 1, N), D_k (1, C) in route order."""
    channels = x.shape[1]
    x_routes = _route_sequences(x)
    for k in range(ROUTES):
        column = k % 2
        yield (x_routes[column].unsqueeze(2), _delta_to_dt(_route_sequences(pre[:, k])[column], delta_softplus)
               .unsqueeze(2), A.view(ROUTES, 1, channels, -1)[k], _route_sequences(B[:, k])[column].unsqueeze(2),
               _route_sequences(C[:, k])[column].unsqueeze(2), None if D is None else D.view(ROUTES, 1, channels)[k])


def cross_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                         delta_softplus: bool = True, float32_output: bool = True,
                         delta_weight: torch.Tensor | None = None, A_is_log: bool = False) -> torch.Tensor:
    """cross_scan -> selective_scan -> cross_merge without materialising the routes.

    Args:
        x: (batch, C, H, W), shared by the four routes.
        delta: (batch, 4, C, H, W); B, Cm: (batch, 4, N, H, W): route k reads its own maps, in image coordinates.
        A: (4 * C, N); D, delta_bias: (4 * C,) or None.
        delta_weight: (4, C, R) or None. When given, delta is its rank-R input (batch, 4, R, H, W) and the scan uses
            ``einsum('bkrhw,kcr->bkchw', delta, delta_weight)`` (VMamba's dt_proj; fast backends never store it).
        A_is_log: A holds log(-A) (VMamba's ``A_logs``): the scan uses -exp(A), and A's gradient is the log's.
    Returns:
        (batch, C, H * W) (a view of a channel-last buffer), float32 unless ``float32_output`` is False.
    """
    _check_cross_inputs(x, delta, A, B, C, D, delta_bias, delta_weight)
    args = (x, delta, A, B, C, D, delta_bias, delta_weight, delta_softplus, float32_output, A_is_log)
    if _needs_grad(x, delta, A, B, C, D, delta_bias, delta_weight):
        return CrossSelectiveScanReference.apply(*args)
    return cross_selective_scan_forward(*args)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """LayerNorm over the last dim computed in float32 (float64 for float64 x); the output in ``out_dtype``."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.layer_norm(x.to(compute), weight.shape, weight.to(compute), bias.to(compute), eps)
    return y.to(out_dtype or x.dtype)


def add_layer_norm(residual: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float = 1e-5, out_dtype: torch.dtype | None = None, mask: torch.Tensor | None = None,
                   mask_value: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, :func:`layer_norm` of s) for the residual sum s = residual + mask_value * mask[i] * branch
    (``torch.addcmul``; mask: one entry per sample i of the first dim) or residual + branch without a mask."""
    if mask is None:
        total = residual + branch
    else:
        total = torch.addcmul(residual, branch, mask.view(-1, *(1,) * (residual.dim() - 1)), value=mask_value)
    return total, layer_norm(total, weight, bias, eps, out_dtype)


def depthwise_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU of a depthwise KxK convolution (stride 1, zero padding K // 2) of a channel-last map x (B, H, W, C), with
    weight (C, 1, K, K) and bias (C,) rounded to x's dtype first (as autocast casts them); (B, H, W, C) in x's dtype."""
    weight = weight if weight.dtype == x.dtype else weight.to(x.dtype)
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    z = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[-1])
    return F.silu(z).permute(0, 2, 3, 1)
