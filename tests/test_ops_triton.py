"""The Triton backend against the float64 reference, forward and every input gradient.

CPU (CI): the kernels run under Triton's interpreter on tiny shapes. TRITON_INTERPRET must be set before triton is
imported, so each interpreter test runs this file as a script in a fresh process (``python tests/test_ops_triton.py
CASE``). GPU (marked ``gpu``): dtypes fp32/bf16/fp16, d_state 1..64, lengths 15..65536, channel-last inputs as the
model passes them. Outputs of the backend are allocated NaN-filled during its calls, so an element a kernel fails to
write shows up as NaN.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import os
import pathlib
import subprocess
import sys
import types

import pytest
import torch

if __name__ == '__main__':  # an interpreter case: set before triton is imported; the plain ops package, no mmengine
    os.environ['TRITON_INTERPRET'] = '1'
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    import ops
else:
    try:
        from mmvmamba import ops
    except ImportError:  # no mmengine (the bare GPU machine): the ops package alone, from the repository root
        import ops

triton = pytest.importorskip('triton')
tl = triton.language
reference = importlib.import_module(f'{ops.__name__}.reference')
triton_backend = importlib.import_module(f'{ops.__name__}.triton_backend')
scan_kernels = importlib.import_module(f'{ops.__name__}.triton_backend.scan_kernels')
fused_scan = importlib.import_module(f'{ops.__name__}.triton_backend.cross_selective_scan')
# the public ops with the Triton backend chosen
tb = types.SimpleNamespace(**{name: functools.partial(getattr(ops, name), backend='triton')
                              for name in ('cross_scan', 'cross_merge', 'selective_scan', 'cross_selective_scan',
                                           'layer_norm', 'add_layer_norm', 'depthwise_conv_silu')})

ROOT = pathlib.Path(__file__).resolve().parent.parent
_seeds = itertools.count(20260)
FP32_TOL, HALF_TOL = 1e-4, 1e-2


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def tolerance(dtype: torch.dtype) -> float:
    return FP32_TOL if dtype == torch.float32 else HALF_TOL


@contextlib.contextmanager
def poisoned_allocations():
    """torch.empty / empty_like / new_empty return NaN-filled tensors inside the block."""
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def poison(t):
        return t.fill_(float('nan')) if t.is_floating_point() else t

    torch.empty = lambda *a, **k: poison(empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(empty_like(*a, **k))
    torch.Tensor.new_empty = lambda self, *a, **k: poison(new_empty(self, *a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = empty, empty_like, new_empty


def make_generator(device: str) -> torch.Generator:
    return torch.Generator(device).manual_seed(next(_seeds))


def scan_inputs(batch, channels, n_state, length, groups, dtype, device, with_d_and_bias=True, softplus=True):
    """Random (never zero) inputs of the selective scan; u, delta, B, C in ``dtype``, A, D, bias float32."""
    g = make_generator(device)

    def rand(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=device) * scale + shift).to(dt)

    x = dict(u=rand(batch, channels, length), delta=rand(batch, channels, length, scale=0.5),
             A=-torch.rand(channels, n_state, generator=g, device=device) * 2 - 0.1,
             B=rand(batch, groups, n_state, length), C=rand(batch, groups, n_state, length),
             D=rand(channels, dt=torch.float32) if with_d_and_bias else None,
             delta_bias=rand(channels, scale=0.5, shift=-1.0, dt=torch.float32) if with_d_and_bias else None)
    if not softplus:  # dt = delta + bias itself: keep it positive, as softplus would
        x['delta'] = x['delta'].abs() + 0.05
        if with_d_and_bias:
            x['delta_bias'] = x['delta_bias'].abs()
    return x


def cross_inputs(batch, channels, n_state, height, width, dtype, device, dt_rank=3, low_rank=False):
    """Inputs laid out as the model produces them: channel-last x, B/C (and the rank-R delta) as views of one
    (B, H, W, 4, R + 2N) projection; delta from an einsum, or with ``low_rank`` the rank-R delta and its
    float32 ``delta_weight`` (4, C, R) as the model passes them."""
    g = make_generator(device)

    def rand(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, device=device) * scale + shift

    x_dbl = rand(batch, height, width, 4, dt_rank + 2 * n_state).to(dtype)
    dt_low, b, c = x_dbl.split([dt_rank, n_state, n_state], dim=-1)
    weight = rand(4, channels, dt_rank, scale=0.5)
    inputs = dict(x=rand(batch, height, width, channels).to(dtype).permute(0, 3, 1, 2),
                  delta=torch.einsum('bhwkr,kdr->bkdhw', dt_low, weight.to(dtype)),
                  A=-torch.rand(4 * channels, n_state, generator=g, device=device) * 2 - 0.1,
                  B=b.permute(0, 3, 4, 1, 2), C=c.permute(0, 3, 4, 1, 2), D=rand(4 * channels),
                  delta_bias=rand(4 * channels, scale=0.5, shift=-1.0))
    if low_rank:
        inputs.update(delta=dt_low.permute(0, 3, 4, 1, 2), delta_weight=weight)
    return inputs


def leaves(x: dict) -> dict:
    return {k: (None if v is None else v.detach().clone().requires_grad_()) for k, v in x.items()}


def float64_leaves(x: dict) -> dict:
    return {k: (None if v is None else v.detach().double().requires_grad_()) for k, v in x.items()}


def run_backend(fn, x: dict, grad_seed: int, **kwargs):
    """Forward and backward of ``fn`` under poisoned allocations, upstream gradient drawn from ``grad_seed``;
    returns (output, upstream gradient, leaves)."""
    xs = leaves(x)
    with poisoned_allocations():
        out = fn(**xs, **kwargs)
    y = out[0] if isinstance(out, tuple) else out
    g = torch.Generator(y.device.type).manual_seed(grad_seed)
    gy = torch.randn(y.shape, generator=g, device=y.device).to(y.dtype)
    with poisoned_allocations():
        y.backward(gy)
    return out, gy, xs


def check_against_reference(fn, ref_fn, x: dict, dtype: torch.dtype, **kwargs):
    """``fn`` (Triton) vs ``ref_fn`` in float64 from the same inputs: output and every input gradient."""
    out, gy, xs = run_backend(fn, x, next(_seeds), **kwargs)
    y = out[0] if isinstance(out, tuple) else out
    xr = float64_leaves(x)
    out_ref = ref_fn(**xr, **kwargs)
    y_ref = out_ref[0] if isinstance(out_ref, tuple) else out_ref
    y_ref.backward(gy.double())
    tol = tolerance(dtype)
    errors = {'y': rel_l2(y, y_ref)}
    if isinstance(out, tuple):
        errors['last_state'] = rel_l2(out[1], out_ref[1])
    for name, leaf in xs.items():
        if leaf is not None:
            assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype, name
            errors[f'd{name}'] = rel_l2(leaf.grad, xr[name].grad)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f'rel. L2 errors over {tol}: {bad} (all: {errors})'
    return y


def check_selective_scan(batch, channels, n_state, length, groups, dtype, device, with_d_and_bias=True,
                         softplus=True, float32_output=True):
    x = scan_inputs(batch, channels, n_state, length, groups, dtype, device, with_d_and_bias, softplus)
    y = check_against_reference(tb.selective_scan, reference.selective_scan, x, dtype,
                                delta_softplus=softplus, return_last_state=True, float32_output=float32_output)
    assert y.dtype == (torch.float32 if float32_output else dtype) and y.shape == (batch, channels, length)


def check_cross_selective_scan(batch, channels, n_state, height, width, dtype, device, low_rank=False, dt_rank=3):
    x = cross_inputs(batch, channels, n_state, height, width, dtype, device, dt_rank=dt_rank, low_rank=low_rank)
    y = check_against_reference(tb.cross_selective_scan, reference.cross_selective_scan, x, dtype)
    if low_rank:  # as the model calls it: A given as A_logs, -exp(A_logs) taken (and differentiated) in the kernels
        check_against_reference(tb.cross_selective_scan, reference.cross_selective_scan,
                                {**x, 'A': torch.log(-x['A'])}, dtype, A_is_log=True)
    assert y.dtype == torch.float32 and y.shape == (batch, channels, height * width)
    assert y.transpose(1, 2).is_contiguous()  # a view of a channel-last (B, L, C) buffer
    # the fused kernel equals the composition of the unfused Triton operators (forward and gradients)
    seed = next(_seeds)
    fused = run_backend(tb.cross_selective_scan, x, seed)
    composed = run_backend(composed_cross_selective_scan, x, seed)
    tol = tolerance(dtype)
    assert rel_l2(fused[0], composed[0]) <= tol
    for name in x:
        assert rel_l2(fused[2][name].grad, composed[2][name].grad) <= tol, name


def composed_cross_selective_scan(x, delta, A, B, C, D, delta_bias, delta_weight=None):
    batch, channels, height, width = x.shape
    if delta_weight is not None:
        delta = torch.einsum('bkrhw,kcr->bkchw', delta, delta_weight.to(delta.dtype))
    ys = tb.selective_scan(tb.cross_scan(x).flatten(1, 2), tb.cross_scan(delta).flatten(1, 2), A, tb.cross_scan(B),
                           tb.cross_scan(C), D, delta_bias)
    return tb.cross_merge(ys.view(batch, 4, channels, height, width))


def check_cross_scan_and_merge(batch, channels, height, width, dtype, device):
    g = make_generator(device)
    x = torch.randn(batch, height, width, channels, generator=g, device=device).to(dtype).permute(0, 3, 1, 2)
    per_route = torch.randn(batch, 4, channels, height, width, generator=g, device=device).to(dtype)
    for fn, ref_fn, inp in ((tb.cross_scan, reference.cross_scan, dict(x=x)),
                            (tb.cross_scan, reference.cross_scan, dict(x=per_route)),
                            (tb.cross_merge, reference.cross_merge, dict(y=per_route))):
        y = check_against_reference(fn, ref_fn, inp, dtype)
        assert y.dtype == dtype and y.is_contiguous()


@triton.jit
def _look_back_probe(flag_ptr, agg_ptr, incl_ptr, out_ptr, s, n_seg, REVERSE: tl.constexpr, NP: tl.constexpr,
                     BC: tl.constexpr, WIN: tl.constexpr):
    offs = tl.arange(0, NP)[:, None] * BC + tl.arange(0, BC)[None, :]
    carry = scan_kernels._look_back(flag_ptr, agg_ptr, incl_ptr, s, n_seg, 2 * NP * BC, NP * BC, offs, offs, offs >= 0,
                               REVERSE, NP, BC, WIN)
    tl.store(out_ptr + offs, carry)


def check_look_back(device, n_seg=9, n_pad=2, bc=4, win=4):
    """Chunks published as aggregates or inclusive states in every mix: the carry composes the aggregates up to
    the nearest inclusive state, through several windows. (In a real launch under the interpreter, programs run one
    after another, so the predecessor is always inclusive and only this probe reaches the aggregate path.)"""
    g = make_generator(device)
    for reverse, trial in itertools.product((False, True), range(4)):
        flags = torch.randint(1, 3, (n_seg,), generator=g, device=device, dtype=torch.int32)
        if trial < 2:
            flags.fill_(1)  # aggregates only: the composition must run back to the row's start (or end)
        agg = torch.rand(n_seg, 2, n_pad, bc, generator=g, device=device)
        incl = torch.randn(n_seg, n_pad, bc, generator=g, device=device)
        for s in range(n_seg):
            out = torch.full((n_pad, bc), float('nan'), device=device)
            _look_back_probe[(1,)](flags, agg, incl, out, s, n_seg, REVERSE=reverse, NP=n_pad, BC=bc, WIN=win)
            order = range(s + 1, n_seg) if reverse else range(s - 1, -1, -1)
            closer = []  # chunks between s and the nearest inclusive one, nearest first
            carry = torch.zeros(n_pad, bc, device=device)
            for j in order:
                if flags[j] == 2:
                    carry = incl[j]
                    break
                closer.append(j)
            for j in reversed(closer):
                carry = agg[j, 0] * carry + agg[j, 1]
            assert torch.allclose(out, carry, rtol=1e-5, atol=1e-6), (reverse, trial, s)


# ---------------------------------------------------------------------------------------------------------------------
# CPU: Triton's interpreter, in a fresh process


def interpreter_cross(device='cpu'):
    for shape, dtype in (((2, 3, 5, 7), torch.float32), ((1, 4, 1, 6), torch.float32), ((2, 5, 4, 3), torch.bfloat16)):
        check_cross_scan_and_merge(*shape, dtype, device)


def interpreter_scan(device='cpu'):
    check_selective_scan(1, 12, 3, 40, 1, torch.float32, device)  # 3 channel blocks, 3 chunks
    check_selective_scan(2, 4, 1, 15, 2, torch.float32, device, with_d_and_bias=False, softplus=False)
    check_selective_scan(1, 6, 2, 33, 3, torch.bfloat16, device, float32_output=False)
    check_no_grad_scan(device)


def check_no_grad_scan(device):
    """Without autograd the forward keeps no chunk states, only the final one: y and the last state still match."""
    x = scan_inputs(2, 8, 2, 37, 2, torch.float32, device)
    xc = cross_inputs(1, 4, 1, 5, 6, torch.float32, device)
    with torch.no_grad(), poisoned_allocations():
        y, last = tb.selective_scan(**x, return_last_state=True)
        out = tb.cross_selective_scan(**xc)
    y_ref, last_ref = reference.selective_scan(**{k: v.double() for k, v in x.items()}, return_last_state=True)
    assert rel_l2(y, y_ref) <= FP32_TOL and rel_l2(last, last_ref) <= FP32_TOL
    assert rel_l2(out, reference.cross_selective_scan(**{k: v.double() for k, v in xc.items()})) <= FP32_TOL


def interpreter_segments(device='cpu'):
    """Rows cut into segments chained by the look-back (a large ``programs`` makes rows too few to fill it)."""
    with triton_backend.tile_config(T=8, programs=64):  # 3 forward segments a row, 6 backward
        check_selective_scan(1, 6, 2, 45, 2, torch.float32, device)
    with triton_backend.tile_config(T=8, programs=64):
        check_cross_selective_scan(1, 3, 1, 3, 7, torch.float32, device)
    with triton_backend.tile_config(T=4, programs=64):  # whole chunks only, none partial: nothing past a row's end
        check_cross_selective_scan(1, 4, 1, 4, 6, torch.float32, device)
    with triton_backend.tile_config(T=4, S=4):  # rounds of 4 chunks; the last has a partial chunk and two past L
        check_selective_scan(1, 4, 2, 37, 1, torch.float32, device)


def interpreter_look_back(device='cpu'):
    check_look_back(device)


def interpreter_fused(device='cpu'):
    check_cross_selective_scan(1, 3, 1, 3, 5, torch.float32, device)
    check_cross_selective_scan(1, 2, 1, 1, 5, torch.float32, device)  # one image row: the column routes wrap each step
    check_cross_selective_scan(1, 2, 1, 5, 1, torch.float32, device)  # one image column


def interpreter_fused_half(device='cpu'):
    with triton_backend.tile_config(T=8):  # 3 chunks per route
        check_cross_selective_scan(1, 2, 2, 4, 5, torch.float16, device)


def interpreter_fused_low_rank(device='cpu'):
    """delta as the rank-R input of dt_proj plus its weight: expanded inside the forward kernel as it is loaded (also
    in the aggregate pass of rows cut into segments), made by a matmul for the backward, never stored; ranks of 3,
    5 (padded to a power of two inside the kernel, to 8 for the matmuls) and 8, and a rank above IN_KERNEL_RANK,
    expanded by a matmul before the forward kernel."""
    check_cross_selective_scan(2, 3, 1, 3, 4, torch.float32, device, low_rank=True)
    check_cross_selective_scan(1, 2, 2, 4, 3, torch.bfloat16, device, low_rank=True)
    check_cross_selective_scan(1, 2, 1, 3, 3, torch.bfloat16, device, low_rank=True, dt_rank=8)
    with triton_backend.tile_config(T=8, programs=64):  # several forward segments a row
        check_cross_selective_scan(1, 3, 1, 3, 7, torch.float32, device, low_rank=True, dt_rank=5)
    check_cross_selective_scan(1, 2, 1, 3, 4, torch.bfloat16, device, low_rank=True,
                               dt_rank=fused_scan.IN_KERNEL_RANK + 1)


def interpreter_fused_bfloat16_states(device='cpu'):
    """16-bit inputs: the fused op stores its chunk states in bf16 (float32 inputs in float32), and the backward,
    recomputing each chunk from a rounded state, stays within the half-precision tolerance over 3 chunks a route
    (the float16 case: interpreter_fused_half)."""
    for dtype, stored in ((torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16),
                          (torch.float32, torch.float32)):
        x = cross_inputs(1, 2, 2, 4, 5, dtype, device)
        _, states = triton_backend.cross_selective_scan_forward(**x, delta_weight=None, delta_softplus=True,
                                                                float32_output=True, save_states=True)
        assert states.dtype == stored, (dtype, states.dtype)
    with triton_backend.tile_config(T=8):
        check_cross_selective_scan(1, 2, 2, 4, 5, torch.bfloat16, device)
        check_cross_selective_scan(1, 3, 1, 5, 4, torch.bfloat16, device, low_rank=True)


def check_layer_norm(shape, dtype, out_dtype, device):
    """The Triton LayerNorm against the float64 reference: output (in ``out_dtype``) and x, weight, bias gradients."""
    g = make_generator(device)
    n = shape[-1]
    x = dict(x=torch.randn(*shape, generator=g, device=device).to(dtype),
             weight=torch.randn(n, generator=g, device=device) * 0.5 + 1,
             bias=torch.randn(n, generator=g, device=device))
    y = check_against_reference(tb.layer_norm, reference.layer_norm, x, out_dtype,
                                eps=1e-5, out_dtype=out_dtype)
    assert y.dtype == out_dtype and y.shape == shape


def check_layer_norm_keeps_no_float32_input(device):
    """float32 in, bf16 out (a norm before a Linear under autocast): the backward keeps bf16 x-hat, not float32 x."""
    x = torch.randn(4, 8, 32, device=device, requires_grad=True)
    weight, bias = torch.ones(32, device=device, requires_grad=True), torch.zeros(32, device=device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = tb.layer_norm(x, weight, bias, out_dtype=torch.bfloat16)
    kept = {(t.dtype, tuple(t.shape)) for t in saved}
    assert (torch.float32, tuple(x.shape)) not in kept and (torch.bfloat16, tuple(x.shape)) in kept, kept
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.abs().max() < 1e-2  # sum of a normalised row: zero gradient
    # the extra outputs (mean, 1/std, x-hat) get no gradient: no zero tensors are made for them in the backward
    made = {event.name for event in prof.events()}
    assert not made & {'aten::zeros', 'aten::zeros_like', 'aten::zero_'}, made


def interpreter_layer_norm(device='cpu'):
    check_layer_norm((3, 5, 96), torch.float32, torch.float32, device)  # several rows a program, padded width
    check_layer_norm((7, 33), torch.float32, torch.bfloat16, device)  # autocast: float32 in, bf16 out
    check_layer_norm((2, 3, 3072), torch.bfloat16, torch.bfloat16, device)
    check_layer_norm_keeps_no_float32_input(device)
    norm = importlib.import_module(f'{ops.__name__}.triton_backend.layer_norm')
    programs, norm._BWD_PROGRAMS = norm._BWD_PROGRAMS, 2  # each backward program walks several tiles
    try:
        check_layer_norm((9, 11, 40), torch.float32, torch.float32, device)
    finally:
        norm._BWD_PROGRAMS = programs


def check_add_layer_norm(shape, branch_dtype, out_dtype, masked, device, use_sum=True):
    """The Triton residual add + LayerNorm against the float64 reference: the sum (float32), the norm (in
    ``out_dtype``) and the gradients of residual, branch, weight and bias, from the gradients of both outputs (only
    the norm's without ``use_sum``: the sum's own gradient absent)."""
    g = make_generator(device)
    n = shape[-1]
    x = dict(residual=torch.randn(*shape, generator=g, device=device),
             branch=torch.randn(*shape, generator=g, device=device).to(branch_dtype),
             weight=torch.randn(n, generator=g, device=device) * 0.5 + 1,
             bias=torch.randn(n, generator=g, device=device))
    mask = (torch.arange(shape[0], device=device) % 2).float() if masked else None
    extra = dict(eps=1e-5, out_dtype=out_dtype, mask=mask, mask_value=1 / 0.7 if masked else 1.0)
    xs, xr = leaves(x), float64_leaves(x)
    with poisoned_allocations():
        total, normed = tb.add_layer_norm(**xs, **extra)
    total_ref, normed_ref = reference.add_layer_norm(**xr, **{**extra, 'mask': None if mask is None else mask.double(),
                                                              'out_dtype': torch.float64})
    gs = torch.randn(shape, generator=g, device=device)
    gy = torch.randn(shape, generator=g, device=device).to(out_dtype)
    outputs, grads = ([total, normed], [gs, gy]) if use_sum else ([normed], [gy])
    with poisoned_allocations():
        torch.autograd.backward(outputs, grads)
    torch.autograd.backward([total_ref, normed_ref] if use_sum else [normed_ref],
                            [gs.double(), gy.double()] if use_sum else [gy.double()])
    assert total.dtype == torch.float32 and normed.dtype == out_dtype and normed.shape == shape
    tol = tolerance(out_dtype if branch_dtype == torch.float32 else branch_dtype)
    errors = {'sum': rel_l2(total, total_ref), 'normed': rel_l2(normed, normed_ref)}
    errors.update({f'd{name}': rel_l2(xs[name].grad, xr[name].grad) for name in x})
    assert xs['branch'].grad.dtype == branch_dtype and xs['residual'].grad.dtype == torch.float32
    if masked:  # a dropped sample's branch gets no gradient
        assert not xs['branch'].grad[0].any() and xs['branch'].grad[1].any()
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f'rel. L2 errors over {tol}: {bad} (all: {errors})'


def interpreter_add_layer_norm(device='cpu'):
    """The residual add fused with the LayerNorm after it, as a VSS block with an MLP calls it: float32 residual
    stream, bf16 branch and output under autocast (DropPath's mask: every other sample dropped), float32 throughout,
    and a sum whose own gradient is absent."""
    check_add_layer_norm((2, 3, 4, 40), torch.float32, torch.float32, False, device)
    check_add_layer_norm((4, 3, 5, 24), torch.bfloat16, torch.bfloat16, True, device)
    check_add_layer_norm((2, 7, 33), torch.float32, torch.float32, True, device, use_sum=False)
    # as a custom operator under torch.compile (its fake implementation traced): equal to eager, gradients included
    x = {'residual': torch.randn(2, 3, 16, device=device), 'branch': torch.randn(2, 3, 16, device=device),
         'weight': torch.rand(16, device=device) + 0.5, 'bias': torch.randn(16, device=device)}
    mask = torch.tensor([1.0, 0.0], device=device)

    def add_norm(residual, branch, weight, bias):
        total, normed = tb.add_layer_norm(residual, branch, weight, bias, mask=mask, mask_value=2.0)
        return total.square().sum() + normed.float().sum() * 3

    results = []
    for fn in (add_norm, torch.compile(add_norm, backend='aot_eager', fullgraph=True)):
        xs = leaves(x)
        out = fn(**xs)
        results.append((out, torch.autograd.grad(out, list(xs.values()))))
    (out_eager, grads_eager), (out_compiled, grads_compiled) = results
    assert torch.equal(out_compiled, out_eager)
    for name, eager, compiled_grad in zip(x, grads_eager, grads_compiled, strict=True):
        assert torch.allclose(compiled_grad, eager, rtol=1e-6, atol=1e-6), name


def check_depthwise_conv_silu(batch, height, width, channels, size, dtype, device, bias=True, gated=False,
                              tol=None):
    """The Triton depthwise convolution + SiLU against the float64 reference (weight and bias rounded to x's dtype,
    as the op defines): output and x, weight, bias gradients. ``gated``: x is the first half of a wider map's
    channels, as SS2D's gated presets pass it (a view whose pixels are 2C apart)."""
    g = make_generator(device)
    wide = torch.randn(batch, height, width, 2 * channels if gated else channels, generator=g, device=device)
    base = wide.to(dtype).requires_grad_()
    weight = (torch.randn(channels, 1, size, size, generator=g, device=device) / size).requires_grad_()
    b = torch.randn(channels, generator=g, device=device).requires_grad_() if bias else None
    x = base[..., :channels]
    with poisoned_allocations():
        y = tb.depthwise_conv_silu(x, weight, b)
    gy = torch.randn(y.shape, generator=g, device=device).to(dtype)
    with poisoned_allocations():
        y.backward(gy)
    ref = {'x': x.detach().double().requires_grad_(), 'weight': weight.detach().to(dtype).double().requires_grad_(),
           'bias': None if b is None else b.detach().to(dtype).double().requires_grad_()}
    y_ref = reference.depthwise_conv_silu(ref['x'], ref['weight'], ref['bias'])
    y_ref.backward(gy.double())
    assert y.dtype == dtype and y.shape == (batch, height, width, channels) and y.is_contiguous()
    assert base.grad.dtype == dtype and weight.grad.dtype == torch.float32
    errors = {'y': rel_l2(y, y_ref), 'dx': rel_l2(base.grad[..., :channels], ref['x'].grad),
              'dweight': rel_l2(weight.grad, ref['weight'].grad)}
    if gated:
        assert not base.grad[..., channels:].any()
    if b is not None:
        errors['dbias'] = rel_l2(b.grad, ref['bias'].grad)
    tol = tol or tolerance(dtype)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f'rel. L2 errors over {tol}: {bad} (all: {errors})'


def check_depthwise_conv_silu_keeps_only_its_inputs(device):
    """The backward recomputes the convolution's output from x: the op keeps x, the weight and the bias, not z (the
    SiLU's input, which PyTorch's conv2d + silu keep besides x)."""
    x = torch.randn(2, 4, 5, 8, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(8, 1, 3, 3, device=device, requires_grad=True)
    bias = torch.randn(8, device=device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        tb.depthwise_conv_silu(x, weight, bias)
    assert len(saved) == 3 and {t.data_ptr() for t in saved} == {x.data_ptr(), weight.data_ptr(), bias.data_ptr()}


def interpreter_depthwise_conv(device='cpu'):
    """SS2D's depthwise conv + SiLU: tiles cut across rows and channel blocks, no bias (the v2 presets), the gated
    presets' strided input, a 5x5 kernel, one-pixel-wide and -high maps, and backward programs that walk several
    tiles each. bf16 within 2e-2 here: the interpreter rounds float32 to bf16 by truncation (the GPU rounds to
    nearest, test_depthwise_conv_silu_gpu)."""
    check_depthwise_conv_silu(2, 5, 7, 6, 3, torch.float32, device, tol=1e-5)
    check_depthwise_conv_silu(1, 3, 70, 72, 3, torch.float32, device, bias=False, tol=1e-5)
    check_depthwise_conv_silu(2, 4, 3, 8, 5, torch.float32, device, gated=True, tol=1e-5)
    check_depthwise_conv_silu(1, 1, 9, 4, 3, torch.float32, device, tol=1e-5)
    check_depthwise_conv_silu(2, 6, 1, 4, 3, torch.float32, device, tol=1e-5)
    check_depthwise_conv_silu(2, 6, 6, 8, 3, torch.bfloat16, device, tol=2e-2)
    conv = importlib.import_module(f'{ops.__name__}.triton_backend.depthwise_conv')
    programs, conv._BWD_PROGRAMS = conv._BWD_PROGRAMS, 3
    try:
        check_depthwise_conv_silu(2, 5, 4, 8, 3, torch.float32, device, tol=1e-5)
    finally:
        conv._BWD_PROGRAMS = programs
    check_depthwise_conv_silu_keeps_only_its_inputs(device)


def interpreter_compiled(device='cpu'):
    """The Triton operators as custom operators under torch.compile (their fake implementations traced, then run):
    a fused scan of A_logs, a cross-scan and -merge and a LayerNorm equal eager, outputs and every gradient. Custom
    operators may not return outputs that alias each other (the backward's gradients carved from one zeroed
    buffer)."""
    x = cross_inputs(1, 3, 1, 3, 4, torch.float32, device, low_rank=True)
    x.update(A=torch.log(-x['A']), weight=torch.rand(3, device=device) + 0.5, bias=torch.randn(3, device=device))

    def scan_norm(x, delta, A, B, C, D, delta_bias, delta_weight, weight, bias):
        y = tb.cross_selective_scan(x, delta, A, B, C, D, delta_bias, delta_weight=delta_weight, A_is_log=True)
        # and the layout operators, through a cross-scan and its merge (which sum the routes: 4 y)
        y = tb.cross_merge(tb.cross_scan(y.unflatten(2, x.shape[2:])).unflatten(3, x.shape[2:])) / 4
        return tb.layer_norm(y.transpose(1, 2), weight, bias, out_dtype=torch.bfloat16)

    compiled = torch.compile(scan_norm, backend='aot_eager', fullgraph=True)
    results = []
    for fn in (scan_norm, compiled):
        xs = leaves(x)
        out = fn(**xs)
        results.append((out, torch.autograd.grad(out.float().square().sum(), list(xs.values()))))
    (out_eager, grads_eager), (out_compiled, grads_compiled) = results
    assert torch.equal(out_compiled, out_eager)
    for name, eager, compiled_grad in zip(x, grads_eager, grads_compiled, strict=True):
        assert torch.allclose(compiled_grad, eager, rtol=1e-6, atol=1e-7), name


INTERPRETER_CASES = {f.__name__: f for f in (interpreter_cross, interpreter_scan, interpreter_segments,
                                             interpreter_look_back, interpreter_fused, interpreter_fused_half,
                                             interpreter_fused_low_rank, interpreter_fused_bfloat16_states,
                                             interpreter_layer_norm, interpreter_add_layer_norm,
                                             interpreter_depthwise_conv,
                                             interpreter_compiled)}


@pytest.mark.parametrize('case', sorted(INTERPRETER_CASES))
def test_kernels_under_the_interpreter(case):
    done = subprocess.run([sys.executable, __file__, case], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'TRITON_INTERPRET': '1'})
    assert done.returncode == 0, f'{case} failed under TRITON_INTERPRET=1:\n{done.stdout}\n{done.stderr}'
    assert f'{case}: ok' in done.stdout


def test_fp64_inputs_use_the_reference():
    x = scan_inputs(1, 4, 2, 20, 2, torch.float64, 'cpu')
    assert torch.equal(tb.selective_scan(**x), reference.selective_scan(**x))
    img = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    assert torch.equal(tb.cross_scan(img), reference.cross_scan(img))


def test_shape_errors():
    x = cross_inputs(1, 2, 1, 3, 4, torch.float32, 'cpu')
    with pytest.raises(ValueError, match='delta must be'):
        tb.cross_selective_scan(**{**x, 'delta': x['delta'][:, :3]})
    with pytest.raises(ValueError, match='A must be'):
        tb.cross_selective_scan(**{**x, 'A': x['A'][:5]})
    with pytest.raises(ValueError, match='cross_merge expects'):
        tb.cross_merge(torch.randn(1, 3, 2, 2, 2))
    s = scan_inputs(1, 4, 2, 10, 2, torch.float32, 'cpu')
    with pytest.raises(ValueError, match='do not divide'):
        tb.selective_scan(**{**s, 'B': torch.randn(1, 3, 2, 10)})


def test_forward_rounds_widen_only_for_long_rows_that_fill_the_gpu():
    assert triton_backend.scan_config(1, 96, 3136, 128 * 4).S == 8  # stage 1 at batch 128: rows fill the GPU
    assert triton_backend.scan_config(1, 192, 784, 128 * 4).S == 4  # rows shorter than 2048 steps
    assert triton_backend.scan_config(1, 96, 200 * 304, 2 * 4).S == 4  # batch 2 detection: rows cut into segments
    with triton_backend.tile_config(S=2):
        assert triton_backend.scan_config(1, 96, 3136, 128 * 4).S == 2


def test_tile_config_override_is_scoped():
    default = triton_backend.scan_config(1, 96, 3136, 512)
    with triton_backend.tile_config(T=16, WIN=3):
        assert triton_backend.scan_config(1, 96, 3136, 512).T == 16
        with triton_backend.tile_config(WIN=5):
            assert triton_backend.scan_config(1, 96, 3136, 512).WIN == 5
        assert triton_backend.scan_config(1, 96, 3136, 512).WIN == 3
    assert triton_backend.scan_config(1, 96, 3136, 512) == default
    with pytest.raises(TypeError, match='Unknown tile fields'):
        with triton_backend.tile_config(min_seg=2):
            pass


# ---------------------------------------------------------------------------------------------------------------------
# GPU

gpu = pytest.mark.gpu
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


# (batch, channels, n_state, length, groups, dtype, with_d_and_bias, softplus): every dtype, d_state 1..64, lengths
# 15..65536 (also the mamba_ssm backend's cases)
SELECTIVE_SCAN_CASES = [
    (2, 8, 1, 15, 2, F32, True, True),
    (1, 12, 4, 1000, 3, F32, True, True),
    (2, 6, 16, 64, 1, F32, False, True),
    (1, 4, 64, 3136, 2, F32, True, True),
    (1, 2, 1, 65536, 1, F32, True, True),
    (1, 6, 3, 200, 3, F32, True, False),
    (2, 16, 1, 3136, 4, BF16, True, True),
    (1, 4, 16, 65536, 2, BF16, True, True),
    (1, 8, 64, 64, 2, BF16, True, True),
    (1, 8, 4, 1000, 2, F16, True, True),
    (2, 5, 16, 15, 5, F16, False, False),
    (1, 4, 1, 65536, 4, F16, True, True),
]


@gpu
@pytest.mark.parametrize('batch,channels,n_state,length,groups,dtype,with_d_and_bias,softplus', SELECTIVE_SCAN_CASES)
def test_selective_scan_gpu(batch, channels, n_state, length, groups, dtype, with_d_and_bias, softplus):
    check_selective_scan(batch, channels, n_state, length, groups, dtype, 'cuda', with_d_and_bias, softplus)


@gpu
@pytest.mark.parametrize('T,BC,WIN,programs', [(8, 4, 2, 200_000), (8, 8, 2, 20_000), (8, 32, 16, 4_000)])
def test_selective_scan_gpu_small_tiles(T, BC, WIN, programs):
    """Many segments per row, so the look-back walks several windows of aggregates while predecessors run."""
    with triton_backend.tile_config(T=T, BC=BC, WIN=WIN, programs=programs):
        check_selective_scan(3, 40, 1, 3000, 4, F32, 'cuda')
        check_selective_scan(2, 8, 4, 517, 2, BF16, 'cuda')


@gpu
def test_selective_scan_gpu_no_grad_and_output_dtype():
    x = scan_inputs(2, 8, 4, 300, 2, BF16, 'cuda')
    with torch.no_grad():
        y = tb.selective_scan(**x, float32_output=False)
    assert y.dtype == BF16
    assert rel_l2(y, reference.selective_scan(**{k: v.double() for k, v in x.items()})) <= HALF_TOL


@gpu
@pytest.mark.parametrize('batch,channels,n_state,height,width,dtype,low_rank', [
    (2, 8, 1, 7, 9, F32, False),
    (1, 40, 1, 56, 56, F32, False),
    (2, 16, 1, 56, 56, BF16, False),
    (1, 4, 4, 200, 304, F32, False),
    (1, 6, 16, 14, 14, F16, False),
    (1, 3, 64, 7, 9, BF16, False),
    (1, 96, 1, 25, 38, BF16, False),
    (2, 8, 1, 7, 9, F32, True),
    (2, 96, 1, 28, 28, BF16, True),
    (1, 16, 16, 14, 15, F32, True),
])
def test_cross_selective_scan_gpu(batch, channels, n_state, height, width, dtype, low_rank):
    check_cross_selective_scan(batch, channels, n_state, height, width, dtype, 'cuda', low_rank)


@gpu
def test_fused_gpu_small_tiles():
    with triton_backend.tile_config(T=8, BC=4, WIN=2, programs=2_000):
        check_cross_selective_scan(2, 10, 1, 13, 11, F32, 'cuda')


@gpu
@pytest.mark.parametrize('dtype', [F32, BF16, F16])
@pytest.mark.parametrize('shape', [(2, 3, 7, 9), (1, 96, 56, 56), (1, 8, 200, 304)])
def test_cross_scan_and_merge_gpu(shape, dtype):
    check_cross_scan_and_merge(*shape, dtype, 'cuda')


@gpu
@pytest.mark.parametrize('shape,dtype,out_dtype', [((128, 56, 56, 96), F32, BF16), ((64, 14, 14, 384), F32, F32),
                                                   ((2, 7, 9, 768), BF16, BF16), ((3, 2048), F32, F16),
                                                   ((5, 3072), F32, BF16)])
def test_layer_norm_gpu(shape, dtype, out_dtype):
    check_layer_norm(shape, dtype, out_dtype, 'cuda')


@gpu
@pytest.mark.parametrize('shape,branch_dtype,out_dtype,masked', [((128, 56, 56, 96), BF16, BF16, True),
                                                                 ((64, 14, 14, 384), F32, F32, False),
                                                                 ((2, 7, 9, 768), BF16, BF16, True)])
def test_add_layer_norm_gpu(shape, branch_dtype, out_dtype, masked):
    check_add_layer_norm(shape, branch_dtype, out_dtype, masked, 'cuda')
    check_add_layer_norm(shape, branch_dtype, out_dtype, masked, 'cuda', use_sum=False)


@gpu
@pytest.mark.parametrize('batch,height,width,channels,dtype,bias,gated', [
    (2, 56, 56, 96, F32, False, False), (2, 56, 56, 96, BF16, False, False), (4, 28, 28, 192, F16, True, False),
    (2, 7, 9, 768, BF16, True, True), (1, 200, 304, 96, BF16, False, False), (3, 1, 17, 40, F32, True, False)])
def test_depthwise_conv_silu_gpu(batch, height, width, channels, dtype, bias, gated):
    """Against the float64 reference, and in 16 bits against PyTorch's own conv2d + silu in that dtype (cuDNN, as
    autocast runs them) within about a rounding."""
    check_depthwise_conv_silu(batch, height, width, channels, 3, dtype, 'cuda', bias=bias, gated=gated)
    if dtype != F32:
        g = make_generator('cuda')
        x = torch.randn(batch, height, width, channels, generator=g, device='cuda').to(dtype)
        weight = torch.randn(channels, 1, 3, 3, generator=g, device='cuda') / 3
        assert rel_l2(tb.depthwise_conv_silu(x, weight), reference.depthwise_conv_silu(x, weight)) <= 5e-3
    check_depthwise_conv_silu_keeps_only_its_inputs('cuda')


@gpu
def test_look_back_gpu():
    check_look_back('cuda')


@gpu
def test_dispatch_picks_triton_on_cuda():
    x = cross_inputs(1, 4, 1, 5, 6, F32, 'cuda')
    assert rel_l2(ops.cross_selective_scan(**x), tb.cross_selective_scan(**x)) <= 1e-6
    assert ops.dispatch.resolve('cross_selective_scan', x['x']) == 'triton'


if __name__ == '__main__':
    for name in sys.argv[1:]:
        INTERPRETER_CASES[name]()
        print(f'{name}: ok')
