"""ONNX export: the export-friendly scan equals the reference, and VMamba-T runs in onnxruntime at any size."""
import os
import sys

import pytest
import torch

from mmvmamba.ops import export_backend as export_ops
from mmvmamba.ops import reference
from mmvmamba.utils.config import TensorModel, build_arch_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))

import export_onnx  # noqa: E402


@pytest.mark.parametrize('length', [1, 7, 64, 100])
def test_fixed_step_recurrence_matches_a_loop(length):
    a, b = torch.rand(2, length, 3, dtype=torch.float64), torch.randn(2, length, 3, dtype=torch.float64)
    h, expected = torch.zeros(2, 3, dtype=torch.float64), []
    for t in range(length):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    assert torch.allclose(export_ops.linear_recurrence(a, b, max_log2_length=8), torch.stack(expected, 1))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_export_scans_match_the_reference(dtype):
    torch.manual_seed(0)
    batch, channels, d_state, height, width = 2, 6, 3, 5, 7
    x = torch.randn(batch, channels, height, width, dtype=dtype)
    delta = torch.randn(batch, 4, channels, height, width, dtype=dtype)
    A = -torch.rand(4 * channels, d_state, dtype=dtype) * 4
    B, C = (torch.randn(batch, 4, d_state, height, width, dtype=dtype) for _ in range(2))
    D, bias = torch.randn(4 * channels, dtype=dtype), torch.randn(4 * channels, dtype=dtype)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for args in [(x, delta, A, B, C, D, bias, True), (x, delta, A, B, C, None, None, False)]:
        assert torch.allclose(export_ops.cross_selective_scan(*args), reference.cross_selective_scan(*args), **tol)

    u, dl = x.flatten(2).repeat(1, 4, 1), delta.flatten(3).flatten(1, 2)
    Bs, Cs = B.flatten(3), C.flatten(3)
    y, last = export_ops.selective_scan(u, dl, A, Bs, Cs, D, bias, True, return_last_state=True)
    y_ref, last_ref = reference.selective_scan(u, dl, A, Bs, Cs, D, bias, True, return_last_state=True)
    assert torch.allclose(y, y_ref, **tol) and torch.allclose(last, last_ref, **tol)
    half = export_ops.selective_scan(u.half(), dl.half(), A, Bs.half(), Cs.half(), float32_output=False)
    assert half.dtype == torch.float16


def test_vmamba_tiny_exports_with_dynamic_size(tmp_path):
    pytest.importorskip('onnxruntime')
    onnx = pytest.importorskip('onnx')
    path = str(tmp_path / 'vmamba_tiny.onnx')
    model = TensorModel(build_arch_model('tiny', num_classes=None)).eval()
    names = export_onnx.export(model, path, (64, 64), max_log2_length=9)  # stage-0 scans up to 512 steps
    assert names == ['feat0', 'feat1', 'feat2', 'feat3']
    graph = onnx.load(path, load_external_data=False).graph
    assert {node.domain for node in graph.node} <= {'', 'ai.onnx'}  # standard ops only
    rows = export_onnx.check(model, path, [(64, 64), (64, 96)])
    assert {size for size, _, _ in rows} == {(64, 64), (64, 96)}
    assert max(error for _, _, error in rows) <= 1e-4


def test_classifier_cli_exports_logits(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    out = str(tmp_path / 'cls.onnx')
    rows = export_onnx.main(['--arch', 'vanilla-tiny', '--arch-options', f'depths={",".join(["1"] * 4)}',
                             'embed_dim=16', 'd_state=3', '--classifier', '--num-classes', '10', '--size', '32x64',
                             '--check-sizes', '33x70', '--max-log2-length', '8', '--out', out])
    assert [(size, name) for size, name, _ in rows] == [((32, 64), 'logits'), ((33, 70), 'logits')]
    assert 'ok' in capsys.readouterr().out  # 33x70 exercises the v1 padding and patch merging on odd sizes
