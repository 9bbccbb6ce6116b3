"""Watching the scan operators from outside the model, with a PyTorch dispatch mode.

The scans run as the custom operators ``mmvmamba::selective_scan`` and ``mmvmamba::cross_selective_scan``
(:mod:`mmvmamba.ops.library`), so a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every call with its
arguments, whatever backend and however the model imported the ops: the activation map records a layer's scan
inputs.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from mmvmamba.ops import library

_SCANS = (library.selective_scan.op._opoverload, library.cross_selective_scan.op._opoverload)


class _ScanRecorder(TorchDispatchMode):
    def __init__(self, calls: list[dict]):
        super().__init__()
        self.calls = calls
        self.active = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SCANS and self.active:
            names = [argument.name for argument in func._schema.arguments]  # the operator's own argument names
            self.calls.append(dict(op=func._schema.name.split('::')[1], **dict(zip(names, args, strict=False)),
                                   **(kwargs or {})))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def record_scan_calls(module: nn.Module) -> Iterator[list[dict]]:
    """Record the arguments of every scan call made while ``module`` runs, one dict per call (op name and the
    arguments by name: ``x`` or ``u``, ``delta``, ``A``, ``B``, ``C``, ``D``, ``delta_bias``, ...)."""
    calls: list[dict] = []
    recorder = _ScanRecorder(calls)

    def enter(*_):
        recorder.active += 1

    def leave(*_):
        recorder.active -= 1

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        with recorder:
            yield calls
    finally:
        for handle in handles:
            handle.remove()
