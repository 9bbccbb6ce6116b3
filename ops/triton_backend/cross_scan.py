"""cross_scan and cross_merge on Triton: one gather kernel that walks each route's order over the image.

Route k visits the image row-major, column-major, and both reversed. The cross-scan writes each route's sequence
(B, 4, C, L); the cross-merge reads each route's sequence back in image order and sums the routes (or, for the
backward of a per-route cross-scan, keeps them apart).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, launch, next_power_of_2

ROUTES = 4


@triton.jit(do_not_specialize=['L', 'H', 'W', 'channels'])
def route_gather_kernel(src_ptr, dst_ptr, L, H, W, channels,
                        s_sb, s_sk, s_sc, s_sh, s_sw, s_db, s_dk, s_dc,
                        INVERSE: tl.constexpr, SUM: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """dst[b, k, c, i] = src[b, k, c, j_k(i)] (or the sum over k when SUM), with src's (H, W) read row-major.

    Forward map (cross-scan): j_k(i) = image position of step i of route k. Inverse map (cross-merge): j_k(i) = step
    of route k that visits image position i.
    """
    pid_bk = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    i = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = (c < channels)[:, None] & (i < L)[None, :]
    if SUM:
        b = pid_bk.to(tl.int64)
        k_first, k_last = 0, 4
    else:
        b = (pid_bk // 4).to(tl.int64)
        k_first = pid_bk % 4
        k_last = k_first + 1
    acc = tl.zeros((BLOCK_C, BLOCK_L), tl.float32)
    for k in range(k_first, k_last):
        if INVERSE:
            base = tl.where(k % 2 == 1, (i % W) * H + i // W, i)
            j = tl.where(k >= 2, L - 1 - base, base)
        else:
            tt = tl.where(k >= 2, L - 1 - i, i)
            j = tl.where(k % 2 == 1, (tt % H) * W + tt // H, tt)
        src = src_ptr + b * s_sb + k * s_sk + c[:, None] * s_sc + ((j // W) * s_sh + (j % W) * s_sw)[None, :]
        acc += tl.load(src, mask=mask, other=0.0).to(tl.float32)
    if SUM:
        dst = dst_ptr + b * s_db + c[:, None] * s_dc + i[None, :]
    else:
        dst = dst_ptr + b * s_db + k_first * s_dk + c[:, None] * s_dc + i[None, :]
    tl.store(dst, acc.to(dst_ptr.dtype.element_ty), mask=mask)


def _route_gather(src: torch.Tensor, strides: tuple[int, ...], out: torch.Tensor, height: int, width: int,
                  inverse: bool, summed: bool) -> torch.Tensor:
    """Launch :func:`route_gather_kernel`; src is (B, 4, C, H, W) given by its 5 strides (route stride 0 for a map
    shared by the routes), out is contiguous (B, 4, C, L), or (B, C, L) when ``summed``."""
    batch, channels = out.shape[0], out.shape[-2]
    block_c, block_l = min(32, next_power_of_2(channels)), 64
    grid = (batch * (1 if summed else ROUTES), cdiv(channels, block_c), cdiv(height * width, block_l))
    s_sb, s_sk, s_sc, s_sh, s_sw = strides
    launch(route_gather_kernel, grid, out.device, src_ptr=src, dst_ptr=out, L=height * width, H=height, W=width,
           channels=channels, s_sb=s_sb, s_sk=s_sk, s_sc=s_sc, s_sh=s_sh, s_sw=s_sw, s_db=out.stride(0),
           s_dk=0 if summed else out.stride(1), s_dc=out.stride(-2), INVERSE=inverse, SUM=summed,
           BLOCK_C=block_c, BLOCK_L=block_l)
    return out


def cross_scan_forward(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), or (B, 4, C, H, W) one map per route -> contiguous (B, 4, C, L)."""
    batch, channels, height, width = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
    strides = (x.stride(0), 0, *x.stride()[1:]) if x.dim() == 4 else x.stride()
    out = x.new_empty(batch, ROUTES, channels, height * width)
    return _route_gather(x, strides, out, height, width, inverse=False, summed=False)


def _unscan(y: torch.Tensor, summed: bool) -> torch.Tensor:
    """(B, 4, C, H, W) holding each route's sequence -> image order, (B, C, L) summed or (B, 4, C, L) per route."""
    batch, _, channels, height, width = y.shape
    shape = (batch, channels, height * width) if summed else (batch, ROUTES, channels, height * width)
    return _route_gather(y, y.stride(), y.new_empty(shape), height, width, inverse=True, summed=summed)


def cross_scan_backward(grad: torch.Tensor, per_route: bool, height: int, width: int) -> torch.Tensor:
    """The gradient of :func:`cross_scan_forward`'s input from its output's (B, 4, C, L): the routes merged, or for a
    per-route input each route back in image order; contiguous."""
    batch, _, channels, _ = grad.shape
    grad = grad.unflatten(-1, (height, width))
    if per_route:
        return _unscan(grad, summed=False).view(batch, ROUTES, channels, height, width)
    return _unscan(grad, summed=True).view(batch, channels, height, width)


def cross_merge_forward(y: torch.Tensor) -> torch.Tensor:
    """(B, 4, C, H, W) -> contiguous (B, C, L)."""
    return _unscan(y, summed=True)


def cross_merge_backward(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The gradient of :func:`cross_merge_forward`'s input: the cross-scan of the output's gradient, (B, 4, C, H, W)."""
    return cross_scan_forward(grad.unflatten(-1, (height, width))).unflatten(-1, (height, width))
