"""Backend availability: a missing package makes its backend 'unavailable' (an ImportError), never a failure."""
import importlib
import importlib.util

import pytest
import torch

try:
    from mmvmamba import ops
except ImportError:  # no mmengine (the bare GPU machine): the ops package alone, from the repository root
    import ops


def test_triton_backend_status_follows_triton():
    status = ops.backend_status()['triton']
    if importlib.util.find_spec('triton') is None:
        assert status.startswith(('ImportError', 'ModuleNotFoundError'))
    else:
        assert status == 'available'


@pytest.mark.skipif(importlib.util.find_spec('selective_scan_cuda') is not None,
                    reason="mamba_ssm's selective_scan_cuda is installed here")
def test_mamba_ssm_absent_is_unavailable_not_an_error():
    with pytest.raises(ImportError, match='mamba_ssm is not usable'):
        importlib.import_module(f'{ops.__name__}.mamba_ssm_backend')
    assert ops.backend_status()['mamba_ssm'].startswith('ImportError: mamba_ssm is not usable')
    u = torch.randn(1, 2, 5)
    with pytest.raises(RuntimeError, match="backend 'mamba_ssm' was requested but cannot be used"):
        ops.selective_scan(u, u, -torch.ones(2, 1), torch.randn(1, 1, 1, 5), torch.randn(1, 1, 1, 5),
                           backend='mamba_ssm')
