"""Mixed precision for training from a config: MMEngine's AMP on CUDA, bfloat16 autocast on CPU; under bfloat16,
mmcv's RoIAlign and NMS (no bfloat16 kernels) run in float32.

Importing this module registers :class:`CPUAutocastOptimWrapper` in MMEngine's ``OPTIM_WRAPPERS``, which
:func:`setup_amp` names in the configs it changes.
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

AMP_DTYPES = {'fp16': 'float16', 'bf16': 'bfloat16'}


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward passes run under CPU bfloat16 autocast.

    MMEngine's ``AmpOptimWrapper`` needs a GPU. bfloat16 has the exponent range of float32, so no loss scaling.
    """

    @contextmanager
    def optim_context(self, model: torch.nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast('cpu', dtype=torch.bfloat16):
            yield


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


def setup_amp(cfg: Config, amp: str | None) -> None:
    """Turn on mixed precision (``amp``: None for off, 'default', 'fp16' or 'bf16'): AmpOptimWrapper on CUDA,
    bfloat16 autocast on CPU. Under bfloat16, mmcv's RoIAlign and NMS run in float32
    (:func:`detection_ops_in_float32`)."""
    if amp is None:
        return
    cuda = torch.cuda.is_available()
    if not cuda and amp == 'fp16':
        raise ValueError('--amp fp16 needs CUDA; on CPU --amp means bfloat16 autocast.')
    if cfg.default_scope == 'mmdet' and (amp == 'bf16' or not cuda):
        detection_ops_in_float32()
    wrapper = cfg.optim_wrapper
    if cuda:
        wrapper.type = 'AmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')
        if amp != 'default':
            wrapper.dtype = AMP_DTYPES[amp]
        return
    if wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise ValueError(f'--amp on CPU replaces OptimWrapper; the config uses {wrapper.type}.')
    wrapper.type = 'CPUAutocastOptimWrapper'
