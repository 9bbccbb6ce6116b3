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


@pytest.mark.skipif(importlib.util.find_spec('mamba_ssm') is not None, reason='mamba_ssm is installed here')
def test_mamba_ssm_absent_is_unavailable_not_an_error():
    with pytest.raises(ImportError, match='mamba_ssm is not usable'):
        importlib.import_module(f'{ops.__name__}.mamba_ssm_backend')
    assert ops.backend_status()['mamba_ssm'].startswith('ImportError: mamba_ssm is not usable')
    u = torch.randn(1, 2, 5)
    with pytest.raises(RuntimeError, match="backend 'mamba_ssm' was requested but cannot be used"):
        ops.selective_scan(u, u, -torch.ones(2, 1), torch.randn(1, 1, 1, 5), torch.randn(1, 1, 1, 5),
                           backend='mamba_ssm')


@pytest.mark.gpu
def test_mamba_ssm_matches_the_reference():
    pytest.importorskip('mamba_ssm')
    backend = importlib.import_module(f'{ops.__name__}.mamba_ssm_backend')
    reference = importlib.import_module(f'{ops.__name__}.reference')
    g = torch.Generator('cuda').manual_seed(7)
    u, delta = torch.randn(2, 8, 300, device='cuda', generator=g), torch.randn(2, 8, 300, device='cuda', generator=g)
    A = -torch.rand(8, 4, device='cuda', generator=g) - 0.1
    B, C = torch.randn(2, 2, 4, 300, device='cuda', generator=g), torch.randn(2, 2, 4, 300, device='cuda', generator=g)
    D, bias = torch.randn(8, device='cuda', generator=g), torch.randn(8, device='cuda', generator=g) - 1
    y, last = backend.selective_scan(u, delta, A, B, C, D, bias, True, True, True)
    y_ref, last_ref = reference.selective_scan(*(t.double() for t in (u, delta, A, B, C, D, bias)), True, True)
    assert y.dtype == torch.float32
    assert ((y.double() - y_ref).norm() / y_ref.norm()).item() <= 1e-4
    assert ((last.double() - last_ref).norm() / last_ref.norm()).item() <= 1e-4
