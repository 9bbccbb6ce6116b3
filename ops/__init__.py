"""VMamba's operators: cross-scan, cross-merge, selective scan, the fused cross selective scan, and the LayerNorm
that feeds its projections.

Each public function runs on the backend that :mod:`.dispatch` chooses (by device, or as :func:`use_backend` says);
the pure-PyTorch reference lives in :mod:`.reference`, the Triton kernels in :mod:`.triton_backend`, and the custom
operators that ``torch.compile`` sees in :mod:`.library`.
"""
from .dispatch import BACKENDS, backend_status, use_backend
from .operators import cross_merge, cross_scan, cross_selective_scan, layer_norm, selective_scan

__all__ = ['BACKENDS', 'backend_status', 'cross_merge', 'cross_scan', 'cross_selective_scan', 'layer_norm',
           'selective_scan', 'use_backend']
