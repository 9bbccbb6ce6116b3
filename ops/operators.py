"""The public operators: each checks its inputs, asks :mod:`.dispatch` for a backend and runs it.

The scans of the Triton, mamba_ssm, reference and 'shapes' backends run as the forward/backward pairs of
:mod:`.library` (custom operators under ``torch.compile``, which keeps them whole in its graph); the reference's
layout ops, LayerNorms and depthwise convolution and the export backend run as plain Python (traceable tensor
ops). Under ``torch.compile`` a LayerNorm (with or without its residual add) or a depthwise convolution that names no
backend is the reference's, which the compiler generates and fuses with the elementwise work around it.
"""
from __future__ import annotations

import torch

from . import dispatch, library, reference
from .reference import _needs_grad

ROUTES = 4


def _python(backend: str):
    """The module of a backend whose ops run as plain Python (the reference's is imported already: no import under
    ``torch.compile``)."""
    return reference if backend == 'reference' else dispatch.module(backend)


def _lowered_backend(op: str, tensor: torch.Tensor, backend: str | None) -> str:
    """The backend of an operator that ``torch.compile`` can generate itself (the norms, the depthwise convolution):
    the reference's plain ops while compiling, where the call names no backend; else as :mod:`.dispatch` chooses."""
    if backend is None and torch.compiler.is_compiling():
        return 'reference'
    return dispatch.resolve(op, tensor, backend)


