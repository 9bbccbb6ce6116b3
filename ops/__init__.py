"""VMamba's operators: cross-scan, cross-merge, selective scan, the fused cross selective scan, the LayerNorm that
feeds its projections (alone, or with the residual add before it), and SS2D's depthwise convolution with its SiLU.

Each public function runs on the backend that :mod:`.dispatch` chooses (by device, or as :func:`use_backend` says);
the pure-PyTorch reference lives in :mod:`.reference`, the Triton kernels in :mod:`.triton_backend`, and the custom
operators that ``torch.compile`` sees in :mod:`.library`.
"""
from .dispatch import BACKENDS, backend_status, use_backend
from .operators import (
                        add_layer_norm,
                        cross_merge,
                        cross_scan,
                        cross_selective_scan,
                        depthwise_conv_silu,
                        layer_norm,
                        selective_scan,
)

__all__ = ['BACKENDS', 'add_layer_norm', 'backend_status', 'cross_merge', 'cross_scan', 'cross_selective_scan',
           'depthwise_conv_silu', 'layer_norm', 'selective_scan', 'use_backend']
