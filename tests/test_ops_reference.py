"""The pure-PyTorch reference operators against naive definitions, in float64."""
import pytest
import torch
import torch.nn.functional as F

from mmvmamba import ops
from mmvmamba.ops import reference


def naive_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """The recurrence of docs/design.md, "Block equations", one step at a time (float64)."""
    batch, channels, length = u.shape
    groups = B.shape[1]
    dt = delta + (delta_bias[:, None] if delta_bias is not None else 0)
    dt = F.softplus(dt) if delta_softplus else dt
    Bx = B.repeat_interleave(channels // groups, dim=1)
    Cx = C.repeat_interleave(channels // groups, dim=1)
    h = torch.zeros(batch, channels, A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * A) * h + dt[:, :, t, None] * Bx[:, :, :, t] * u[:, :, t, None]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    return y, h


def random_scan_inputs(batch, channels, d_state, length, groups, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(batch * 1000 + channels * 100 + d_state * 10 + length + groups)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale + shift).requires_grad_(requires_grad)

    return dict(u=rand(batch, channels, length), delta=rand(batch, channels, length, scale=0.5),
                A=(-torch.rand(channels, d_state, generator=g, dtype=dtype) * 2 - 0.1).requires_grad_(requires_grad),
                B=rand(batch, groups, d_state, length), C=rand(batch, groups, d_state, length),
                D=rand(channels), delta_bias=rand(channels, scale=0.5, shift=-1.0))


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize('batch,channels,d_state,length,groups', [
    (2, 8, 4, 300, 4), (1, 4, 1, 15, 1), (2, 6, 3, 64, 2), (1, 8, 16, 1000, 4), (1, 4, 2, 129, 4)])
@pytest.mark.parametrize('with_d_and_bias', [True, False])
def test_selective_scan_equals_naive_loop(batch, channels, d_state, length, groups, with_d_and_bias):
    x = random_scan_inputs(batch, channels, d_state, length, groups)
    if not with_d_and_bias:
        x.update(D=None, delta_bias=None)
    y, last = reference.selective_scan(**x, return_last_state=True)
    y_naive, h_naive = naive_selective_scan(**x)
    assert y.dtype == torch.float64 and y.shape == (batch, channels, length)
    assert rel_l2(y, y_naive) <= 1e-10
    assert rel_l2(last, h_naive) <= 1e-10


def test_selective_scan_without_softplus_equals_naive_loop():
    x = random_scan_inputs(2, 4, 3, 100, 2)
    x['delta'], x['delta_bias'] = x['delta'].abs(), x['delta_bias'].abs()
    y = reference.selective_scan(**x, delta_softplus=False)
    assert rel_l2(y, naive_selective_scan(**x, delta_softplus=False)[0]) <= 1e-10


def test_long_sequence_does_not_overflow():
    """exp(cumsum(dt * A)) would leave float range here (cumulative log-decay about -4e4)."""
    x = random_scan_inputs(1, 4, 16, 5000, 2)
    x['delta_bias'] = torch.full((4,), 2.0, dtype=torch.float64)
    y = reference.selective_scan(**x)
    assert rel_l2(y, naive_selective_scan(**x)[0]) <= 1e-10
    x32 = {k: v.float() for k, v in x.items()}
    y32 = reference.selective_scan(**x32)
    assert torch.isfinite(y32).all() and rel_l2(y32, y) <= 1e-5


def test_selective_scan_gradcheck():
    x = random_scan_inputs(2, 4, 3, 70, 2, requires_grad=True)
    names = list(x)
    def scan(*a):
        return reference.selective_scan(**dict(zip(names, a, strict=True)))

    assert torch.autograd.gradcheck(scan, tuple(x.values()))


def test_selective_scan_gradcheck_without_softplus():
    x = random_scan_inputs(1, 4, 2, 40, 4)
    x['delta'], x['delta_bias'] = x['delta'].abs(), x['delta_bias'].abs()
    x = {k: v.requires_grad_() for k, v in x.items()}
    names = list(x)
    def scan(*a):
        return reference.selective_scan(**dict(zip(names, a, strict=True)), delta_softplus=False)

    assert torch.autograd.gradcheck(scan, tuple(x.values()))


def test_selective_scan_output_dtypes():
    x = {k: (v.to(torch.bfloat16) if k in ('u', 'delta', 'B', 'C') else v.float())
         for k, v in random_scan_inputs(1, 4, 1, 50, 4).items()}
    y32 = reference.selective_scan(**x)
    y16 = reference.selective_scan(**x, float32_output=False)
    assert y32.dtype == torch.float32 and y16.dtype == torch.bfloat16
    assert torch.equal(y16, y32.to(torch.bfloat16))


def test_selective_scan_rejects_bad_shapes():
    x = random_scan_inputs(1, 4, 2, 10, 2)
    with pytest.raises(ValueError, match='A must be'):
        reference.selective_scan(**{**x, 'A': x['A'][:3]})
    with pytest.raises(ValueError, match='do not divide'):
        reference.selective_scan(**{**x, 'B': torch.randn(1, 3, 2, 10, dtype=torch.float64)})
    with pytest.raises(ValueError, match='B must be'):
        reference.selective_scan(**{**x, 'B': x['B'][..., :5]})


def test_cross_scan_orders_are_those_of_the_design_document():
    """docs/design.md, "Cross-scan orders": row-major, column-major, and both reversed."""
    x = torch.arange(6.0).view(1, 1, 2, 3)
    routes = ops.cross_scan(x)[0, :, 0].tolist()
    assert routes == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]


def test_cross_scan_per_route_maps():
    x = torch.randn(2, 3, 4, 5)
    per_route = torch.stack([x, 2 * x, 3 * x, 4 * x], dim=1)
    expected = ops.cross_scan(x) * torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1, 1)
    assert torch.allclose(ops.cross_scan(per_route), expected)


