"""VMamba's operators: cross-scan, cross-merge, selective scan, the fused cross selective scan, and the LayerNorm
that feeds its projections.

Each public function dispatches by device and availability (see :mod:`.dispatch`); the pure-PyTorch reference lives
in :mod:`.reference`.
"""
from .dispatch import (
    BACKENDS,
    backend_status,
    cross_merge,
    cross_scan,
    cross_selective_scan,
    force_backend,
    layer_norm,
    selective_scan,
)

__all__ = ['BACKENDS', 'backend_status', 'cross_merge', 'cross_scan', 'cross_selective_scan', 'force_backend',
           'layer_norm', 'selective_scan']
