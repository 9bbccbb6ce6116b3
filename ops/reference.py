"""Pure-PyTorch reference operators: exact, vectorised, any device, float64-checkable.

Shapes follow section 1-2 of the VMamba specification:

- ``cross_scan(x)``: (B, C, H, W) -> (B, 4, C, L), or a per-route input (B, 4, C, H, W) -> (B, 4, C, L)
  where route k reads its own map ``x[:, k]``.
- ``cross_merge(y)``: (B, 4, C, H, W) -> (B, C, L), the adjoint of ``cross_scan`` (``y[:, k]`` holds route k's
  sequence laid out row-major as H x W, as the scan produced it).
- ``selective_scan``: Mamba's selective scan with grouped B/C (batch, G, N, L).
- ``cross_selective_scan``: cross_scan -> selective_scan -> cross_merge in one call, with delta/B/C given per route
  in image coordinates.

The scan is a linear recurrence h_t = a_t * h_{t-1} + b_t evaluated by a chunked doubling (Hillis-Steele) scan:
no Python loop over the sequence, only products of decays in (0, 1] (no exp(cumsum) overflow on long sequences).
The selective scan's backward is analytic (a reverse scan) and recomputes the states instead of storing them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ROUTES = 4
_CHUNK = 64


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


def _doubling_scan_(a: torch.Tensor, b: torch.Tensor) -> None:
    """In place along dim 1: b_t <- h_t of h_t = a_t h_{t-1} + b_t, a_t <- prod_{s<=t} a_s (Hillis-Steele)."""
    length = a.shape[1]
    step = 1
    while step < length:
        b[:, step:] += a[:, step:] * b[:, :-step]
        a[:, step:] = a[:, step:] * a[:, :-step]
        step *= 2


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, chunk: int = _CHUNK) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t along dim 0 (time-major) with h_{-1} = 0, in chunks of ``chunk`` steps.

    Dim 0 leading makes every slice of the doubling a contiguous block. Returns a new tensor; inputs are kept.
    """
    length = a.shape[0]
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    a = F.pad(a.movedim(0, -1), (0, pad), value=1.0).movedim(-1, 0) if pad else a.clone()
    b = F.pad(b.movedim(0, -1), (0, pad)).movedim(-1, 0) if pad else b.clone()
    a = a.view(n_chunks, chunk, *a.shape[1:])
    b = b.view(n_chunks, chunk, *b.shape[1:])
    _doubling_scan_(a, b)
    if n_chunks > 1:
        carry = linear_recurrence(a[:, -1], b[:, -1], chunk)
        b[1:] += a[1:] * carry[:-1].unsqueeze(1)
    return b.flatten(0, 1)[:length]


