"""The scan kernels' work split (tiles, segments) and their launches, shared by the unfused and the fused op.

Operands are given to the kernels by name: each strided operand as its tensor and its strides along (batch, route,
channel or state, image position in row-major order), see :class:`Operand`. The kernels' parameter lists stay flat
(Triton specialises every integer inside a tuple argument on its value, which would compile the long unrolled kernels
once per stage); :func:`_operand_arguments` spells each operand out under the kernel's names for it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch

from . import scan_kernels
from .launch import cdiv, launch, next_power_of_2

# Small tiles under Triton's interpreter, which runs the kernels in Python (the tests); the GPU's otherwise. A tool
# that records on the CPU the launches a GPU run would make turns this off (tools/analysis/kernel_resources.py).
interpreter_tiles = os.environ.get('TRITON_INTERPRET') == '1'


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Work split of the scan kernels: T steps x BC channels per chunk; the forward takes rounds of S chunks, one a
    warp; rows are cut into segments when their warps are fewer than half of ``programs`` (warps that fill the
    GPU); WIN segments are read per look-back round trip."""
    T: int
    S: int
    BC: int
    WIN: int
    programs: int


_override: dict = {}


@contextlib.contextmanager
def tile_config(**fields: int) -> Iterator[None]:
    """Force fields of :class:`TileConfig` inside the block: for tests of the chunk and segment chaining on small
    inputs (a large ``programs`` cuts rows into many segments), and for the benchmark's sweeps. Forward and backward
    must run with the same T."""
    global _override
    unknown = set(fields) - {f.name for f in dataclasses.fields(TileConfig)}
    if unknown:
        raise TypeError(f'Unknown tile fields {sorted(unknown)}; TileConfig has {list(TileConfig.__annotations__)}.')
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
    n_pad = next_power_of_2(n_state)
    if interpreter_tiles:
        cfg = TileConfig(T=16, S=2, BC=min(4, next_power_of_2(channels)), WIN=4, programs=1)
    else:
        bc = min(next_power_of_2(channels), max(2, 64 // n_pad) if n_pad > 2 else 32)
        t = 8 if n_pad < 8 else 4
        cfg = TileConfig(T=t, S=8, BC=bc, WIN=max(2, min(16, 256 // (n_pad * bc))), programs=2048)
        rows = sequences * cdiv(channels, bc)
        if length < 2048 or _forward_segments(rows, cdiv(length, t), n_pad, cfg)[1] > 1:
            cfg = dataclasses.replace(cfg, S=4)
    return dataclasses.replace(cfg, **_override)


def _forward_warps(cfg: TileConfig, n_pad: int) -> int:
    """Warps of a forward program: a thread an element of its (S, NP, BC) tile, or two for d_state above 2."""
    return max(1, cfg.S * n_pad * cfg.BC // (32 if n_pad <= 2 else 64))


def _forward_segments(rows: int, n_chunks: int, n_pad: int, cfg: TileConfig) -> tuple[int, int]:
    """(rounds per segment, segments per row) of the forward kernel."""
    return _segments(rows, cdiv(n_chunks, cfg.S), _forward_warps(cfg, n_pad), cfg)


def _segments(rows: int, n_units: int, warps: int, cfg: TileConfig) -> tuple[int, int]:
    """(units per segment, segments per row) for rows of n_units units (the forward's rounds, the backward's
    chunks) taken by programs of ``warps`` warps: rows are cut only when they alone cannot fill the GPU, since a
    cut row's segments read their inputs twice (aggregate pass, then outputs)."""
    wanted = cdiv(cfg.programs, rows * warps) if 2 * rows * warps < cfg.programs else 1
    n_seg = min(n_units, max(1, wanted))
    seg_units = cdiv(n_units, n_seg)
    return seg_units, cdiv(n_units, seg_units)


class Operand(NamedTuple):
    """A strided operand of the scan kernels: the tensor and its strides along (batch, route, channel or state,
    image position); a route stride of 0 shares one map between the routes."""
    tensor: torch.Tensor
    strides: tuple[int, int, int, int]


# each operand's kernel names: its pointer and the prefix of its four strides (b, k, c or n, p)
_KERNEL_NAMES = {'u': ('u_ptr', 's_u', 'c'), 'delta': ('dl_ptr', 's_d', 'c'), 'B': ('B_ptr', 's_B', 'n'),
                 'C': ('C_ptr', 's_C', 'n'), 'y': ('y_ptr', 's_y', 'c'), 'gy': ('gy_ptr', 's_g', 'c'),
                 'du': ('du_ptr', 's_du', 'c'), 'ddelta': ('ddl_ptr', 's_dd', 'c'), 'dB': ('dB_ptr', 's_dB', 'n'),
                 'dC': ('dC_ptr', 's_dC', 'n')}


def _operand_arguments(operands: dict[str, Operand]) -> dict:
    """The kernel's keyword arguments for ``operands``: ``u_ptr=..., s_ub=..., s_uk=..., s_uc=..., s_up=...``."""
    arguments = {}
    for name, (tensor, strides) in operands.items():
        ptr, prefix, inner = _KERNEL_NAMES[name]
        arguments[ptr] = tensor
        arguments.update(zip((prefix + axis for axis in ('b', 'k', inner, 'p')), strides, strict=True))
    return arguments


@dataclasses.dataclass
class Geometry:
    """How the scan kernels see their operands: rows of (batch, route, channel) over L = H * W steps."""
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

    def sizes(self, cfg: TileConfig) -> tuple[int, int, int]:
        """(padded d_state, channel blocks, chunks) of a row."""
        return next_power_of_2(self.n_state), cdiv(self.channels, cfg.BC), cdiv(self.length,
                                                                                                     cfg.T)


def check_offsets(geo: Geometry, operands: dict[str, Operand]) -> None:
    """The kernels address a position inside one (batch, route) slice of an operand with 32-bit offsets."""
    for name, (_, strides) in operands.items():
        span = (geo.length - 1) * abs(strides[3]) + max(geo.channels, geo.n_state) * abs(strides[2])
        if span >= 2 ** 31:
            raise ValueError(f'selective scan: operand {name!r} spans {span} elements within one batch item and '
                             'route, more than 32-bit offsets reach; split the batch or the image')


def new_states(geo: Geometry, cfg: TileConfig, save_states: bool, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The chunk states the forward writes: entering each chunk plus the final one, (rows, n_chunks + 1, NP, BC)
    with rows = (batch, route, channel block), or only the final one, (rows, 1, NP, BC), unless ``save_states`` (for
    a backward). The kernels scan in float32 and round the states to ``dtype`` when they store them (float32 or
    bfloat16); the backward recomputes a chunk's states in float32 from the stored one entering it."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f'selective scan: chunk states are stored in float32 or bfloat16, not {dtype}')
    n_pad, n_cblk, n_chunks = geo.sizes(cfg)
    rows = geo.batch * geo.routes * n_cblk
    return torch.empty(rows, n_chunks + 1 if save_states else 1, n_pad, cfg.BC, device=device, dtype=dtype)


def launch_forward(geo: Geometry, operands: dict[str, Operand], A, D, delta_bias, softplus: bool, cfg: TileConfig,
                   states: torch.Tensor, A_is_log: bool = False, delta_weight: torch.Tensor | None = None) -> None:
    """Run the forward scan kernel into ``operands['y']`` and ``states`` (see :func:`new_states`); with ``A_is_log``
    A holds log(-A). With ``delta_weight`` (routes, channels, R), ``operands['delta']`` is the rank-R input of that
    projection (its third stride along the rank), expanded inside the kernel."""
    check_offsets(geo, operands)
    n_pad, n_cblk, n_chunks = geo.sizes(cfg)
    rows = geo.batch * geo.routes * n_cblk
    seg_rounds, n_seg = _forward_segments(rows, n_chunks, n_pad, cfg)
    dev = A.device
    save_states = states.shape[1] > 1
    y = operands['y']
    # the segments' look-back status, read only where rows are cut into segments (else any float32 tensor)
    status = (y.tensor if n_seg == 1 and y.tensor.dtype == torch.float32
              else torch.empty(rows * n_seg * 4 * n_pad * cfg.BC, device=dev, dtype=torch.float32))
    # Merged output (the routes add into y): whole rows zero their group's slice in the kernel, just before adding
    # into it; rows cut into segments take a memset (zeroing a slice would hold up the row's other segments).
    zero_y = geo.cross and n_seg == 1
    if geo.cross and not zero_y:
        y.tensor.zero_()
    # the rows' look-back flags, the ticket counter and (zero_y) a flag per (batch, channel block) group
    flags = torch.zeros(rows * n_seg + 1 + (geo.batch * n_cblk if zero_y else 0), device=dev, dtype=torch.int32)
    strides = {name: op.strides for name, op in operands.items()}
    rank = 0 if delta_weight is None else delta_weight.shape[2]
    weight_strides = (0, 0, 0) if delta_weight is None else delta_weight.stride()
    launch(scan_kernels.scan_fwd_kernel, (rows * n_seg,), dev, **_operand_arguments(operands),
           A_ptr=A, D_ptr=A if D is None else D, bias_ptr=A if delta_bias is None else delta_bias,
           w_ptr=A if delta_weight is None else delta_weight, s_wk=weight_strides[0], s_wc=weight_strides[1],
           s_wr=weight_strides[2],
           states_ptr=states, status_ptr=status, flag_ptr=flags,
           L=geo.length, H=geo.height, W=geo.width, n_state=geo.n_state, channels=geo.channels, n_routes=geo.routes,
           n_cblk=n_cblk, n_chunks=n_chunks, seg_rounds=seg_rounds, n_seg=n_seg, rank=rank,
           CROSS=geo.cross, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
           T=cfg.T, S=cfg.S, NP=n_pad, BC=cfg.BC, WIN=cfg.WIN, SAVE_STATES=save_states,
           EVEN=geo.channels % cfg.BC == 0 and geo.n_state == n_pad,
           SHARED_POS=strides['u'][3] == strides['delta'][3] == strides['y'][3] and strides['B'][3] == strides['C'][3],
           ZERO_Y=zero_y, A_IS_LOG=A_is_log, LOW_RANK=delta_weight is not None, RP=next_power_of_2(rank),
           num_warps=_forward_warps(cfg, n_pad))


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, without a PyTorch call where t has that dtype already."""
    return t if t.dtype == dtype else t.to(dtype)


def zeroed_gradients(A: torch.Tensor, has_d: bool, has_bias: bool, flag_count: int, extra_sizes: tuple[int, ...] = ()
                     ) -> tuple[torch.Tensor | None, ...]:
    """Zeroed float32 buffers for the gradients of A (A's shape), D and delta_bias (None where absent), at least
    ``flag_count`` zeroed int32 flags, and flat float32 buffers of ``extra_sizes`` elements (the caller's gradients
    that the kernel adds into): views of one allocation (one memset) made by one split, each starting on a 16-byte
    boundary (the fused op's sizes, multiples of 4 channels, need no further view)."""
    channels = A.shape[0]
    sizes = [A.numel(), channels if has_d else 0, channels if has_bias else 0, *extra_sizes, flag_count]
    padded = [-(-size // 4) * 4 for size in sizes]
    parts = torch.zeros(sum(padded), device=A.device, dtype=torch.float32).split(padded)
    grad_a, grad_d, grad_bias, *extras = (part if size == pad else part[:size]
                                          for part, size, pad in zip(parts[:-1], sizes[:-1], padded[:-1],
                                                                     strict=True))
    flags = parts[-1]  # all of it: the padding is more zeroed flags
    return (grad_a.view(A.shape), grad_d if has_d else None, grad_bias if has_bias else None,
            flags.view(torch.int32), *extras)


def backward_flags(geo: Geometry, cfg: TileConfig) -> int:
    """How many zeroed int32 flags the backward kernel needs (its rows' look-back flags and the ticket counter)."""
    _, n_cblk, n_chunks = geo.sizes(cfg)
    rows = geo.batch * geo.routes * n_cblk
    return rows * _segments(rows, n_chunks, 1, cfg)[1] + 1


def launch_backward(geo: Geometry, operands: dict[str, Operand], A, D, delta_bias, softplus: bool,
                    states: torch.Tensor, cfg: TileConfig, zeroed: tuple[torch.Tensor | None, ...],
                    A_is_log: bool = False) -> tuple[torch.Tensor, ...]:
    """Run the backward scan kernel: the gradients of the strided operands go into operands 'du', 'ddelta', 'dB',
    'dC'; returns the float32 gradients of (A, D, delta_bias) (None where absent; A's that of its log with
    ``A_is_log``), which the kernel adds into zeroed buffers with its look-back flags: ``zeroed``, the first four
    results of :func:`zeroed_gradients` with :func:`backward_flags` flags (the caller's own zeroed gradients share
    their memset)."""
    n_pad, n_cblk, n_chunks = geo.sizes(cfg)
    if states.shape[1:] != (n_chunks + 1, n_pad, cfg.BC):
        raise RuntimeError('selective scan backward: the tile configuration changed since the forward')
    check_offsets(geo, operands)
    rows = geo.batch * geo.routes * n_cblk
    seg_chunks, n_seg = _segments(rows, n_chunks, 1, cfg)
    dA, dD, dbias, flags = zeroed
    # the segments' look-back status, read only where rows are cut into segments (else any float32 tensor)
    status = (torch.empty(rows * n_seg * 4 * n_pad * cfg.BC, device=A.device, dtype=torch.float32) if n_seg > 1
              else dA)
    launch(scan_kernels.scan_bwd_kernel, (rows * n_seg,), A.device, **_operand_arguments(operands),
           A_ptr=A, D_ptr=A if D is None else D, bias_ptr=A if delta_bias is None else delta_bias,
           dA_ptr=dA, dD_ptr=dA if dD is None else dD, dbias_ptr=dA if dbias is None else dbias,
           states_ptr=states, status_ptr=status, flag_ptr=flags,
           L=geo.length, H=geo.height, W=geo.width, n_state=geo.n_state, channels=geo.channels, n_routes=geo.routes,
           n_cblk=n_cblk, n_chunks=n_chunks, seg_chunks=seg_chunks, n_seg=n_seg,
           CROSS=geo.cross, HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
           T=cfg.T, NP=n_pad, BC=cfg.BC, WIN=cfg.WIN, A_IS_LOG=A_is_log, num_warps=1)
    return dA, dD, dbias