@pytest.mark.parametrize('height,width', [(2, 3), (5, 7), (1, 4), (6, 6)])
def test_cross_merge_is_the_adjoint_of_cross_scan(height, width):
    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    y = torch.randn(2, 4, 3, height, width, dtype=torch.float64)
    lhs = (ops.cross_merge(y) * x.flatten(2)).sum()
    rhs = (y.flatten(3) * ops.cross_scan(x)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    scanned = ops.cross_scan(x).view(2, 4, 3, height, width)
    assert torch.equal(ops.cross_merge(scanned), 4 * x.flatten(2))


def test_cross_scan_and_merge_gradcheck():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 4, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.cross_scan, (x,))
    assert torch.autograd.gradcheck(ops.cross_merge, (y,))


def cross_inputs(batch=2, channels=3, d_state=2, height=5, width=6, requires_grad=False):
    x = random_scan_inputs(batch, 4 * channels, d_state, height * width, 4, requires_grad=False)
    return dict(
        x=torch.randn(batch, channels, height, width, dtype=torch.float64).requires_grad_(requires_grad),
        delta=x['delta'].view(batch, 4, channels, height, width).requires_grad_(requires_grad),
        A=x['A'].requires_grad_(requires_grad),
        B=x['B'].view(batch, 4, d_state, height, width).requires_grad_(requires_grad),
        C=x['C'].view(batch, 4, d_state, height, width).requires_grad_(requires_grad),
        D=x['D'].requires_grad_(requires_grad), delta_bias=x['delta_bias'].requires_grad_(requires_grad))


def test_cross_selective_scan_equals_its_composition():
    x = cross_inputs()
    batch, channels, height, width = x['x'].shape
    ys = ops.selective_scan(ops.cross_scan(x['x']).flatten(1, 2), ops.cross_scan(x['delta']).flatten(1, 2), x['A'],
                            ops.cross_scan(x['B']), ops.cross_scan(x['C']), x['D'], x['delta_bias'])
    expected = ops.cross_merge(ys.view(batch, 4, channels, height, width))
    assert rel_l2(ops.cross_selective_scan(**x), expected) <= 1e-12


def test_cross_selective_scan_gradcheck():
    x = cross_inputs(batch=1, channels=2, d_state=2, height=3, width=4, requires_grad=True)
    names = list(x)
    def scan(*a):
        return ops.cross_selective_scan(**dict(zip(names, a, strict=True)))

    assert torch.autograd.gradcheck(scan, tuple(x.values()))