def _check_scan_inputs(u, delta, A, B, C, D, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f'u and delta must both be (batch, channels, L); got {tuple(u.shape)} and {tuple(delta.shape)}')
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


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _time_major(t: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """(batch, channels, L) -> contiguous (L, batch, groups, channels // groups) in ``dtype``."""
    return t.to(dtype).unflatten(1, (groups, t.shape[1] // groups)).permute(3, 0, 1, 2).contiguous()


def _from_time_major(t: torch.Tensor) -> torch.Tensor:
    """(L, batch, groups, Dg) -> (batch, groups * Dg, L)."""
    return t.permute(1, 2, 3, 0).flatten(1, 2)


class _ScanState:
    """Forward quantities of the selective scan in the compute dtype, time-major: (L, batch, G, Dg[, N])."""

    def __init__(self, u, delta, A, B, C, delta_bias, delta_softplus):
        dtype = _compute_dtype(u, delta, A, B, C)
        groups = B.shape[1]
        self.u = _time_major(u, groups, dtype)
        self.pre = _time_major(delta, groups, dtype)
        if delta_bias is not None:
            self.pre = self.pre + delta_bias.to(dtype).view(groups, -1)
        self.dt = F.softplus(self.pre) if delta_softplus else self.pre
        self.A = A.to(dtype).view(groups, -1, A.shape[1])
        self.B = B.to(dtype).permute(3, 0, 1, 2).unsqueeze(3)  # (L, batch, G, 1, N)
        self.C = C.to(dtype).permute(3, 0, 1, 2).unsqueeze(3)
        self.decay = torch.exp(self.dt.unsqueeze(-1) * self.A)
        self.h = linear_recurrence(self.decay, (self.dt * self.u).unsqueeze(-1) * self.B)


def _scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output):
    _check_scan_inputs(u, delta, A, B, C, D, delta_bias)
    state = _ScanState(u, delta, A, B, C, delta_bias, delta_softplus)
    y = (state.h * state.C).sum(-1)
    if D is not None:
        y += D.to(y.dtype).view(y.shape[2:]) * state.u
    y = _from_time_major(y)
    if not float32_output:
        y = y.to(u.dtype)
    return y, state.h[-1].flatten(1, 2)


class SelectiveScanReference(torch.autograd.Function):
    """Selective scan with an analytic backward that recomputes the states (see module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output):
        y, last_state = _scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        ctx.mark_non_differentiable(last_state)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y, grad_last_state):
        u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
        groups = B.shape[1]
        with torch.no_grad():
            s = _ScanState(u, delta, A, B, C, delta_bias, ctx.delta_softplus)
            gy = _time_major(grad_y, groups, s.h.dtype)
            # adjoint states g_t = C_t * gy_t + decay_{t+1} * g_{t+1}: a scan over reversed time
            decay_next = torch.cat([s.decay[1:], torch.zeros_like(s.decay[:1])])
            g_h = linear_recurrence(decay_next.flip(0), (gy.unsqueeze(-1) * s.C).flip(0)).flip(0)
            h_prev = torch.cat([torch.zeros_like(s.h[:1]), s.h[:-1]])
            g_log_decay = g_h * h_prev * s.decay  # d loss / d (dt * A)
            g_dtu = (g_h * s.B).sum(-1)  # d loss / d (dt * u)
            grad_dt = (g_log_decay * s.A).sum(-1) + g_dtu * s.u
            grad_u = g_dtu * s.dt
            grad_A = (g_log_decay * s.dt.unsqueeze(-1)).sum((0, 1)).flatten(0, 1)
            grad_B = (g_h * (s.dt * s.u).unsqueeze(-1)).sum(3).permute(1, 2, 3, 0)
            grad_C = (gy.unsqueeze(-1) * s.h).sum(3).permute(1, 2, 3, 0)
            grad_D = None
            if D is not None:
                grad_u += D.to(gy.dtype).view(gy.shape[2:]) * gy
                grad_D = (gy * s.u).sum((0, 1)).flatten()
            grad_pre = grad_dt * torch.sigmoid(s.pre) if ctx.delta_softplus else grad_dt
            grad_bias = grad_pre.sum((0, 1)).flatten() if delta_bias is not None else None
        return (_from_time_major(grad_u).to(u.dtype), _from_time_major(grad_pre).to(delta.dtype), grad_A.to(A.dtype),
                grad_B.to(B.dtype), grad_C.to(C.dtype), None if grad_D is None else grad_D.to(D.dtype),
                None if grad_bias is None else grad_bias.to(delta_bias.dtype), None, None)


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
    args = (u, delta, A, B, C, D, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        y, last_state = SelectiveScanReference.apply(*args, delta_softplus, float32_output)
    else:  # plain tensor ops: no autograd bookkeeping, and traceable for export
        y, last_state = _scan_forward(*args, delta_softplus, float32_output)
    return (y, last_state) if return_last_state else y


def cross_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                         delta_softplus: bool = True, float32_output: bool = True) -> torch.Tensor:
    """cross_scan -> selective_scan -> cross_merge.

    Args:
        x: (batch, C, H, W), shared by the four routes.
        delta: (batch, 4, C, H, W); B, Cm: (batch, 4, N, H, W): route k reads its own maps, in image coordinates.
        A: (4 * C, N); D, delta_bias: (4 * C,) or None.
    Returns:
        (batch, C, H * W), float32 unless ``float32_output`` is False.
    """
    batch, channels, height, width = x.shape
    ys = selective_scan(cross_scan(x).flatten(1, 2), cross_scan(delta).flatten(1, 2), A, cross_scan(B),
                        cross_scan(C), D, delta_bias, delta_softplus, float32_output=float32_output)
    return cross_merge(ys.view(batch, ROUTES, channels, height, width))
