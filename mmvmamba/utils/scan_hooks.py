"""Intercepting the public scan ops (``mmvmamba.ops.selective_scan`` and ``cross_selective_scan``) from outside.

The public ops look up their implementation with :func:`mmvmamba.ops.dispatch.resolve` on every call, so replacing
that one function for the length of a ``with`` block reaches every caller, however it imported the ops, without
touching the model. The analysis tools build on :func:`wrap_scan_ops`: FLOP counting marks each call in the traced
graph, the activation map records a layer's scan inputs, and ONNX export swaps in an export-friendly scan.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch.nn as nn

from mmvmamba.ops import dispatch

SCAN_OPS = ('selective_scan', 'cross_selective_scan')

# wrap(op name, resolved implementation) -> the callable used instead
ScanWrapper = Callable[[str, Callable], Callable]


@contextlib.contextmanager
def wrap_scan_ops(wrap: ScanWrapper) -> Iterator[None]:
    """Within the block, calls of the public scan ops go to ``wrap(op, impl)`` (called with the op's usual arguments,
    ``impl`` being what the dispatcher chose); other ops are untouched. Blocks nest (the inner wrap is outermost)."""
    original = dispatch.resolve

    def resolve(op: str, device_type: str, requested: str | None) -> Callable:
        fn = original(op, device_type, requested)
        return wrap(op, fn) if op in SCAN_OPS else fn

    dispatch.resolve = resolve
    try:
        yield
    finally:
        dispatch.resolve = original


@contextlib.contextmanager
def record_scan_calls(module: nn.Module) -> Iterator[list[dict]]:
    """Record the arguments of every scan call made while ``module`` runs, one dict per call (op name and the
    arguments by name: ``x`` or ``u``, ``delta``, ``A``, ``B``, ``C``, ``D``, ``delta_bias``, ...)."""
    calls: list[dict] = []
    active = [0]
    names = {'selective_scan': ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias', 'delta_softplus',
                                'return_last_state', 'float32_output'),
             'cross_selective_scan': ('x', 'delta', 'A', 'B', 'C', 'D', 'delta_bias', 'delta_softplus',
                                      'float32_output', 'delta_weight')}

    def wrap(op: str, fn: Callable) -> Callable:
        def scan(*args):
            if active[0]:
                calls.append(dict(op=op, **dict(zip(names[op], args, strict=False))))
            return fn(*args)
        return scan

    def enter(*_):
        active[0] += 1

    def leave(*_):
        active[0] -= 1

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        with wrap_scan_ops(wrap):
            yield calls
    finally:
        for handle in handles:
            handle.remove()