def test_cross_selective_scan_of_a_log_A_equals_the_scan_of_minus_its_exp():
    """A_is_log: the op takes log(-A) (VMamba's A_logs) and returns its gradient: the same as -exp outside the op."""
    x = cross_inputs(batch=1, channels=2, d_state=2, height=3, width=4, requires_grad=True)
    a_log = torch.log(-x['A']).detach().requires_grad_()
    names = list(x)

    def scan(a, a_is_log, *others):
        return ops.cross_selective_scan(**dict(zip(names, others, strict=True)), A=a, A_is_log=a_is_log)

    others = tuple(v for k, v in x.items() if k != 'A')
    names.remove('A')
    inside = scan(a_log, True, *others)
    outside = scan(-torch.exp(a_log), False, *others)
    assert torch.allclose(inside, outside, rtol=1e-12, atol=0)
    g = torch.randn_like(inside)
    grads_inside = torch.autograd.grad(inside, (a_log, *others), g)
    grads_outside = torch.autograd.grad(outside, (a_log, *others), g)
    for name, a, b in zip(['A_log', *names], grads_inside, grads_outside, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13), name
    assert torch.autograd.gradcheck(lambda a, *o: scan(a, True, *o), (a_log, *others))


def test_inference_path_equals_autograd_path():
    x = random_scan_inputs(2, 4, 2, 33, 2, dtype=torch.float32)
    with torch.no_grad():
        y_plain = reference.selective_scan(**x)
    y_autograd = reference.selective_scan(**{k: v.clone().requires_grad_() for k, v in x.items()})
    assert torch.equal(y_plain, y_autograd.detach())


def test_dispatch_on_cpu_and_errors():
    x = torch.randn(1, 2, 3, 4)
    assert torch.equal(ops.cross_scan(x, backend='reference'), reference.cross_scan(x))
    with pytest.raises(ValueError, match='Unknown ops backend'):
        ops.cross_scan(x, backend='cuda-magic')
    with pytest.raises(RuntimeError, match='cannot be used'):
        ops.cross_scan(x, backend='triton')
    assert set(ops.backend_status()) == set(ops.BACKENDS) and ops.backend_status()['reference'] == 'available'


def test_cross_selective_scan_with_low_rank_delta():
    x = cross_inputs(batch=2, channels=3, d_state=2, height=4, width=5)
    rank = 2
    low = torch.randn(2, 4, rank, 4, 5, dtype=torch.float64)
    weight = torch.randn(4, 3, rank, dtype=torch.float64)
    full = torch.einsum('bkrhw,kcr->bkchw', low, weight)
    expected = ops.cross_selective_scan(**{**x, 'delta': full})
    assert rel_l2(ops.cross_selective_scan(**{**x, 'delta': low}, delta_weight=weight), expected) <= 1e-12
    with pytest.raises(ValueError, match='delta_weight must be'):
        ops.cross_selective_scan(**{**x, 'delta': low}, delta_weight=weight[:, :2])
    with pytest.raises(ValueError, match='rank'):
        ops.cross_selective_scan(**x, delta_weight=weight)


def test_cross_selective_scan_low_rank_gradcheck():
    x = cross_inputs(batch=1, channels=2, d_state=1, height=3, width=3, requires_grad=True)
    x['delta'] = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    names = [*x, 'delta_weight']
    weight = (torch.randn(4, 2, 2, dtype=torch.float64) * 0.5).requires_grad_()

    def scan(*a):
        return ops.cross_selective_scan(**dict(zip(names, a, strict=True)))

    assert torch.autograd.gradcheck(scan, (*x.values(), weight))


def test_use_backend_is_scoped():
    x = torch.randn(1, 2, 3, 4)
    with ops.use_backend('triton'), pytest.raises(RuntimeError, match='cannot be used'):
        ops.cross_scan(x)
    assert torch.equal(ops.cross_scan(x), reference.cross_scan(x))


