"""LayerNorm over the last dim in Triton: float32 statistics, output written directly in the requested dtype.

Under autocast a LayerNorm runs in float32 and the Linear after it casts its input to bf16: one kernel here does
both (the same rounded values), and its backward reads the bf16 gradient directly. When the output is narrower than
the input (float32 residual stream in, bf16 out), the forward also writes the normalised rows x-hat in the output's
dtype, and the backward reads them instead of x: the float32 input is not kept for the backward, half the bytes
(VMamba keeps one such input per norm, two norms a block). Each program normalises a tile of rows; weight and bias
gradients are reduced per program, then summed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, launch, next_power_of_2


@triton.jit
def _layer_norm_fwd(x_ptr, w_ptr, b_ptr, y_ptr, xhat_ptr, mean_ptr, rstd_ptr,
                    branch_ptr, mask_ptr, sum_ptr,
                    rows, n, eps, rows_per_sample, mask_value,
                    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, SAVE_XHAT: tl.constexpr, ADD: tl.constexpr,
                    HAS_MASK: tl.constexpr):
    """y = LayerNorm(x) of ROWS rows. ADD: x is first replaced by the residual sum x + mask_value * mask[sample] *
    branch (a sample's rows_per_sample rows share its mask entry; no mask: x + branch), written to sum_ptr in x's
    dtype, as ``torch.addcmul`` computes it."""
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)[:, None]
    col = tl.arange(0, BLOCK_N)[None, :]
    mask = (row < rows) & (col < n)
    x = tl.load(x_ptr + row * n + col, mask=mask, other=0.0).to(tl.float32)
    if ADD:
        branch = tl.load(branch_ptr + row * n + col, mask=mask, other=0.0).to(tl.float32)
        if HAS_MASK:
            keep = tl.load(mask_ptr + row // rows_per_sample, mask=row < rows, other=0.0).to(tl.float32)
            branch = mask_value * branch * keep
        x = (x + branch).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * n + col, x, mask=mask)
        x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / n
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / n + eps)
    w = tl.load(w_ptr + col, mask=col < n, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + col, mask=col < n, other=0.0).to(tl.float32)
    xhat = centred * rstd[:, None]
    y = xhat * w + b
    tl.store(y_ptr + row * n + col, y.to(y_ptr.dtype.element_ty), mask=mask)
    if SAVE_XHAT:
        tl.store(xhat_ptr + row * n + col, xhat.to(xhat_ptr.dtype.element_ty), mask=mask)
    row_1d = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    tl.store(mean_ptr + row_1d, mean, mask=row_1d < rows)
    tl.store(rstd_ptr + row_1d, rstd, mask=row_1d < rows)


@triton.jit
def _layer_norm_bwd(x_ptr, w_ptr, dy_ptr, mean_ptr, rstd_ptr, dx_ptr, partials_ptr,
                    dsum_ptr, mask_ptr, dbranch_ptr,
                    rows, n, rows_per_sample, mask_value,
                    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, X_IS_XHAT: tl.constexpr, ADD: tl.constexpr,
                    HAS_DSUM: tl.constexpr, HAS_MASK: tl.constexpr):
    """dx = rstd * (w*dy - mean(w*dy) - xhat * mean(xhat*w*dy)), xhat read (``X_IS_XHAT``) or made from x and mean.
    ADD (the residual sum before the norm): dx also takes the sum's own gradient (HAS_DSUM), and is the residual's
    gradient; the branch's is dx * mask_value * mask[sample] (dx without a mask), in its dtype.
    Each program walks tiles pid, pid + programs, ... and writes its partial sums of dy*xhat and dy (the weight and
    bias gradients) once, into rows pid of the (2, programs, n) partials."""
    col = tl.arange(0, BLOCK_N)[None, :]
    w = tl.load(w_ptr + col, mask=col < n, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), tl.float32)
    db = tl.zeros((BLOCK_N,), tl.float32)
    for tile in range(tl.program_id(0), tl.cdiv(rows, ROWS), tl.num_programs(0)):
        row_1d = tile * ROWS + tl.arange(0, ROWS)
        row = row_1d[:, None]
        mask = (row < rows) & (col < n)
        rstd = tl.load(rstd_ptr + row_1d, mask=row_1d < rows, other=0.0)
        x = tl.load(x_ptr + row * n + col, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * n + col, mask=mask, other=0.0).to(tl.float32)
        if X_IS_XHAT:
            xhat = x
        else:
            mean = tl.load(mean_ptr + row_1d, mask=row_1d < rows, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=1) / n
        c2 = tl.sum(wdy, axis=1) / n
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if ADD:
            if HAS_DSUM:
                dx += tl.load(dsum_ptr + row * n + col, mask=mask, other=0.0).to(tl.float32)
            dbranch = dx
            if HAS_MASK:
                keep = tl.load(mask_ptr + row // rows_per_sample, mask=row < rows, other=0.0).to(tl.float32)
                dbranch = dx * keep * mask_value
            tl.store(dbranch_ptr + row * n + col, dbranch.to(dbranch_ptr.dtype.element_ty), mask=mask)
        tl.store(dx_ptr + row * n + col, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)
    cols = tl.arange(0, BLOCK_N)
    tl.store(partials_ptr + tl.program_id(0) * n + cols, dw, mask=cols < n)
    tl.store(partials_ptr + (tl.num_programs(0) + tl.program_id(0)) * n + cols, db, mask=cols < n)


_BWD_PROGRAMS = 1024  # enough to fill the GPU; few partial rows to sum


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its rows (last dim) packed one after another: itself when contiguous, else a contiguous copy (the
    kernels address row r, column c at r * n + c)."""
    return t if t.is_contiguous() else t.contiguous()


def _rows_per_sample(x: torch.Tensor, rows: int) -> int:
    """The rows of one sample (x's first dim), which share its entry of a residual add's mask."""
    return rows // x.shape[0] if x.dim() > 1 else rows


def _tiles(n: int) -> tuple[int, int, int]:
    """(rows per program, padded width, warps): about 4096 elements a program, 16 a thread. At 32 a thread (4 warps)
    the backward of VMamba-T's norms takes 128 to 212 registers (8 to 16 warps a multiprocessor), at 16 (8 warps)
    92 to 128 (16 warps); the forward 64 to 100 (16 to 32 warps), and 40 to 58 (32 to 48 warps)
    (tools/analysis/kernel_resources.py, sm_90a)."""
    block_n = next_power_of_2(n)
    rows = max(1, min(64, 4096 // block_n))
    return rows, block_n, min(16, max(4, block_n * rows // 512))


def saves_xhat(x_dtype: torch.dtype, out_dtype: torch.dtype) -> bool:
    """Whether the backward keeps x-hat in ``out_dtype`` instead of x: when the output is the narrower type."""
    return out_dtype.itemsize < x_dtype.itemsize


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, out_dtype: torch.dtype,
             branch: torch.Tensor | None = None, mask: torch.Tensor | None = None, mask_value: float = 1.0
             ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the residual sum or None, y, mean, 1/std, x-hat or an empty tensor): LayerNorm of x, or with ``branch`` of
    x + mask_value * mask[sample] * branch."""
    n = x.shape[-1]
    x2 = _rows(x)
    rows = x2.numel() // n
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    save_xhat = saves_xhat(x.dtype, out_dtype)
    xhat = torch.empty(x.shape if save_xhat else (0,), device=x.device, dtype=out_dtype)
    mean = torch.empty(rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    total = None if branch is None else torch.empty(x.shape, device=x.device, dtype=x.dtype)
    tile_rows, block_n, warps = _tiles(n)
    launch(_layer_norm_fwd, (cdiv(rows, tile_rows),), x.device, x_ptr=x2, w_ptr=weight, b_ptr=bias, y_ptr=y,
           xhat_ptr=xhat if save_xhat else y, mean_ptr=mean, rstd_ptr=rstd,
           branch_ptr=x2 if branch is None else _rows(branch), mask_ptr=x2 if mask is None else mask,
           sum_ptr=x2 if total is None else total,
           rows=rows, n=n, eps=eps, rows_per_sample=_rows_per_sample(x, rows),
           mask_value=mask_value, ROWS=tile_rows, BLOCK_N=block_n, SAVE_XHAT=save_xhat, ADD=branch is not None,
           HAS_MASK=mask is not None, num_warps=warps)
    return total, y, mean, rstd, xhat


def layer_norm_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """y (x's shape, contiguous, ``out_dtype``), the float32 mean and 1/std of each row, and x-hat in ``out_dtype``
    when :func:`saves_xhat` (else an empty tensor): what the backward needs besides x."""
    return _forward(x, weight, bias, eps, out_dtype)[1:]


def add_layer_norm_forward(residual: torch.Tensor, branch: torch.Tensor, mask: torch.Tensor | None,
                           mask_value: float, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                           out_dtype: torch.dtype
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The residual sum s = residual + mask_value * mask[sample] * branch (``mask`` (B,) or None: residual + branch)
    in residual's dtype, y = LayerNorm(s) as :func:`layer_norm_forward` gives it, its mean, 1/std and x-hat: one
    kernel."""
    return _forward(residual, weight, bias, eps, out_dtype, branch, mask, mask_value)


def _backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
              x_is_xhat: bool, dx_dtype: torch.dtype, dsum: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, mask_value: float = 1.0, branch_dtype: torch.dtype | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(dx, the branch's gradient or None, dw, db); with ``branch_dtype`` the norm's input was a residual sum."""
    n = x.shape[-1]
    x2, dy2 = _rows(x), _rows(dy)
    rows = x2.numel() // n
    dx = torch.empty(x.shape, device=x.device, dtype=dx_dtype)
    dbranch = None if branch_dtype is None else torch.empty(x.shape, device=x.device, dtype=branch_dtype)
    tile_rows, block_n, warps = _tiles(n)
    programs = min(cdiv(rows, tile_rows), _BWD_PROGRAMS)
    partials = torch.empty(2, programs, n, device=x.device, dtype=torch.float32)  # dw, db partials: one sum
    launch(_layer_norm_bwd, (programs,), x.device, x_ptr=x2, w_ptr=weight, dy_ptr=dy2, mean_ptr=mean,
           rstd_ptr=rstd, dx_ptr=dx, partials_ptr=partials,
           dsum_ptr=x2 if dsum is None else _rows(dsum), mask_ptr=x2 if mask is None else mask,
           dbranch_ptr=dx if dbranch is None else dbranch,
           rows=rows, n=n, rows_per_sample=_rows_per_sample(x, rows), mask_value=mask_value,
           ROWS=tile_rows, BLOCK_N=block_n, X_IS_XHAT=x_is_xhat, ADD=branch_dtype is not None,
           HAS_DSUM=dsum is not None, HAS_MASK=mask is not None, num_warps=warps)
    sums = partials.sum(1)
    dw, db = sums if weight.dtype == torch.float32 else sums.to(weight.dtype)
    return dx, dbranch, dw, db


def layer_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                        rstd: torch.Tensor, x_is_xhat: bool, dx_dtype: torch.dtype
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (x, weight, bias) from x, or from x-hat when ``x_is_xhat``: dx contiguous in x's shape and
    ``dx_dtype``, the others in weight's dtype."""
    dx, _, dw, db = _backward(dy, x, weight, mean, rstd, x_is_xhat, dx_dtype)
    return dx, dw, db


def add_layer_norm_backward(dsum: torch.Tensor | None, dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            mean: torch.Tensor, rstd: torch.Tensor, x_is_xhat: bool, mask: torch.Tensor | None,
                            mask_value: float, residual_dtype: torch.dtype, branch_dtype: torch.dtype
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (residual, branch, weight, bias) of :func:`add_layer_norm_forward` from the sum's gradient
    ``dsum`` (None: the sum was not used) and y's, in one kernel; x is the sum, or its x-hat when ``x_is_xhat``."""
    return _backward(dy, x, weight, mean, rstd, x_is_xhat, residual_dtype, dsum, mask, mask_value, branch_dtype)
