"""Triton backend: cross-scan, cross-merge, the selective scan, the fused cross selective scan, the LayerNorm and the
depthwise convolution with its SiLU, one module each (:mod:`.cross_scan`, :mod:`.selective_scan`,
:mod:`.cross_selective_scan`, :mod:`.layer_norm`, :mod:`.depthwise_conv`); the scan
kernels and their maths in :mod:`.scan_kernels`, their tiles and launches in :mod:`.scan`.

Each op module provides a forward and a backward without autograd; :mod:`mmvmamba.ops.library` makes them PyTorch
custom operators, and the public ops run them (``mmvmamba.ops.selective_scan(..., backend='triton')``). State and
accumulation are float32 whatever the input dtype. Strided inputs are read in place.
Importing this module needs triton (its ImportError marks the backend unavailable); the kernels run on CUDA tensors,
or on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

from .cross_scan import cross_merge_backward, cross_merge_forward, cross_scan_backward, cross_scan_forward
from .cross_selective_scan import cross_selective_scan_backward, cross_selective_scan_forward
from .depthwise_conv import depthwise_conv_silu_backward, depthwise_conv_silu_forward
from .launch import layout_only
from .layer_norm import (
           add_layer_norm_backward,
           add_layer_norm_forward,
           layer_norm_backward,
           layer_norm_forward,
           saves_xhat,
)
from .scan import TileConfig, scan_config, tile_config
from .selective_scan import selective_scan_backward, selective_scan_forward

__all__ = ['TileConfig', 'add_layer_norm_backward', 'add_layer_norm_forward', 'cross_merge_backward',
           'cross_merge_forward', 'cross_scan_backward', 'cross_scan_forward', 'cross_selective_scan_backward',
           'cross_selective_scan_forward', 'depthwise_conv_silu_backward', 'depthwise_conv_silu_forward',
           'layer_norm_backward', 'layer_norm_forward', 'layout_only', 'saves_xhat', 'scan_config',
           'selective_scan_backward', 'selective_scan_forward', 'tile_config']