def _check_norm_parameters(op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    width = x.shape[-1] if x.dim() else 0
    if width == 0 or weight.shape != (width,) or bias.shape != (width,):
        raise ValueError(f'{op} normalises the last dim of x: x of shape {tuple(x.shape)} needs a non-empty last dim '
                         f'and weight and bias of shape ({width},), got {tuple(weight.shape)} and '
                         f'{tuple(bias.shape)}')


def cross_scan(x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W): row-major, column-major and both reversed; a (B, 4, C, H, W) input gives
    each route its own map."""
    if not (x.dim() == 4 or (x.dim() == 5 and x.shape[1] == ROUTES)):
        raise ValueError(f'cross_scan expects (B, C, H, W) or (B, 4, C, H, W), got shape {tuple(x.shape)}')
    name = dispatch.resolve('cross_scan', x, backend)
    if name == 'triton':
        return library.run(library.cross_scan, _needs_grad(x), x, name)
    return _python(name).cross_scan(x)


def cross_merge(y: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """(B, 4, C, H, W) -> (B, C, H*W): the adjoint of :func:`cross_scan` (undo each route and sum)."""
    if y.dim() != 5 or y.shape[1] != ROUTES:
        raise ValueError(f'cross_merge expects (B, 4, C, H, W), got shape {tuple(y.shape)}')
    name = dispatch.resolve('cross_merge', y, backend)
    if name == 'triton':
        return library.run(library.cross_merge, _needs_grad(y), y, name)
    return _python(name).cross_merge(y)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = True,
                   return_last_state: bool = False, float32_output: bool = True, backend: str | None = None):
    """Selective scan (Mamba's S6) with grouped B/C; semantics in :func:`mmvmamba.ops.reference.selective_scan`.

    u, delta: (batch, channels, L); A: (channels, N); B, C: (batch, groups, N, L); D, delta_bias: (channels,).
    Returns y (batch, channels, L) (float32, or u's dtype when ``float32_output`` is False) and, when asked, the
    last state (batch, channels, N).
    """
    reference._check_scan_inputs(u, delta, A, B, C, D, delta_bias)
    name = dispatch.resolve('selective_scan', u, backend)
    if name in library.SCAN_BACKENDS:
        grad = _needs_grad(u, delta, A, B, C, D, delta_bias)
        y, last, _ = library.run(library.selective_scan, grad, u, delta, A, B, C, D, delta_bias, delta_softplus,
                                 float32_output, grad, name)
        return (y, last) if return_last_state else y
    return _python(name).selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, return_last_state,
                                        float32_output, **dispatch.options())


def cross_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                         delta_softplus: bool = True, float32_output: bool = True,
                         delta_weight: torch.Tensor | None = None, A_is_log: bool = False,
                         backend: str | None = None) -> torch.Tensor:
    """Fused cross_scan -> selective_scan -> cross_merge on a (B, C, H, W) map; returns (B, C, H*W), a transposed view
    of a channel-last (B, H*W, C) buffer.

    delta: (B, 4, C, H, W) and B, C: (B, 4, N, H, W) are per route, in image coordinates; A: (4*C, N);
    D, delta_bias: (4*C,). With ``delta_weight`` (4, C, R), delta is the rank-R (B, 4, R, H, W) input of that
    projection (VMamba's dt_proj), which the fast backend applies without keeping the expanded delta. With
    ``A_is_log``, A holds log(-A) (VMamba's ``A_logs``): the scan uses -exp(A) (inside the fast kernels, no extra
    launches) and A's gradient is the log's. The fast backend applies the routes inside its loads and stores.
    """
    reference._check_cross_inputs(x, delta, A, B, C, D, delta_bias, delta_weight)
    name = dispatch.resolve('cross_selective_scan', x, backend)
    if name in library.SCAN_BACKENDS:
        grad = _needs_grad(x, delta, A, B, C, D, delta_bias, delta_weight)
        return library.run(library.cross_selective_scan, grad, x, delta, A, B, C, D, delta_bias, delta_weight,
                           delta_softplus, float32_output, A_is_log, grad, name)[0]
    if A_is_log:
        A = -torch.exp(A)
    return _python(name).cross_selective_scan(x, delta, A, B, C, D, delta_bias, delta_softplus, float32_output,
                                              delta_weight, **dispatch.options())


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
               out_dtype: torch.dtype | None = None, backend: str | None = None) -> torch.Tensor:
    """LayerNorm over the last dim with float32 statistics, written in ``out_dtype`` (default: x's dtype).

    VMamba's norms before a Linear: under autocast the output goes straight to the Linear's dtype, in one kernel on
    CUDA instead of a float32 norm and a cast.
    """
    _check_norm_parameters('layer_norm', x, weight, bias)
    out_dtype = out_dtype or x.dtype
    name = _lowered_backend('layer_norm', x, backend)
    if name == 'triton':
        return library.run(library.layer_norm, _needs_grad(x, weight, bias), x, weight, bias, eps, out_dtype, name)[0]
    return _python(name).layer_norm(x, weight, bias, eps, out_dtype)


def add_layer_norm(residual: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float = 1e-5, out_dtype: torch.dtype | None = None, mask: torch.Tensor | None = None,
                   mask_value: float = 1.0, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A residual add and the LayerNorm after it: (s, LayerNorm(s) in ``out_dtype``) for s = residual + mask_value *
    mask[i] * branch, as ``torch.addcmul`` computes it (in residual's dtype; ``mask`` has one entry per sample i of
    the first dim: DropPath's keep mask, with mask_value 1 / keep), or s = residual + branch without a mask.

    On CUDA one Triton kernel each way: the sum is written as the norm reads it, and the backward adds s's own
    gradient into the norm's and scales the branch's, where autograd would run an add and two multiplies.
    """
    if branch.shape != residual.shape:
        raise ValueError(f'add_layer_norm adds a branch of the residual\'s shape {tuple(residual.shape)}, got '
                         f'{tuple(branch.shape)}')
    _check_norm_parameters('add_layer_norm', residual, weight, bias)
    if mask is not None and mask.shape != residual.shape[:1]:
        raise ValueError(f'add_layer_norm takes one mask entry per sample: shape ({residual.shape[0]},), got '
                         f'{tuple(mask.shape)}')
    out_dtype = out_dtype or residual.dtype
    name = _lowered_backend('add_layer_norm', residual, backend)
    if name == 'triton':
        return library.run(library.add_layer_norm, _needs_grad(residual, branch, weight, bias), residual, branch,
                           mask, mask_value, weight, bias, eps, out_dtype, name)[:2]
    return _python(name).add_layer_norm(residual, branch, weight, bias, eps, out_dtype, mask, mask_value)


def depthwise_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        backend: str | None = None) -> torch.Tensor:
    """SiLU of a depthwise KxK convolution (stride 1, zero padding K // 2, K odd) of a channel-last map x
    (B, H, W, C), with weight (C, 1, K, K) and bias (C,) or None: SS2D's conv2d and its activation. Returns
    (B, H, W, C) in x's dtype; weight and bias are rounded to x's dtype, as autocast casts them.

    On CUDA one Triton kernel forward (two backward) instead of a cuDNN convolution, a SiLU and the weight's casts;
    under ``torch.compile`` (no backend named) the reference, which the compiler lowers itself.
    """
    if x.dim() != 4 or x.shape[-1] == 0:
        raise ValueError(f'depthwise_conv_silu expects a channel-last map (B, H, W, C), got shape {tuple(x.shape)}; '
                         f'pass an NCHW tensor as x.permute(0, 2, 3, 1)')
    channels, size = x.shape[-1], weight.shape[-1]
    if weight.shape != (channels, 1, size, size) or size % 2 == 0:
        raise ValueError(f'depthwise_conv_silu needs a weight of shape ({channels}, 1, K, K) with K odd for x of '
                         f'shape {tuple(x.shape)} (read as channel-last (B, H, W, C)), got {tuple(weight.shape)}')
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f'depthwise_conv_silu needs a bias of shape ({channels},) or None, got {tuple(bias.shape)}')
    name = _lowered_backend('depthwise_conv_silu', x, backend)
    if name == 'triton':
        weight = weight if weight.is_contiguous() else weight.contiguous()
        return library.run(library.depthwise_conv_silu, _needs_grad(x, weight, bias), x, weight, bias, name)
    return _python(name).depthwise_conv_silu(x, weight, bias)
