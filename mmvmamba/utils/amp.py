"""Mixed precision for training from a config: MMEngine's AMP on CUDA, bfloat16 autocast on CPU.

Importing this module registers :class:`CPUAutocastOptimWrapper` in MMEngine's ``OPTIM_WRAPPERS``, which
:func:`setup_amp` names in the configs it changes.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


def setup_amp(cfg: Config, amp: str | None) -> None:
    """Turn on mixed precision (``amp``: None for off, 'default', 'fp16' or 'bf16'): AmpOptimWrapper on CUDA,
    bfloat16 autocast on CPU.

    Detectors are refused bfloat16: mmcv's RoIAlign and NMS kernels (CPU and CUDA) take float32 or float16 only.
    """
    if amp is None:
        return
    cuda = torch.cuda.is_available()
    if not cuda and amp == 'fp16':
        raise ValueError('--amp fp16 needs CUDA; on CPU --amp means bfloat16 autocast.')
    if cfg.default_scope == 'mmdet' and (amp == 'bf16' or not cuda):
        raise ValueError('mmcv\'s detection ops (RoIAlign, NMS) have no bfloat16 kernels: train detectors with --amp '
                         '(float16) on CUDA, and in float32 on CPU.')
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
