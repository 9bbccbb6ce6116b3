"""Backend selection for the public operators.

Backends: ``'reference'`` (PyTorch, any device), ``'triton'`` (CUDA tensors, Triton kernels) and ``'mamba_ssm'``
(``selective_scan`` only, when the mamba_ssm package is importable). With ``backend=None`` the choice is made from
the tensor's device: Triton on CUDA, the reference elsewhere. A CUDA call that has to fall back to the reference warns
once and says why. The environment variable ``MMVMAMBA_OPS_BACKEND`` sets the default for every call. Each
(op, device type, request) is resolved once and cached, so dispatch costs a dictionary lookup per call.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

BACKENDS = ('reference', 'triton', 'mamba_ssm')
_MODULES = {'reference': 'reference', 'triton': 'triton_backend', 'mamba_ssm': 'mamba_ssm_backend'}
ENV_VAR = 'MMVMAMBA_OPS_BACKEND'
_forced: list[str | None] = [None]


@contextlib.contextmanager
def force_backend(backend: str | None) -> Iterator[None]:
    """Within the block, every public op call that names no backend uses ``backend`` (e.g. to compare a model on the
    fast kernels with the same model on the reference ops)."""
    previous, _forced[0] = _forced[0], backend
    try:
        yield
    finally:
        _forced[0] = previous


@functools.cache
def _load(backend: str) -> tuple[ModuleType | None, str]:
    """The backend's module, or None and the reason it cannot be used."""
    try:
        return importlib.import_module(f'.{_MODULES[backend]}', __package__), ''
    except ImportError as err:
        return None, f'{type(err).__name__}: {err}'


def backend_status() -> dict[str, str]:
    """Each backend and whether it can be used here (``'available'`` or the reason it is not)."""
    return {name: (reason or 'available') for name in BACKENDS for _, reason in [_load(name)]}


def _unavailable(backend: str, op: str, device_type: str) -> str:
    module, reason = _load(backend)
    if module is None:
        return reason
    if not hasattr(module, op):
        return f'the {backend} backend does not implement {op}'
    if backend != 'reference' and device_type != 'cuda':
        return f'the {backend} backend runs on CUDA tensors only, got a {device_type} tensor'
    return ''


@functools.cache
def resolve(op: str, device_type: str, requested: str | None) -> Callable:
    """The implementation of ``op`` for tensors on ``device_type``; see the module docstring for the rules."""
    requested = requested or os.environ.get(ENV_VAR) or None
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f'Unknown ops backend {requested!r}; choose one of {BACKENDS}.')
        reason = _unavailable(requested, op, device_type)
        if reason:
            raise RuntimeError(f'{op}: backend {requested!r} was requested but cannot be used: {reason}.')
        return getattr(_load(requested)[0], op)
    if device_type == 'cuda':
        reasons = []
        for candidate in ('triton', 'mamba_ssm'):
            reason = _unavailable(candidate, op, device_type)
            if not reason:
                return getattr(_load(candidate)[0], op)
            reasons.append(f'{candidate}: {reason}')
        warnings.warn(f'mmvmamba.ops.{op} falls back to the slow PyTorch reference on CUDA ({"; ".join(reasons)}). '
                      f'Install triton to get the fast kernels.', RuntimeWarning, stacklevel=3)
    return getattr(_load('reference')[0], op)


def _device_type(t: torch.Tensor) -> str:
    return t.device.type


def cross_scan(x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W): row-major, column-major and both reversed; a (B, 4, C, H, W) input gives
    each route its own map."""
    return resolve('cross_scan', _device_type(x), backend or _forced[0])(x)


def cross_merge(y: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """(B, 4, C, H, W) -> (B, C, H*W): the adjoint of :func:`cross_scan` (undo each route and sum)."""
    return resolve('cross_merge', _device_type(y), backend or _forced[0])(y)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = True,
                   return_last_state: bool = False, float32_output: bool = True, backend: str | None = None):
    """Selective scan (Mamba's S6) with grouped B/C; semantics in :func:`mmvmamba.ops.reference.selective_scan`.

    u, delta: (batch, channels, L); A: (channels, N); B, C: (batch, groups, N, L); D, delta_bias: (channels,).
    Returns y (batch, channels, L) (float32, or u's dtype when ``float32_output`` is False) and, when asked, the
    last state (batch, channels, N).
    """
    fn = resolve('selective_scan', _device_type(u), backend or _forced[0])
    return fn(u, delta, A, B, C, D, delta_bias, delta_softplus, return_last_state, float32_output)


def cross_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                         delta_softplus: bool = True, float32_output: bool = True,
                         delta_weight: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """Fused cross_scan -> selective_scan -> cross_merge on a (B, C, H, W) map; returns (B, C, H*W).

    delta: (B, 4, C, H, W) and B, C: (B, 4, N, H, W) are per route, in image coordinates; A: (4*C, N);
    D, delta_bias: (4*C,). With ``delta_weight`` (4, C, R), delta is the rank-R (B, 4, R, H, W) input of that
    projection (VMamba's dt_proj), which fast backends apply without storing the expanded delta. Fast backends apply
    the routes inside their loads and stores.
    """
    fn = resolve('cross_selective_scan', _device_type(x), backend or _forced[0])
    return fn(x, delta, A, B, C, D, delta_bias, delta_softplus, float32_output, delta_weight)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
               out_dtype: torch.dtype | None = None, backend: str | None = None) -> torch.Tensor:
    """LayerNorm over the last dim with float32 statistics, written in ``out_dtype`` (default: x's dtype).

    VMamba's norms before a Linear: under autocast the output goes straight to the Linear's dtype, in one kernel on
    CUDA instead of a float32 norm and a cast.
    """
    return resolve('layer_norm', _device_type(x), backend or _forced[0])(x, weight, bias, eps, out_dtype)
