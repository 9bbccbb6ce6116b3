"""The mamba_ssm backend (mamba_ssm's compiled selective scan) against the float64 reference, on the GPU.

These run where mamba_ssm's ``selective_scan_cuda`` imports (``tools/build_mamba_ssm.py`` builds it) and skip, saying
so, where it does not. The cases are the Triton backend's selective-scan cases: forward, last state and every input
gradient, under NaN-poisoned allocations.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util

import pytest
import torch

from tests.test_ops_triton import (
    BF16,
    F32,
    HALF_TOL,
    SELECTIVE_SCAN_CASES,
    check_against_reference,
    cross_inputs,
    ops,
    reference,
    rel_l2,
    scan_inputs,
)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec('selective_scan_cuda') is None,
                                 reason="mamba_ssm's selective_scan_cuda is not built here (tools/build_mamba_ssm.py)")]

scan = functools.partial(ops.selective_scan, backend='mamba_ssm')


@pytest.mark.parametrize('batch,channels,n_state,length,groups,dtype,with_d_and_bias,softplus', SELECTIVE_SCAN_CASES)
def test_mamba_ssm_selective_scan_matches_the_reference(batch, channels, n_state, length, groups, dtype,
                                                        with_d_and_bias, softplus):
    x = scan_inputs(batch, channels, n_state, length, groups, dtype, 'cuda', with_d_and_bias, softplus)
    y = check_against_reference(scan, reference.selective_scan, x, dtype, delta_softplus=softplus,
                                return_last_state=True)
    assert y.dtype == torch.float32 and y.shape == (batch, channels, length)


def test_mamba_ssm_no_grad_keeps_the_input_dtype():
    x = scan_inputs(2, 8, 4, 300, 2, BF16, 'cuda')
    with torch.no_grad():
        y = scan(**x, float32_output=False)
    assert y.dtype == BF16
    assert rel_l2(y, reference.selective_scan(**{k: v.double() for k, v in x.items()})) <= HALF_TOL


def test_mamba_ssm_compiles_to_one_graph_and_equals_eager():
    x = {k: v.requires_grad_() for k, v in scan_inputs(2, 8, 4, 300, 2, F32, 'cuda').items()}
    compiled = torch.compile(lambda **kw: scan(**kw), fullgraph=True)
    y_eager, y_compiled = scan(**x), compiled(**x)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), list(x.values()))
    grads_compiled = torch.autograd.grad(y_compiled.square().sum(), list(x.values()))
    assert torch.equal(y_eager, y_compiled)
    for eager, compiled_grad in zip(grads_eager, grads_compiled, strict=True):
        torch.testing.assert_close(compiled_grad, eager, rtol=1e-5, atol=1e-6)


def test_mamba_ssm_refuses_what_its_kernel_cannot_do():
    x = scan_inputs(1, 4, 2, 64, 1, BF16, 'cuda')
    with pytest.raises(ValueError, match=r"delta, B and C in u's dtype torch.bfloat16, but B is torch.float32"):
        scan(**{**x, 'B': x['B'].float()})
    with pytest.raises(ValueError, match='A, D and delta_bias in float32, but D is torch.bfloat16'):
        scan(**{**x, 'D': x['D'].bfloat16()})
    wide = scan_inputs(1, 2, 257, 16, 1, F32, 'cuda')
    with pytest.raises(ValueError, match='d_state <= 256, got 257'):
        scan(**wide)
    with pytest.raises(RuntimeError, match='the mamba_ssm backend does not implement cross_selective_scan'):
        ops.cross_selective_scan(**cross_inputs(1, 4, 1, 6, 5, F32, 'cuda'), backend='mamba_ssm')
    status = importlib.import_module(f'{ops.__name__}.dispatch').backend_status()
    assert status['mamba_ssm'] == 'available'
