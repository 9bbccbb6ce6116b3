"""Triton backend: cross-scan, cross-merge, the selective scan and the fused cross selective scan, each with a Triton
forward and backward (kernels and their maths in :mod:`.kernels`).

Same positional signatures and semantics as :mod:`..reference`. State and accumulation are float32 whatever the input
dtype; float64 inputs are handed to the reference (exact float64 maths). Strided inputs are read in place: the fused
op takes the model's channel-last views without copies and returns a (B, C, L) view of a channel-last (B, L, C)
float32 buffer. Importing this module needs triton (its ImportError marks the backend unavailable); the kernels run on
CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch
import triton

from .. import reference
from . import kernels
from .layer_norm import layer_norm

__all__ = ['cross_merge', 'cross_scan', 'cross_selective_scan', 'layer_norm', 'selective_scan']

ROUTES = 4
_INTERPRET = os.environ.get('TRITON_INTERPRET') == '1'


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Work split of the scan kernels: T steps x BC channels per chunk; the forward takes rounds of S chunks, one a
    warp; rows cut into segments when their warps are fewer than half of ``programs`` (at least ``min_seg`` segments
    a row); WIN segments read per look-back round trip; GB (batch, channel block) groups per block of the program
    order (see :func:`kernels._ticket`); PF_fwd / PF_bwd: 1 loads the next round (chunk) while the current one is
    computed, 0 after it."""
    T: int
    S: int
    BC: int
    WIN: int
    GB: int
    programs: int
    min_seg: int
    warps_bwd: int
    PF_fwd: int
    PF_bwd: int


_override: dict = {}


@contextlib.contextmanager
def tile_config(**fields: int) -> Iterator[None]:
    """Force fields of :class:`TileConfig` inside the block: for tests of the chunk and segment chaining on small
    inputs, and for the benchmark's sweeps. Forward and backward must run with the same T."""
    global _override
    previous, _override = _override, {**_override, **fields}
    try:
        yield
    finally:
        _override = previous


