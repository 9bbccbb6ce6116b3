"""On the GPU: the model on the fast kernels equals the same model on the reference ops (forward and gradients)."""
import pytest
import torch

from mmvmamba import ops
from mmvmamba.models.backbones.vmamba import VMamba

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def full_fp32():
    """No TF32 in convolutions and matmuls: both models then compute in float32, and the comparison measures the
    ops, not TF32's 10-bit rounding of slightly different inputs."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize('arch,size', [('tiny', (224, 224)), ('small', (97, 131)), ('vanilla-tiny', (128, 96))])
def test_fast_model_equals_reference_ops_fp32(arch, size):
    torch.manual_seed(0)
    model = VMamba(arch, drop_path_rate=0.0).cuda().train()
    x = torch.randn(2, 3, *size, device='cuda')
    results = []
    for backend in (None, 'reference'):
        model.zero_grad()
        with ops.use_backend(backend):
            outs = model(x)
            sum((o * torch.linspace(-1, 1, o.numel(), device='cuda').view_as(o)).sum() for o in outs).backward()
        results.append(([o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fast_outs, fast_grads), (ref_outs, ref_grads) = results
    for fast, ref in zip(fast_outs, ref_outs, strict=True):
        assert rel_l2(fast, ref) <= 1e-4
    bad = {n: rel_l2(g, ref_grads[n]) for n, g in fast_grads.items() if not rel_l2(g, ref_grads[n]) <= 1e-3}
    assert not bad, bad


def test_fast_model_under_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(0)
    model = VMamba('tiny', drop_path_rate=0.0).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device='cuda')
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            fast = model(x)
    for a, b in zip(fast, ref, strict=True):
        assert torch.isfinite(a).all() and rel_l2(a, b) <= 3e-2
