"""bfloat16 autocast for detectors: mmcv's RoIAlign and NMS, which have no bfloat16 kernels, run in float32."""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch


def _cast(value: Any, source: torch.dtype, target: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype == source:
        return value.to(target)
    if isinstance(value, tuple):
        return tuple(_cast(item, source, target) for item in value)
    return value


def _in_float32(function: Callable) -> Callable:
    """``function`` run in float32, autocast off, when a tensor argument is bfloat16; its float32 outputs are then
    returned in bfloat16 (what the surrounding detector code, built for the input dtype, expects)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not any(isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16 for v in (*args, *kwargs.values())):
            return function(*args, **kwargs)
        with torch.autocast('cpu', enabled=False), torch.autocast('cuda', enabled=False):
            out = function(*_cast(args, torch.bfloat16, torch.float32),
                           **{k: _cast(v, torch.bfloat16, torch.float32) for k, v in kwargs.items()})
        return _cast(out, torch.float32, torch.bfloat16)

    wrapper.float32_island = True
    return wrapper


def detection_ops_in_float32() -> None:
    """Patch mmcv's ``RoIAlign.forward`` and ``nms`` (which ``batched_nms`` looks up by name) to run in float32 on
    bfloat16 inputs."""
    from mmcv.ops import RoIAlign

    nms_module = importlib.import_module('mmcv.ops.nms')  # the module: mmcv.ops.nms is also the function's name
    if not getattr(RoIAlign.forward, 'float32_island', False):
        RoIAlign.forward = _in_float32(RoIAlign.forward)
    if not getattr(nms_module.nms, 'float32_island', False):
        nms_module.nms = _in_float32(nms_module.nms)