def scan_config(n_state: int, channels: int, length: int, sequences: int) -> TileConfig:
    """Tiles for ``sequences`` (batch x routes) sequences of ``length`` steps. Every thread owns whole channels with
    all of their states: BC = 32 channels a warp for d_state 1 or 2, fewer (NP x BC of 64 to 128 elements) for
    larger d_state. Chunks of 8 steps (4 from d_state 8): the backward keeps every step's state and decay of a chunk
    in registers, and its unrolled code at 16 steps takes Triton 3.6 a minute and a half to compile. The forward
    runs S chunks of a row at once, one a warp, the backward one chunk. S = 8 where rows of at least 2048 steps
    alone fill the GPU: fewer rows in flight then keep more of the merged output in L2. Elsewhere (shorter rows, or
    rows cut into segments) 4, whose rounds synchronise fewer warps."""
    n_pad = triton.next_power_of_2(n_state)
    if _INTERPRET:
        cfg = TileConfig(T=16, S=2, BC=min(4, triton.next_power_of_2(channels)), WIN=4, GB=1, programs=1, min_seg=1,
                         warps_bwd=1, PF_fwd=1, PF_bwd=1)
    else:
        bc = min(triton.next_power_of_2(channels), max(2, 64 // n_pad) if n_pad > 2 else 32)
        t = 8 if n_pad < 8 else 4
        cfg = TileConfig(T=t, S=8, BC=bc, WIN=max(2, min(16, 256 // (n_pad * bc))), GB=1, programs=2048, min_seg=1,
                         warps_bwd=1, PF_fwd=1, PF_bwd=1)
        rows = sequences * triton.cdiv(channels, bc)
        if length < 2048 or _forward_segments(rows, triton.cdiv(length, t), n_pad, cfg)[1] > 1:
            cfg = dataclasses.replace(cfg, S=4)
    return dataclasses.replace(cfg, **_override)


def _forward_warps(cfg: TileConfig, n_pad: int) -> int:
    """Warps of a forward program: a thread an element of its (S, NP, BC) tile, or two for d_state above 2."""
    return max(1, cfg.S * n_pad * cfg.BC // (32 if n_pad <= 2 else 64))


def _forward_segments(rows: int, n_chunks: int, n_pad: int, cfg: TileConfig) -> tuple[int, int]:
    """(rounds per segment, segments per row) of the forward kernel."""
    return _segments(rows, triton.cdiv(n_chunks, cfg.S), _forward_warps(cfg, n_pad), cfg)


def _segments(rows: int, n_units: int, warps: int, cfg: TileConfig) -> tuple[int, int]:
    """(units per segment, segments per row) for rows of n_units units (the forward's rounds, the backward's
    chunks) taken by programs of ``warps`` warps: rows are cut only when they alone cannot fill the GPU, since a
    cut row's segments read their inputs twice (aggregate pass, then outputs)."""
    wanted = triton.cdiv(cfg.programs, rows * warps) if 2 * rows * warps < cfg.programs else 1
    n_seg = min(n_units, max(cfg.min_seg, wanted))
    seg_units = triton.cdiv(n_units, n_seg)
    return seg_units, triton.cdiv(n_units, seg_units)


def _guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == 'cuda' else contextlib.nullcontext()


def _is_float64(*tensors: torch.Tensor | None) -> bool:
    return any(t is not None and t.dtype == torch.float64 for t in tensors)


# ----------------------------------------------------------------------------------------------------------------------
# cross-scan and cross-merge


def _route_gather(src: torch.Tensor, strides: tuple[int, ...], out: torch.Tensor, height: int, width: int,
                  inverse: bool, summed: bool) -> torch.Tensor:
    """Launch :func:`kernels.route_gather_kernel`; src is (B, 4, C, H, W) given by its 5 strides (route stride 0 for
    a map shared by the routes), out is contiguous (B, 4, C, L), or (B, C, L) when ``summed``."""
    batch, channels = out.shape[0], out.shape[-2]
    block_c, block_l = min(32, triton.next_power_of_2(channels)), 64
    grid = (batch * (1 if summed else ROUTES), triton.cdiv(channels, block_c), triton.cdiv(height * width, block_l))
    dst_strides = (out.stride(0), 0 if summed else out.stride(1), out.stride(-2))
    with _guard(out):
        kernels.route_gather_kernel[grid](src, out, height * width, height, width, channels, *strides, *dst_strides,
                                          INVERSE=inverse, SUM=summed, BLOCK_C=block_c, BLOCK_L=block_l)
    return out


def _scan_routes(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) or (B, 4, C, H, W) -> (B, 4, C, L)."""
    batch, channels, height, width = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
    strides = (x.stride(0), 0, *x.stride()[1:]) if x.dim() == 4 else x.stride()
    out = x.new_empty(batch, ROUTES, channels, height * width)
    return _route_gather(x, strides, out, height, width, inverse=False, summed=False)


def _unscan_routes(y: torch.Tensor, summed: bool) -> torch.Tensor:
    """(B, 4, C, H, W) holding each route's sequence -> image order, (B, C, L) summed or (B, 4, C, L) per route."""
    batch, _, channels, height, width = y.shape
    shape = (batch, channels, height * width) if summed else (batch, ROUTES, channels, height * width)
    return _route_gather(y, y.stride(), y.new_empty(shape), height, width, inverse=True, summed=summed)


class CrossScan(torch.autograd.Function):
    """:func:`cross_scan`; its backward merges the routes (or un-routes each one for a per-route input)."""

    @staticmethod
    def forward(ctx, x):
        ctx.per_route, ctx.hw = x.dim() == 5, x.shape[-2:]
        return _scan_routes(x)

    @staticmethod
    def backward(ctx, grad):
        batch, _, channels, length = grad.shape
        height, width = ctx.hw
        grad = grad.unflatten(-1, (height, width))
        if ctx.per_route:
            return _unscan_routes(grad, summed=False).view(batch, ROUTES, channels, height, width)
        return _unscan_routes(grad, summed=True).view(batch, channels, height, width)


class CrossMerge(torch.autograd.Function):
    """:func:`cross_merge`; its backward is the cross-scan of the gradient."""

    @staticmethod
    def forward(ctx, y):
        ctx.hw = y.shape[-2:]
        return _unscan_routes(y, summed=True)

    @staticmethod
    def backward(ctx, grad):
        height, width = ctx.hw
        return _scan_routes(grad.unflatten(-1, (height, width))).unflatten(-1, (height, width))


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W) (or (B, 4, C, H, W), one map per route); see :func:`reference.cross_scan`."""
    if not (x.dim() == 4 or (x.dim() == 5 and x.shape[1] == ROUTES)):
        raise ValueError(f'cross_scan expects (B, C, H, W) or (B, 4, C, H, W), got shape {tuple(x.shape)}')
    if x.dtype == torch.float64:
        return reference.cross_scan(x)
    return CrossScan.apply(x)


def cross_merge(y: torch.Tensor) -> torch.Tensor:
    """(B, 4, C, H, W) -> (B, C, H*W); see :func:`reference.cross_merge`."""
    if y.dim() != 5 or y.shape[1] != ROUTES:
        raise ValueError(f'cross_merge expects (B, 4, C, H, W), got shape {tuple(y.shape)}')
    if y.dtype == torch.float64:
        return reference.cross_merge(y)
    return CrossMerge.apply(y)


# ----------------------------------------------------------------------------------------------------------------------
# selective scan


@dataclasses.dataclass
class _Geometry:
    """How the scan kernels see their operands: rows of (batch, route, channel) over L = H * W steps, and for every
    strided operand its strides along (batch, route, channel or state, image position in row-major order)."""
    batch: int
    routes: int
    channels: int
    n_state: int
    height: int
    width: int
    cross: bool

    @property
    def length(self) -> int:
        return self.height * self.width


def _check_offsets(geo: _Geometry, ops: dict) -> None:
    """The kernels address a position inside one (batch, route) slice of an operand with 32-bit offsets."""
    for name, (_, strides) in ops.items():
        span = (geo.length - 1) * abs(strides[3]) + max(geo.channels, geo.n_state) * abs(strides[2])
        if span >= 2 ** 31:
            raise ValueError(f'selective scan: operand {name!r} spans {span} elements within one batch item and '
                             'route, more than 32-bit offsets reach; split the batch or the image')


def _launch_forward(geo: _Geometry, ops: dict, A, D, delta_bias, softplus: bool, cfg: TileConfig,
                    save_states: bool):
    """Run the forward scan kernel; returns the float32 states entering each chunk plus the final one,
    (rows, n_chunks + 1, NP, BC) with rows = (batch, route, channel block), or only the final one,
    (rows, 1, NP, BC), unless ``save_states`` (for a backward)."""
    _check_offsets(geo, ops)
    u, delta, B, C, y = (ops[name] for name in ('u', 'delta', 'B', 'C', 'y'))
    n_pad = triton.next_power_of_2(geo.n_state)
    n_cblk, n_chunks = triton.cdiv(geo.channels, cfg.BC), triton.cdiv(geo.length, cfg.T)
    rows = geo.batch * geo.routes * n_cblk
    seg_rounds, n_seg = _forward_segments(rows, n_chunks, n_pad, cfg)
    dev = A.device
    states = torch.empty(rows, n_chunks + 1 if save_states else 1, n_pad, cfg.BC, device=dev, dtype=torch.float32)
    status = torch.empty(rows * n_seg * 4 * n_pad * cfg.BC, device=dev, dtype=torch.float32)
    # Merged output (the routes add into y): whole rows zero their group's slice in the kernel, just before adding
    # into it; rows cut into segments take a memset (zeroing a slice would hold up the row's other segments).
    zero_y = geo.cross and n_seg == 1
    if geo.cross and not zero_y:
        y[0].zero_()
    # the rows' look-back flags, the ticket counter and (zero_y) a flag per (batch, channel block) group
    flags = torch.zeros(rows * n_seg + 1 + (geo.batch * n_cblk if zero_y else 0), device=dev, dtype=torch.int32)
    with _guard(A):
        kernels.scan_fwd_kernel[(rows * n_seg,)](
            u[0], delta[0], A, B[0], C[0], A if D is None else D, A if delta_bias is None else delta_bias, y[0],
            states, status, flags, geo.length, geo.height, geo.width, geo.n_state, geo.channels, geo.routes, n_cblk,
            n_chunks, seg_rounds, n_seg, cfg.GB, *u[1], *delta[1], *B[1], *C[1], *y[1],
            CROSS=geo.cross, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            T=cfg.T, S=cfg.S, NP=n_pad, BC=cfg.BC, WIN=cfg.WIN, PF=cfg.PF_fwd, SAVE_STATES=save_states,
            EVEN=geo.channels % cfg.BC == 0 and geo.n_state == n_pad,
            SHARED_POS=u[1][3] == delta[1][3] == y[1][3] and B[1][3] == C[1][3], ZERO_Y=zero_y,
            num_warps=_forward_warps(cfg, n_pad))
    return states


def _launch_backward(geo: _Geometry, ops: dict, A, D, delta_bias, softplus: bool, states: torch.Tensor,
                     cfg: TileConfig):
    """Run the backward scan kernel; returns float32 (dA, dD, d delta_bias) (None where absent). The gradients of the
    strided operands are written into ops['du'], ops['ddelta'], ops['dB'], ops['dC']."""
    n_pad = triton.next_power_of_2(geo.n_state)
    n_cblk, n_chunks = triton.cdiv(geo.channels, cfg.BC), triton.cdiv(geo.length, cfg.T)
    if states.shape[1:] != (n_chunks + 1, n_pad, cfg.BC):
        raise RuntimeError('selective scan backward: the tile configuration changed since the forward')
    rows = geo.batch * geo.routes * n_cblk
    seg_chunks, n_seg = _segments(rows, n_chunks, cfg.warps_bwd, cfg)
    dev = A.device
    status = torch.empty(rows * n_seg * 4 * n_pad * cfg.BC, device=dev, dtype=torch.float32)
    flags = torch.zeros(rows * n_seg + 1, device=dev, dtype=torch.int32)
    dA = torch.zeros(A.shape, device=dev, dtype=torch.float32)
    dD = torch.zeros(A.shape[0], device=dev, dtype=torch.float32) if D is not None else None
    dbias = torch.zeros(A.shape[0], device=dev, dtype=torch.float32) if delta_bias is not None else None
    _check_offsets(geo, ops)
    names = ('u', 'delta', 'B', 'C', 'gy', 'du', 'ddelta', 'dB', 'dC')
    u, delta, B, C, gy, du, ddelta, dB, dC = (ops[name] for name in names)
    with _guard(A):
        kernels.scan_bwd_kernel[(rows * n_seg,)](
            u[0], delta[0], A, B[0], C[0], A if D is None else D, A if delta_bias is None else delta_bias, gy[0],
            states, status, flags, du[0], ddelta[0], dA, dB[0], dC[0], dA if dD is None else dD,
            dA if dbias is None else dbias,
            geo.length, geo.height, geo.width, geo.n_state, geo.channels, geo.routes, n_cblk, n_chunks, seg_chunks,
            n_seg, cfg.GB, *u[1], *delta[1], *B[1], *C[1], *gy[1], *du[1], *ddelta[1], *dB[1], *dC[1],
            CROSS=geo.cross, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            T=cfg.T, NP=n_pad, BC=cfg.BC, WIN=cfg.WIN, PF=cfg.PF_bwd, num_warps=cfg.warps_bwd)
    return dA, dD, dbias


def _last_state(states: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    """(batch, routes * channels, N) from the final slot of the chunk states."""
    rows, _, n_pad, bc = states.shape
    final = states[:, -1].view(geo.batch, geo.routes, rows // (geo.batch * geo.routes), n_pad, bc)
    final = final.permute(0, 1, 2, 4, 3).reshape(geo.batch, geo.routes, -1, n_pad)
    return final[:, :, :geo.channels, :geo.n_state].reshape(geo.batch, geo.routes * geo.channels, geo.n_state)


def _seq_operand(t: torch.Tensor, groups: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(batch, channels, L) seen as (batch, group, channel in group, L)."""
    return t, (t.stride(0), t.stride(1) * (t.shape[1] // groups), t.stride(1), t.stride(2))


def _state_operand(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(batch, G, N, L) seen as (batch, group, state, L)."""
    return t, t.stride()


def _scan_geometry(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> _Geometry:
    batch, channels, length = u.shape
    groups = B.shape[1]
    return _Geometry(batch, groups, channels // groups, A.shape[1], 1, length, cross=False)


def _channels_fastest(t: torch.Tensor) -> torch.Tensor:
    """(batch, channels, L) with the channels adjacent in memory (a transposed view of a (batch, L, channels)
    buffer), so that each scan step reads one contiguous run of channels: t itself when it already is, else a copy."""
    return t if t.stride(1) == 1 else t.transpose(1, 2).contiguous().transpose(1, 2)


class SelectiveScan(torch.autograd.Function):
    """Selective scan: forward saves only the chunk-end states; backward recomputes the states inside each chunk."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output):
        geo = _scan_geometry(u, A, B)
        cfg = scan_config(geo.n_state, geo.channels, geo.length, geo.batch * geo.routes)
        A, D, delta_bias = (None if p is None else p.contiguous() for p in (A, D, delta_bias))
        u, delta = _channels_fastest(u), _channels_fastest(delta)
        y = torch.empty_like(u, dtype=torch.float32 if float32_output else u.dtype)  # u's channel-fastest layout
        ops = dict(u=_seq_operand(u, geo.routes), delta=_seq_operand(delta, geo.routes), B=_state_operand(B),
                   C=_state_operand(C), y=_seq_operand(y, geo.routes))
        states = _launch_forward(geo, ops, A, D, delta_bias, delta_softplus, cfg, any(ctx.needs_input_grad))
        last_state = _last_state(states, geo)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, states)
        ctx.delta_softplus, ctx.cfg = delta_softplus, cfg
        ctx.mark_non_differentiable(last_state)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y, grad_last_state):
        u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors
        geo = _scan_geometry(u, A, B)
        grad_y = _channels_fastest(grad_y)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB = torch.zeros(B.shape, device=B.device, dtype=torch.float32)
        dC = torch.zeros(C.shape, device=C.device, dtype=torch.float32)
        g = geo.routes
        ops = dict(u=_seq_operand(u, g), delta=_seq_operand(delta, g), B=_state_operand(B), C=_state_operand(C),
                   gy=_seq_operand(grad_y, g), du=_seq_operand(du, g), ddelta=_seq_operand(ddelta, g),
                   dB=_state_operand(dB), dC=_state_operand(dC))
        dA, dD, dbias = _launch_backward(geo, ops, A, D, delta_bias, ctx.delta_softplus, states, ctx.cfg)
        return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), None if D is None else dD.to(D.dtype),
                None if delta_bias is None else dbias.to(delta_bias.dtype), None, None)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = True,
                   return_last_state: bool = False, float32_output: bool = True):
    """Mamba's selective scan with grouped B/C; arguments and results as :func:`reference.selective_scan`."""
    args = (u, delta, A, B, C, D, delta_bias)
    if _is_float64(*args):
        return reference.selective_scan(*args, delta_softplus, return_last_state, float32_output)
    reference._check_scan_inputs(*args)
    if _needs_grad(*args):
        y, last_state = SelectiveScan.apply(*args, delta_softplus, float32_output)
    else:
        with torch.no_grad():
            y, last_state = SelectiveScan.forward(_NoCtx(), *args, delta_softplus, float32_output)
    return (y, last_state) if return_last_state else y


class _NoCtx:
    """Stands in for the autograd context when no gradient is needed."""

    needs_input_grad = ()

    def save_for_backward(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass


# ----------------------------------------------------------------------------------------------------------------------
# fused cross selective scan


def _positions_flat(t: torch.Tensor) -> torch.Tensor:
    """t, or a contiguous copy where its (H, W) dims do not merge into one position dim (the kernels address image
    positions by their row-major index)."""
    height, width = t.shape[-2:]
    return t if height == 1 or width == 1 or t.stride(-2) == width * t.stride(-1) else t.contiguous()


def _image_operand(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(batch, C, H, W) shared by the routes (route stride 0), or (batch, 4, C|N, H, W) per route; its (H, W) dims
    must merge (see :func:`_positions_flat`)."""
    position = t.stride(-1) if t.shape[-1] > 1 else t.stride(-2)
    return t, ((t.stride(0), 0, t.stride(1), position) if t.dim() == 4 else (*t.stride()[:3], position))


def _merged_operand(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(batch, C, L) in image order, shared by the routes."""
    return t, (t.stride(0), 0, t.stride(1), t.stride(2))


def _route_state_buffer(batch: int, n_state: int, height: int, width: int, device) -> torch.Tensor:
    """float32 (batch, 4, N, H, W) zeros laid out as (batch, H, W, 4, N), the layout of the model's projections."""
    return torch.zeros(batch, height, width, ROUTES, n_state, device=device, dtype=torch.float32).permute(0, 3, 4, 1, 2)


def _cross_forward(x, delta, A, B, C, D, delta_bias, delta_softplus, save_states: bool):
    """The fused forward kernel: float32 (B, C, L) output (a view of a channel-last buffer), chunk states (for the
    backward when ``save_states``), tiles. x, delta, B, C must have mergeable (H, W) dims (see
    :func:`_positions_flat`)."""
    batch, channels, height, width = x.shape
    geo = _Geometry(batch, ROUTES, channels, A.shape[1], height, width, cross=True)
    cfg = scan_config(geo.n_state, channels, geo.length, batch * ROUTES)
    A, D, delta_bias = (None if p is None else p.contiguous() for p in (A, D, delta_bias))
    out = torch.empty(batch, geo.length, channels, device=x.device, dtype=torch.float32).transpose(1, 2)
    ops = dict(u=_image_operand(x), delta=_image_operand(delta), B=_image_operand(B), C=_image_operand(C),
               y=_merged_operand(out))
    states = _launch_forward(geo, ops, A, D, delta_bias, delta_softplus, cfg, save_states)
    return out, states, cfg


def _cross_backward(x, delta, A, B, C, D, delta_bias, delta_softplus, states, cfg, grad_out):
    """The fused backward kernel: gradients of (x, delta, A, B, C, D, delta_bias), delta's in delta's layout."""
    batch, channels, height, width = x.shape
    geo = _Geometry(batch, ROUTES, channels, A.shape[1], height, width, cross=True)
    dx = torch.zeros_like(x, dtype=torch.float32)
    ddelta = torch.empty_like(delta)
    dB = _route_state_buffer(batch, geo.n_state, height, width, x.device)
    dC = _route_state_buffer(batch, geo.n_state, height, width, x.device)
    ops = dict(u=_image_operand(x), delta=_image_operand(delta), B=_image_operand(B), C=_image_operand(C),
               gy=_merged_operand(grad_out), du=_image_operand(dx), ddelta=_image_operand(ddelta),
               dB=_image_operand(dB), dC=_image_operand(dC))
    dA, dD, dbias = _launch_backward(geo, ops, A, D, delta_bias, delta_softplus, states, cfg)
    return (dx.to(x.dtype), ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            None if D is None else dD.to(D.dtype), None if delta_bias is None else dbias.to(delta_bias.dtype))


class CrossSelectiveScan(torch.autograd.Function):
    """cross_scan -> selective_scan -> cross_merge in one forward and one backward kernel."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, delta_softplus, float32_output):
        out, states, cfg = _cross_forward(x, delta, A, B, C, D, delta_bias, delta_softplus, True)
        ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, states)
        ctx.delta_softplus, ctx.cfg = delta_softplus, cfg
        return out if float32_output else out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        *inputs, states = ctx.saved_tensors
        grads = _cross_backward(*inputs, ctx.delta_softplus, states, ctx.cfg, grad_out)
        return (*grads, None, None)


def _aligned_rank(rank: int) -> int:
    """Ranks padded to a multiple of 8, so the bf16/fp16 matmuls over them meet the tensor cores' 16-byte alignment
    (at rank 6 or 12, cuBLAS falls back to kernels several times slower)."""
    return -(-rank // 8) * 8


def _low_rank_operands(delta: torch.Tensor, delta_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """delta (B, 4, R, H, W) as (4, B*H*W, R8) and delta_weight (4, C, R) as (4, C, R8), zero-padded, delta's dtype."""
    batch, routes, rank, height, width = delta.shape
    padded = _aligned_rank(rank)
    low = delta.new_zeros(routes, batch, height, width, padded)
    low[..., :rank] = delta.permute(1, 0, 3, 4, 2)
    weight = delta_weight.new_zeros(routes, delta_weight.shape[1], padded, dtype=delta.dtype)
    weight[..., :rank] = delta_weight
    return low.view(routes, -1, padded), weight


def expand_low_rank_delta(delta: torch.Tensor, delta_weight: torch.Tensor) -> torch.Tensor:
    """(B, 4, R, H, W) x (4, C, R) -> (B, 4, C, H, W) as one batched matmul over the routes, in delta's dtype.

    The result is a view of a (4, B, H, W, C) buffer: per route a contiguous (positions, C) matrix, which the scan
    reads channel-last and whose gradient comes back in the same layout for the transposed matmuls of the backward.
    """
    low, weight = _low_rank_operands(delta, delta_weight)
    full = torch.bmm(low, weight.transpose(1, 2))
    return full.view(delta.shape[1], delta.shape[0], delta.shape[3], delta.shape[4], -1).permute(1, 0, 4, 2, 3)


class LowRankCrossSelectiveScan(torch.autograd.Function):
    """:class:`CrossSelectiveScan` with delta given as a rank-R projection: the expanded (B, 4, C, H, W) delta is
    not kept for the backward, which recomputes it (one batched matmul) instead of storing 4 * C channels."""

    @staticmethod
    def forward(ctx, x, delta, delta_weight, A, B, C, D, delta_bias, delta_softplus, float32_output):
        full = expand_low_rank_delta(delta, delta_weight)
        out, states, cfg = _cross_forward(x, full, A, B, C, D, delta_bias, delta_softplus, True)
        ctx.save_for_backward(x, delta, delta_weight, A, B, C, D, delta_bias, states)
        ctx.delta_softplus, ctx.cfg = delta_softplus, cfg
        return out if float32_output else out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, delta, delta_weight, A, B, C, D, delta_bias, states = ctx.saved_tensors
        low, weight = _low_rank_operands(delta, delta_weight)
        batch, routes, rank, height, width = delta.shape
        full = torch.bmm(low, weight.transpose(1, 2))
        full_view = full.view(routes, batch, height, width, -1).permute(1, 0, 4, 2, 3)
        dx, dfull, *grads = _cross_backward(x, full_view, A, B, C, D, delta_bias, ctx.delta_softplus, states,
                                            ctx.cfg, grad_out)
        dfull = dfull.permute(1, 0, 3, 4, 2).reshape(routes, -1, dfull.shape[2])
        ddelta = torch.bmm(dfull, weight)[..., :rank].view(routes, batch, height, width, rank)
        dweight = torch.bmm(low.transpose(1, 2), dfull)[:, :rank].transpose(1, 2)
        return (dx, ddelta.permute(1, 0, 4, 2, 3), dweight.to(delta_weight.dtype), *grads, None, None)


def cross_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                         delta_softplus: bool = True, float32_output: bool = True,
                         delta_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Fused cross selective scan; arguments as :func:`reference.cross_selective_scan`. Returns (B, C, H*W), a
    transposed view of a channel-last (B, H*W, C) float32 buffer (a copy in x's dtype if ``float32_output`` is
    False)."""
    args = (x, delta, A, B, C, D, delta_bias)
    if _is_float64(*args, delta_weight):
        return reference.cross_selective_scan(*args, delta_softplus, float32_output, delta_weight)
    reference._check_cross_inputs(*args, delta_weight)
    x, B, C = _positions_flat(x), _positions_flat(B), _positions_flat(C)
    args = (x, delta, A, B, C, D, delta_bias)
    if delta_weight is not None:
        if _needs_grad(*args, delta_weight):
            return LowRankCrossSelectiveScan.apply(x, delta, delta_weight, *args[2:], delta_softplus, float32_output)
        delta = expand_low_rank_delta(delta, delta_weight)
    delta = _positions_flat(delta)
    if _needs_grad(x, delta, *args[2:]):
        return CrossSelectiveScan.apply(x, delta, *args[2:], delta_softplus, float32_output)
    with torch.no_grad():
        out = _cross_forward(x, delta, *args[2:], delta_softplus, False)[0]
    return out if float32_output else out.to(x.dtype)
