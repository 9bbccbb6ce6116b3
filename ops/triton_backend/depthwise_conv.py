"""SiLU of a depthwise KxK convolution (stride 1, zero padding K // 2) on a channel-last map, in Triton: SS2D's conv2d
and the activation after it in one forward kernel, the input's gradient and the weight and bias gradients in two
backward kernels.

PyTorch runs this as a cuDNN convolution (channel-last input: always cuDNN) and a separate SiLU, with the weight
and bias cast to bf16 under autocast: four launches forward, and a cuDNN call whose host cost (its plan lookup) is
several times a Triton launch's, in every VSS block. Here the convolution's output z is not kept: the backward
recomputes it from x (nine multiply-adds an element), which also saves one activation per block.

With a 16-bit x the kernels compute as autocast's convolution and SiLU do: weight and bias rounded to x's dtype,
float32 accumulation, z rounded to x's dtype before the SiLU. Gradients are accumulated in float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, launch, next_power_of_2

_BWD_PROGRAMS = 1024  # the weight gradient's partial sums: enough programs to fill the GPU, few partials to add
# elements a tile: the forward and the input gradient's kernel keep one accumulator tile; the backward's first kernel
# keeps K * K input taps and as many weight-gradient sums per element, so it takes half the tile (4 elements a thread)
_TILE, _BWD_TILE = 1024, 512


@triton.jit
def _tile(pid, H, n_wblk, BW: tl.constexpr):
    """(batch (int64), image row, the tile's columns (BW,)) of tile ``pid``: tiles are BW consecutive pixels of one
    image row."""
    row = pid // n_wblk
    w = (pid % n_wblk) * BW + tl.arange(0, BW)
    return (row // H).to(tl.int64), row % H, w


@triton.jit
def _conv(x_ptr, w_ptr, bias_ptr, b, h, w, c, mc, H, W, s_xb, s_xh, s_xw, K: tl.constexpr,
          HAS_BIAS: tl.constexpr, ROUND: tl.constexpr):
    """z (BW, BC) float32 at row h, columns w, channels c (rounded to x's dtype when ROUND), and the K*K input taps
    (BW, BC) float32 it was made from, row by row (zeros outside the image)."""
    pad: tl.constexpr = K // 2
    acc = tl.zeros((w.shape[0], c.shape[0]), tl.float32)
    taps = ()
    for kh in tl.static_range(K):
        hh = h + kh - pad
        row_ok = (hh >= 0) & (hh < H)
        for kw in tl.static_range(K):
            ww = w + kw - pad
            ok = row_ok & (ww >= 0) & (ww < W)
            tap = tl.load(x_ptr + b * s_xb + hh * s_xh + ww[:, None] * s_xw + c[None, :],
                          mask=ok[:, None] & mc[None, :], other=0.0).to(tl.float32)
            weight = tl.load(w_ptr + c * (K * K) + kh * K + kw, mask=mc, other=0.0)
            acc += tap * weight.to(x_ptr.dtype.element_ty).to(tl.float32)[None, :]
            taps = taps + (tap,)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=mc, other=0.0).to(x_ptr.dtype.element_ty).to(tl.float32)[None, :]
    if ROUND:
        acc = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
    return acc, taps


@triton.jit
def _dwconv_silu_fwd(x_ptr, w_ptr, bias_ptr, y_ptr,
                     s_xb, s_xh, s_xw,
                     H, W, channels, n_wblk,
                     K: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr,
                     ROUND: tl.constexpr):
    """y = SiLU(z) of one tile of BW pixels x BC channels; y is contiguous (B, H, W, C)."""
    b, h, w = _tile(tl.program_id(0), H, n_wblk, BW)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    mc = c < channels
    z, _ = _conv(x_ptr, w_ptr, bias_ptr, b, h, w, c, mc, H, W, s_xb, s_xh, s_xw, K, HAS_BIAS, ROUND)
    y = z * tl.sigmoid(z)
    offs = ((b * H + h) * W + w[:, None]) * channels + c[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=(w < W)[:, None] & mc[None, :])


@triton.jit
def _dwconv_silu_bwd_dz(x_ptr, w_ptr, bias_ptr, dy_ptr, dz_ptr, partials_ptr,
                        s_xb, s_xh, s_xw,
                        H, W, channels, n_wblk, n_tiles,
                        K: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr,
                        ROUND: tl.constexpr):
    """dz = dy * SiLU'(z) (z recomputed), written contiguous in dz's dtype (x's, as autocast's SiLU backward gives
    it), and this program's partial sums of the weight gradient (sum of dz times each tap) and of the bias gradient
    (sum of dz) over the tiles pid, pid + programs, ...: row pid of the (programs, C * K * K + C) partials, weight's
    in its (C, K * K) order. The sums use dz in float32 and are kept per element until the program's last tile (one
    reduction over the tile's pixels a program, not one a tile)."""
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    mc = c < channels
    dw = ()
    for _ in tl.static_range(K * K):
        dw = dw + (tl.zeros((BW, BC), tl.float32),)
    db = tl.zeros((BW, BC), tl.float32)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        b, h, w = _tile(tile, H, n_wblk, BW)
        z, taps = _conv(x_ptr, w_ptr, bias_ptr, b, h, w, c, mc, H, W, s_xb, s_xh, s_xw, K, HAS_BIAS, ROUND)
        offs = ((b * H + h) * W + w[:, None]) * channels + c[None, :]
        mask = (w < W)[:, None] & mc[None, :]
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.sigmoid(z)
        dz = dy * s * (1.0 + z * (1.0 - s))
        tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
        new_dw = ()
        for i in tl.static_range(K * K):
            new_dw = new_dw + (dw[i] + dz * taps[i],)
        dw = new_dw
        db += dz
    row = partials_ptr + tl.program_id(0).to(tl.int64) * (channels * (K * K + 1))
    for i in tl.static_range(K * K):
        tl.store(row + c * (K * K) + i, tl.sum(dw[i], 0), mask=mc)
    tl.store(row + channels * (K * K) + c, tl.sum(db, 0), mask=mc)


@triton.jit
def _dwconv_bwd_dx(dz_ptr, w_ptr, dx_ptr,
                   H, W, channels, n_wblk,
                   K: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr, ROUND: tl.constexpr):
    """dx = the transposed convolution of dz (contiguous) with the weight (rounded to dx's dtype when ROUND, as the
    forward used it), one tile; dx is contiguous (B, H, W, C)."""
    b, h, w = _tile(tl.program_id(0), H, n_wblk, BW)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    mc = c < channels
    pad: tl.constexpr = K // 2
    acc = tl.zeros((BW, BC), tl.float32)
    for kh in tl.static_range(K):
        hh = h - kh + pad
        row_ok = (hh >= 0) & (hh < H)
        for kw in tl.static_range(K):
            ww = w - kw + pad
            ok = row_ok & (ww >= 0) & (ww < W)
            dz = tl.load(dz_ptr + ((b * H + hh) * W + ww[:, None]) * channels + c[None, :],
                         mask=ok[:, None] & mc[None, :], other=0.0).to(tl.float32)
            weight = tl.load(w_ptr + c * (K * K) + kh * K + kw, mask=mc, other=0.0)
            if ROUND:
                weight = weight.to(dx_ptr.dtype.element_ty)
            acc += dz * weight.to(tl.float32)[None, :]
    offs = ((b * H + h) * W + w[:, None]) * channels + c[None, :]
    tl.store(dx_ptr + offs, acc.to(dx_ptr.dtype.element_ty), mask=(w < W)[:, None] & mc[None, :])


def _tiles(width: int, channels: int, elements: int) -> tuple[int, int]:
    """(BW, BC): about ``elements`` a tile, up to 64 channels (128 bytes of a bf16 pixel), the widest power of two
    that divides the channels where one of 8 or more does (96 channels: 3 blocks of 32, not 2 of 64 with a quarter
    masked off)."""
    block_c = min(64, next_power_of_2(channels))
    while block_c > 8 and channels % block_c:
        block_c //= 2
    if channels % block_c:
        block_c = min(64, next_power_of_2(channels))
    return min(next_power_of_2(width), max(1, elements // block_c)), block_c


def _channels_inner(x: torch.Tensor) -> torch.Tensor:
    """x, or a copy where its channels (last dim) are not consecutive in memory (the kernels read a pixel's channels
    as one run)."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _geometry(x: torch.Tensor, elements: int) -> tuple[int, int, int, int, int, int, int]:
    """(B, H, W, C, BW, BC, tiles of one channel block) for tiles of about ``elements``."""
    batch, height, width, channels = x.shape
    block_w, block_c = _tiles(width, channels, elements)
    return batch, height, width, channels, block_w, block_c, batch * height * cdiv(width, block_w)


def _rounds(x: torch.Tensor) -> bool:
    return x.dtype != torch.float32


def depthwise_conv_silu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """SiLU(depthwise conv of x (B, H, W, C) with weight (C, 1, K, K), bias (C,) or None), contiguous (B, H, W, C) in
    x's dtype."""
    x = _channels_inner(x)
    batch, height, width, channels, block_w, block_c, n_tiles = _geometry(x, _TILE)
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    launch(_dwconv_silu_fwd, (n_tiles, cdiv(channels, block_c)), x.device, x_ptr=x, w_ptr=weight,
           bias_ptr=weight if bias is None else bias, y_ptr=y, s_xb=x.stride(0), s_xh=x.stride(1), s_xw=x.stride(2),
           H=height, W=width, channels=channels, n_wblk=cdiv(width, block_w), K=weight.shape[-1], BW=block_w,
           BC=block_c, HAS_BIAS=bias is not None, ROUND=_rounds(x), num_warps=4)
    return y


def depthwise_conv_silu_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of (x, weight, bias) from the output's: x's contiguous in x's dtype, weight's and bias's in
    theirs (bias's None without a bias)."""
    x, grad = _channels_inner(x), grad if grad.is_contiguous() else grad.contiguous()
    batch, height, width, channels, block_w, block_c, n_tiles = _geometry(x, _BWD_TILE)
    kernel_size = weight.shape[-1]
    n_cblk, n_wblk = cdiv(channels, block_c), cdiv(width, block_w)
    programs = min(n_tiles, cdiv(_BWD_PROGRAMS, n_cblk))
    dz = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    # the weight's and the bias's partial sums, one row a program: one sum makes both gradients
    partials = torch.empty(programs, channels * (kernel_size ** 2 + 1), device=x.device, dtype=torch.float32)
    launch(_dwconv_silu_bwd_dz, (programs, n_cblk), x.device, x_ptr=x, w_ptr=weight,
           bias_ptr=weight if bias is None else bias, dy_ptr=grad, dz_ptr=dz, partials_ptr=partials,
           s_xb=x.stride(0), s_xh=x.stride(1), s_xw=x.stride(2), H=height, W=width, channels=channels,
           n_wblk=n_wblk, n_tiles=n_tiles, K=kernel_size, BW=block_w, BC=block_c, HAS_BIAS=bias is not None,
           ROUND=_rounds(x), num_warps=4)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    _, _, _, _, block_w, block_c, n_tiles = _geometry(x, _TILE)
    launch(_dwconv_bwd_dx, (n_tiles, cdiv(channels, block_c)), x.device, dz_ptr=dz, w_ptr=weight, dx_ptr=dx,
           H=height, W=width, channels=channels, n_wblk=cdiv(width, block_w), K=kernel_size, BW=block_w, BC=block_c,
           ROUND=_rounds(x), num_warps=4)
    sums = partials.sum(0)
    if sums.dtype != weight.dtype:
        sums = sums.to(weight.dtype)
    dweight, dbias = sums.split([channels * kernel_size ** 2, channels])
    return dx, dweight.view(weight.shape), None if bias is None else dbias
