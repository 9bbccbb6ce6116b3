"""Which backend runs an operator: chosen in this one place, per call, from a context, the environment and the device.

Backends:

- ``'reference'``: PyTorch maths (:mod:`.reference`), any device, float64-exact.
- ``'triton'``: Triton kernels (:mod:`.triton_backend`), CUDA tensors (CPU tensors only under ``TRITON_INTERPRET=1``).
- ``'mamba_ssm'``: mamba_ssm's CUDA kernel, ``selective_scan`` only, when that package imports.
- ``'export'``: the scans in standard ONNX-exportable ops with a fixed number of steps (:mod:`.export_backend`),
  for tracing into a graph whose input size stays dynamic; forward only.
- ``'shapes'``: the scans return zeros of their outputs' shapes without computing anything, the other ops are the
  reference's; for tools that need a model's graph and not its values (FLOP counting). Forward only.

The choice, first that applies: the call's ``backend=`` argument; the innermost :func:`use_backend` block; the
``MMVMAMBA_OPS_BACKEND`` environment variable (read at import); by device, Triton for CUDA tensors and the reference
elsewhere (a CUDA call that has to fall back to the reference warns once and says why). Float64 tensors always take
the reference (exact float64 maths). The selection is a module attribute, so ``torch.compile`` guards on it: a
compiled model recompiles when the block around it selects another backend.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

BACKENDS = ('reference', 'triton', 'mamba_ssm', 'export', 'shapes')
_MODULES = {'reference': 'reference', 'triton': 'triton_backend', 'mamba_ssm': 'mamba_ssm_backend',
            'export': 'export_backend', 'shapes': 'reference'}
ENV_VAR = 'MMVMAMBA_OPS_BACKEND'
# what each backend implements: every operator, but mamba_ssm its selective scan only
_ALL_OPS = ('cross_scan', 'cross_merge', 'selective_scan', 'cross_selective_scan', 'layer_norm', 'add_layer_norm',
            'depthwise_conv_silu')
_OPS = {**dict.fromkeys(BACKENDS, _ALL_OPS), 'mamba_ssm': ('selective_scan',)}
# Triton's interpreter runs the kernels on CPU tensors (the tests' way to check them without a GPU)
_ANY_DEVICE = ('reference', 'export', 'shapes') + (('triton',) if os.environ.get('TRITON_INTERPRET') == '1' else ())


@dataclasses.dataclass(frozen=True)
class Selection:
    """The backend chosen by the innermost :func:`use_backend` block (None: by device) and its options."""
    backend: str | None
    options: tuple[tuple[str, int], ...] = ()


def _check_name(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f'Unknown ops backend {backend!r}; choose one of {BACKENDS}.')


_default = os.environ.get(ENV_VAR) or None
_check_name(_default)
selection = Selection(_default)


@contextlib.contextmanager
def use_backend(backend: str | None, **options: int) -> Iterator[None]:
    """Within the block, every operator call that names no backend uses ``backend`` (None: by device), e.g. to
    compare a model on the fast kernels with the same model on the reference ops, or ``use_backend('export',
    max_log2_length=...)`` to trace a model for ONNX. Blocks nest; the previous choice comes back on exit."""
    global selection
    _check_name(backend)
    previous, selection = selection, Selection(backend, tuple(sorted(options.items())))
    try:
        yield
    finally:
        selection = previous


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


def module(backend: str) -> ModuleType:
    """The (importable) module of ``backend``."""
    loaded, reason = _load(backend)
    if loaded is None:
        raise RuntimeError(f'ops backend {backend!r} cannot be used: {reason}.')
    return loaded


def _unavailable(backend: str, op: str, device_type: str) -> str:
    loaded, reason = _load(backend)
    if loaded is None:
        return reason
    if op not in _OPS[backend]:
        return f'the {backend} backend does not implement {op}'
    if backend not in _ANY_DEVICE and device_type != 'cuda':
        return f'the {backend} backend runs on CUDA tensors only, got a {device_type} tensor'
    return ''


@torch.compiler.assume_constant_result
def _resolve(op: str, device_type: str, float64: bool, requested: str | None) -> str:
    return _resolve_cached(op, device_type, float64, requested)


@functools.cache
def _resolve_cached(op: str, device_type: str, float64: bool, requested: str | None) -> str:
    if float64 and requested not in ('export', 'shapes'):
        return 'reference'
    if requested is not None:
        _check_name(requested)
        reason = _unavailable(requested, op, device_type)
        if reason:
            raise RuntimeError(f'{op}: backend {requested!r} was requested but cannot be used: {reason}.')
        return requested
    if device_type == 'cuda':
        reasons = []
        for candidate in ('triton', 'mamba_ssm'):
            reason = _unavailable(candidate, op, device_type)
            if not reason:
                return candidate
            reasons.append(f'{candidate}: {reason}')
        warnings.warn(f'mmvmamba.ops.{op} falls back to the slow PyTorch reference on CUDA ({"; ".join(reasons)}). '
                      f'Install triton to get the fast kernels.', RuntimeWarning, stacklevel=4)
    return 'reference'


def resolve(op: str, tensor: torch.Tensor, requested: str | None = None) -> str:
    """The name of the backend that runs ``op`` on ``tensor`` (its device and dtype), given the call's ``backend=``
    argument ``requested``; see the module docstring for the rules."""
    return _resolve(op, tensor.device.type, tensor.dtype == torch.float64, requested or selection.backend)


def options() -> dict[str, int]:
    """The options of the innermost :func:`use_backend` block."""
    return dict(selection.options)