def test_use_backend_rejects_an_unknown_name_and_nests():
    with pytest.raises(ValueError, match='Unknown ops backend'):
        with ops.use_backend('cuda-magic'):
            pass
    x = torch.randn(1, 2, 3, 4)
    u, A, b = torch.randn(1, 4, 6), -torch.ones(4, 1), torch.randn(1, 1, 1, 6)
    with ops.use_backend('shapes'):
        assert not ops.selective_scan(u, u, A, b, b).any()  # the 'shapes' scans compute nothing: zeros
        with ops.use_backend('reference'):
            assert ops.selective_scan(u, u, A, b, b).any()
        assert not ops.selective_scan(u, u, A, b, b).any()
        assert torch.equal(ops.cross_scan(x), reference.cross_scan(x))  # its other ops are the reference's
    assert ops.selective_scan(u, u, A, b, b).any()


@pytest.mark.parametrize('shape,weight,bias', [((2, 3, 8), (7,), (8,)), ((2, 3, 8), (8,), (4, 2)),
                                                ((2, 0), (0,), (0,)), ((), (1,), (1,))])
def test_layer_norm_rejects_parameters_that_do_not_match_the_last_dim(shape, weight, bias):
    """The fast kernel would read past a short weight: every backend refuses, naming the shapes."""
    with pytest.raises(ValueError, match='weight and bias of shape'):
        ops.layer_norm(torch.randn(shape), torch.ones(weight), torch.zeros(bias))


@pytest.mark.parametrize('x_shape,weight_shape,bias_shape,message', [
    ((2, 8, 5, 6), (8, 1, 3, 3), None, r'weight of shape \(6, 1, K, K\)'),  # an NCHW x: its last dim is read as C
    ((2, 5, 5, 8), (8, 1, 2, 2), None, 'K odd'),
    ((2, 5, 5, 8), (8, 3, 3), None, r'weight of shape \(8, 1, K, K\)'),
    ((2, 5, 5, 8), (8, 1, 3, 3), (4,), r'bias of shape \(8,\)'),
    ((5, 5, 8), (8, 1, 3, 3), None, r'channel-last map \(B, H, W, C\)')])
def test_depthwise_conv_silu_rejects_shapes_it_cannot_take(x_shape, weight_shape, bias_shape, message):
    """Wrong layouts and parameter shapes are refused with what was expected, on every backend."""
    bias = None if bias_shape is None else torch.zeros(bias_shape)
    with pytest.raises(ValueError, match=message):
        ops.depthwise_conv_silu(torch.randn(x_shape), torch.ones(weight_shape), bias)


@pytest.mark.parametrize('bias', [True, False])
def test_depthwise_conv_silu_equals_conv2d_then_silu(bias):
    """The reference op is SS2D's nn.Conv2d (depthwise, padding 1) and SiLU on the channel-last map, in fp32 and under
    bf16 autocast (weight and bias rounded as autocast rounds them), gradients included."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(12, 12, kernel_size=3, padding=1, groups=12, bias=bias)
    x = torch.randn(2, 6, 7, 12, requires_grad=True)
    for autocast in (False, True):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            source = x.bfloat16() if autocast else x
            expected = F.silu(conv(source.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
            actual = ops.depthwise_conv_silu(source, conv.weight, conv.bias)
        assert actual.dtype == expected.dtype and torch.equal(actual, expected)
        grads = torch.autograd.grad(actual.float().square().sum(), [x, *conv.parameters()])
        expected_grads = torch.autograd.grad(expected.float().square().sum(), [x, *conv.parameters()])
        for got, want in zip(grads, expected_grads, strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize('branch_shape,weight,mask_shape,message', [
    ((2, 3, 7), 8, None, r"branch of the residual's shape \(2, 3, 8\)"),
    ((2, 3, 8), 7, None, r'weight and bias of shape \(8,\)'),
    ((2, 3, 8), 8, (3,), r'one mask entry per sample: shape \(2,\)')])
def test_add_layer_norm_rejects_shapes_it_cannot_take(branch_shape, weight, mask_shape, message):
    mask = None if mask_shape is None else torch.ones(mask_shape)
    with pytest.raises(ValueError, match=message):
        ops.add_layer_norm(torch.randn(2, 3, 8), torch.randn(branch_shape), torch.ones(weight), torch.zeros(weight),
                           mask=mask)
