"""The operators' forward and backward as pairs that run either as PyTorch custom operators (``torch.library``), for
``torch.compile`` and tracing, or as a plain ``autograd.Function``, in eager mode.

Each pair takes the backend's name as an argument (:mod:`.dispatch` chooses it); its forward returns what its
backward needs (the Triton scans' chunk states; nothing for the reference, which recomputes) as an extra output.
:func:`run` picks the way: under ``torch.compile``, a JIT trace or a dispatch mode the custom operators, which the
compiler keeps whole in its graph (with fake implementations for shapes and strides), a trace records as one node and
a mode sees with their arguments; otherwise the
same functions through an ``autograd.Function``, because a custom operator's Python dispatch costs several times a
kernel launch on the host, paid a few hundred times a training step; and without autograd, the forward alone. The
Triton backend's fake implementations run its own Python code with no kernel launched (its ``layout_only``), so they
cannot disagree with it; the reference's layouts are simple and written here. Optional tensor results (the gradients
of an absent D, delta_bias or delta_weight) come back as empty tensors.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import dispatch, reference
from .layout import gradient_layouts

# the operators' namespace: mmvmamba, or that of this package imported under another name (the repository's ops/
# alone, or another checkout's beside this one), so that two copies never register the same operator
NAMESPACE = 'mmvmamba' if __package__ == 'mmvmamba.ops' else __package__.replace('.', '_')
SCAN_BACKENDS = ('reference', 'triton', 'mamba_ssm', 'shapes')  # the backends whose scans run as these pairs
_NONE = (0,)  # the shape of an absent optional result


def _module(backend: str):
    return dispatch.module(backend)


def _fake_run(backend: str, fn: str, *args):
    """The backend's ``fn`` run for layouts only: allocations as in a real run, no kernel started."""
    module = _module(backend)
    with module.layout_only():
        return getattr(module, fn)(*args)


def _or_empty(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(_NONE) if t is None else t


def _or_none(t: Tensor, present: bool) -> Tensor | None:
    return t if present else None


def _without_aliases(fn: Callable) -> Callable:
    """``fn`` as a custom operator may run it: its outputs may not alias its inputs or each other, so an output that
    shares memory with an input or an earlier output comes back as a copy. The eager path calls ``fn`` itself and
    keeps such views (gradients carved from one zeroed buffer, for one memset)."""
    @functools.wraps(fn)
    def run(*args):
        outputs = fn(*args)
        single = isinstance(outputs, Tensor)
        seen = {a.untyped_storage().data_ptr() for a in args if isinstance(a, Tensor) and a.numel()}
        unaliased = []
        for t in (outputs,) if single else outputs:
            if t.numel():
                if t.untyped_storage().data_ptr() in seen:
                    t = t.clone()
                seen.add(t.untyped_storage().data_ptr())
            unaliased.append(t)
        return unaliased[0] if single else tuple(unaliased)
    return run


@dataclasses.dataclass
class Pair:
    """An operator's forward and backward: the custom operators, and the plain functions behind them.

    ``setup(ctx, inputs, output)`` saves what the backward needs; ``grads(ctx, backward, *output_grads)`` returns the
    inputs' gradients, calling ``backward`` (the custom backward operator, or its plain function). The first
    ``differentiable`` outputs are differentiable (the rest are for the backward); in eager mode the gradient of one
    that was not used is None.
    """
    forward: Callable
    backward: Callable
    setup: Callable
    grads: Callable
    differentiable: int = 1
    op: object = None
    backward_op: object = None

    def register(self, name: str, forward_fake: Callable, backward_fake: Callable) -> None:
        """Make the custom operators ``NAMESPACE::name`` and ``NAMESPACE::name_backward``, with autograd."""
        self.op = torch.library.custom_op(f'{NAMESPACE}::{name}', mutates_args=())(_without_aliases(self.forward))
        self.backward_op = torch.library.custom_op(f'{NAMESPACE}::{name}_backward', mutates_args=())(
            _without_aliases(self.backward))
        self.op.register_fake(forward_fake)
        self.backward_op.register_fake(backward_fake)
        self.op.register_autograd(lambda ctx, *grads: self.grads(ctx, self.backward_op, *grads),
                                  setup_context=self.setup)


class _Eager(torch.autograd.Function):
    """A :class:`Pair` as a plain autograd function (the eager path)."""

    @staticmethod
    def forward(ctx, pair: Pair, *inputs):
        output = pair.forward(*inputs)
        pair.setup(ctx, inputs, output)
        ctx.pair = pair
        if isinstance(output, tuple):
            ctx.mark_non_differentiable(*output[pair.differentiable:])
            # the extra outputs get no gradient: None, not zero tensors (a memset each, full-size for x-hat)
            ctx.set_materialize_grads(False)
        return output

    @staticmethod
    def backward(ctx, *grads):
        if all(g is None for g in grads[:ctx.pair.differentiable]):  # no gradient reached a differentiable output
            return (None,) * len(ctx.needs_input_grad)
        return None, *ctx.pair.grads(ctx, ctx.pair.backward, *grads)


def run(pair: Pair, needs_grad: bool, *inputs):
    """``pair``'s forward on ``inputs``: the custom operator under ``torch.compile``, a JIT trace or a dispatch mode
    (tools that watch the operators), else the plain forward, through an autograd function when ``needs_grad``."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _get_current_dispatch_mode() is not None:
        return pair.op(*inputs)
    if needs_grad:
        return _Eager.apply(pair, *inputs)
    return pair.forward(*inputs)


# --- selective scan -------------------------------------------------------------------------------------------------

def _selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                    delta_bias: Tensor | None, delta_softplus: bool, float32_output: bool, save_states: bool,
                    backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """y, the last state and the backward's residual."""
    if backend == 'shapes':
        return tuple(t.zero_() for t in _selective_scan_fake(u, delta, A, B, C, D, delta_bias, delta_softplus,
                                                             float32_output, save_states, 'reference'))
    if backend == 'reference':
        y, last = reference.selective_scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output)
        return y, last, u.new_empty(_NONE)
    return _module(backend).selective_scan_forward(u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output,
                                                   save_states)


def _selective_scan_fake(u, delta, A, B, C, D, delta_bias, delta_softplus, float32_output, save_states, backend):
    if backend in ('reference', 'shapes'):
        wide = reference._compute_dtype(u, delta, A, B, C)
        return (u.new_empty(u.shape, dtype=wide if float32_output else u.dtype),
                u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=wide), u.new_empty(_NONE))
    return _fake_run(backend, 'selective_scan_forward', u, delta, A, B, C, D, delta_bias, delta_softplus,
                     float32_output, save_states)


def _selective_scan_backward(grad_y: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             D: Tensor | None, delta_bias: Tensor | None, residual: Tensor, delta_softplus: bool,
                             backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if backend == 'reference':
        grads = reference.selective_scan_backward(grad_y, u, delta, A, B, C, D, delta_bias, delta_softplus)
    else:
        grads = _module(backend).selective_scan_backward(grad_y, u, delta, A, B, C, D, delta_bias, residual,
                                                         delta_softplus)
    return tuple(_or_empty(g, u) for g in grads)


def _selective_scan_backward_fake(grad_y, u, delta, A, B, C, D, delta_bias, residual, delta_softplus, backend):
    if backend == 'reference':
        grads = gradient_layouts((u, delta, A, B, C, D, delta_bias))
    else:
        grads = _fake_run(backend, 'selective_scan_backward', grad_y, u, delta, A, B, C, D, delta_bias, residual,
                          delta_softplus)
    return tuple(_or_empty(g, u) for g in grads)


def _selective_scan_setup(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, _, _, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[2])
    ctx.delta_softplus, ctx.backend = delta_softplus, backend
    ctx.has_d, ctx.has_bias = D is not None, delta_bias is not None


def _selective_scan_grads(ctx, backward, grad_y, grad_last, grad_residual):
    du, ddelta, dA, dB, dC, dD, dbias = backward(grad_y, *ctx.saved_tensors, ctx.delta_softplus, ctx.backend)
    return (du, ddelta, dA, dB, dC, _or_none(dD, ctx.has_d), _or_none(dbias, ctx.has_bias), None, None, None, None)


selective_scan = Pair(_selective_scan, _selective_scan_backward, _selective_scan_setup, _selective_scan_grads)
selective_scan.register('selective_scan', _selective_scan_fake, _selective_scan_backward_fake)


# --- fused cross selective scan -------------------------------------------------------------------------------------

def _merged_output(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, C, L) as a transposed view of a channel-last (B, L, C) buffer, the fused op's output layout."""
    batch, channels, height, width = x.shape
    return x.new_empty((batch, height * width, channels), dtype=dtype).transpose(1, 2)


def _cross_selective_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                          delta_bias: Tensor | None, delta_weight: Tensor | None, delta_softplus: bool,
                          float32_output: bool, A_is_log: bool, save_states: bool, backend: str
                          ) -> tuple[Tensor, Tensor]:
    """The merged output (B, C, L) and the backward's residual."""
    if backend == 'shapes':
        return tuple(t.zero_() for t in _cross_selective_scan_fake(x, delta, A, B, C, D, delta_bias, delta_weight,
                                                                   delta_softplus, float32_output, A_is_log,
                                                                   save_states, 'reference'))
    if backend == 'reference':
        out = reference.cross_selective_scan_forward(x, delta, A, B, C, D, delta_bias, delta_weight, delta_softplus,
                                                     float32_output, A_is_log)
        return out, x.new_empty(_NONE)
    return _module(backend).cross_selective_scan_forward(x, delta, A, B, C, D, delta_bias, delta_weight,
                                                         delta_softplus, float32_output, save_states, A_is_log)


def _cross_selective_scan_fake(x, delta, A, B, C, D, delta_bias, delta_weight, delta_softplus, float32_output,
                               A_is_log, save_states, backend):
    if backend in ('reference', 'shapes'):
        wide = reference._compute_dtype(x, delta, A, B, C)
        return _merged_output(x, wide if float32_output else x.dtype), x.new_empty(_NONE)
    return _fake_run(backend, 'cross_selective_scan_forward', x, delta, A, B, C, D, delta_bias, delta_weight,
                     delta_softplus, float32_output, save_states, A_is_log)


def _cross_selective_scan_backward(grad_out: Tensor, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                   D: Tensor | None, delta_bias: Tensor | None, delta_weight: Tensor | None,
                                   residual: Tensor, delta_softplus: bool, A_is_log: bool, backend: str
                                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if backend == 'reference':
        grads = reference.cross_selective_scan_backward(grad_out, x, delta, A, B, C, D, delta_bias, delta_weight,
                                                        delta_softplus, A_is_log)
    else:
        grads = _module(backend).cross_selective_scan_backward(grad_out, x, delta, A, B, C, D, delta_bias,
                                                               delta_weight, residual, delta_softplus, A_is_log)
    return tuple(_or_empty(g, x) for g in grads)


def _cross_selective_scan_backward_fake(grad_out, x, delta, A, B, C, D, delta_bias, delta_weight, residual,
                                        delta_softplus, A_is_log, backend):
    if backend == 'reference':
        grads = gradient_layouts((x, delta, A, B, C, D, delta_bias, delta_weight))
    else:
        grads = _fake_run(backend, 'cross_selective_scan_backward', grad_out, x, delta, A, B, C, D, delta_bias,
                          delta_weight, residual, delta_softplus, A_is_log)
    return tuple(_or_empty(g, x) for g in grads)


def _cross_setup(ctx, inputs, output):
    x, delta, A, B, C, D, delta_bias, delta_weight, delta_softplus, _, A_is_log, _, backend = inputs
    ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, delta_weight, output[1])
    ctx.delta_softplus, ctx.A_is_log, ctx.backend = delta_softplus, A_is_log, backend
    ctx.present = tuple(t is not None for t in (D, delta_bias, delta_weight))


def _cross_grads(ctx, backward, grad_out, grad_residual):
    grads = backward(grad_out, *ctx.saved_tensors, ctx.delta_softplus, ctx.A_is_log, ctx.backend)
    optional = tuple(_or_none(g, present) for g, present in zip(grads[5:], ctx.present, strict=True))
    return (*grads[:5], *optional, None, None, None, None, None)


cross_selective_scan = Pair(_cross_selective_scan, _cross_selective_scan_backward, _cross_setup, _cross_grads)
cross_selective_scan.register('cross_selective_scan', _cross_selective_scan_fake,
                              _cross_selective_scan_backward_fake)


# --- cross-scan and cross-merge -------------------------------------------------------------------------------------

def _cross_scan(x: Tensor, backend: str) -> Tensor:
    return _module(backend).cross_scan_forward(x)


def _cross_scan_backward(grad: Tensor, per_route: bool, height: int, width: int, backend: str) -> Tensor:
    return _module(backend).cross_scan_backward(grad, per_route, height, width)


def _cross_scan_setup(ctx, inputs, output):
    x, backend = inputs
    ctx.per_route, ctx.hw, ctx.backend = x.dim() == 5, tuple(x.shape[-2:]), backend


def _cross_scan_grads(ctx, backward, grad):
    return backward(grad, ctx.per_route, *ctx.hw, ctx.backend), None


cross_scan = Pair(_cross_scan, _cross_scan_backward, _cross_scan_setup, _cross_scan_grads)
cross_scan.register('cross_scan', lambda x, backend: _fake_run(backend, 'cross_scan_forward', x),
                    lambda grad, per_route, height, width, backend: _fake_run(
                        backend, 'cross_scan_backward', grad, per_route, height, width))


def _cross_merge(y: Tensor, backend: str) -> Tensor:
    return _module(backend).cross_merge_forward(y)


def _cross_merge_backward(grad: Tensor, height: int, width: int, backend: str) -> Tensor:
    return _module(backend).cross_merge_backward(grad, height, width)


def _cross_merge_setup(ctx, inputs, output):
    y, backend = inputs
    ctx.hw, ctx.backend = tuple(y.shape[-2:]), backend


def _cross_merge_grads(ctx, backward, grad):
    return backward(grad, *ctx.hw, ctx.backend), None


cross_merge = Pair(_cross_merge, _cross_merge_backward, _cross_merge_setup, _cross_merge_grads)
cross_merge.register('cross_merge', lambda y, backend: _fake_run(backend, 'cross_merge_forward', y),
                     lambda grad, height, width, backend: _fake_run(
                         backend, 'cross_merge_backward', grad, height, width))


# --- LayerNorm ------------------------------------------------------------------------------------------------------

def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, out_dtype: torch.dtype,
                backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y, the rows' float32 mean and 1/std, and x-hat in y's dtype or an empty tensor (what the backward keeps
    instead of a wider x, see the Triton backend's ``saves_xhat``)."""
    return _module(backend).layer_norm_forward(x, weight, bias, eps, out_dtype)


def _layer_norm_backward(grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, x_is_xhat: bool,
                         dx_dtype: torch.dtype, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return _module(backend).layer_norm_backward(grad, x, weight, mean, rstd, x_is_xhat, dx_dtype)


def _layer_norm_setup(ctx, inputs, output):
    x, weight, _, _, out_dtype, backend = inputs
    _, mean, rstd, xhat = output
    ctx.x_is_xhat = _module(backend).saves_xhat(x.dtype, out_dtype)
    ctx.save_for_backward(xhat if ctx.x_is_xhat else x, weight, mean, rstd)
    ctx.dx_dtype, ctx.backend = x.dtype, backend


def _layer_norm_grads(ctx, backward, grad, grad_mean, grad_rstd, grad_xhat):
    return (*backward(grad, *ctx.saved_tensors, ctx.x_is_xhat, ctx.dx_dtype, ctx.backend), None, None, None)


layer_norm = Pair(_layer_norm, _layer_norm_backward, _layer_norm_setup, _layer_norm_grads)
layer_norm.register('layer_norm', lambda x, weight, bias, eps, out_dtype, backend: _fake_run(
    backend, 'layer_norm_forward', x, weight, bias, eps, out_dtype),
                    lambda grad, x, weight, mean, rstd, x_is_xhat, dx_dtype, backend: _fake_run(
                        backend, 'layer_norm_backward', grad, x, weight, mean, rstd, x_is_xhat, dx_dtype))


# --- depthwise convolution and SiLU ---------------------------------------------------------------------------------

def _depthwise_conv_silu(x: Tensor, weight: Tensor, bias: Tensor | None, backend: str) -> Tensor:
    return _module(backend).depthwise_conv_silu_forward(x, weight, bias)


def _depthwise_conv_silu_backward(grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None,
                                  backend: str) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_or_empty(g, x) for g in _module(backend).depthwise_conv_silu_backward(grad, x, weight, bias))


def _depthwise_conv_silu_setup(ctx, inputs, output):
    x, weight, bias, backend = inputs
    ctx.save_for_backward(x, weight, bias)  # not the output: the backward recomputes what it needs from x
    ctx.backend, ctx.has_bias = backend, bias is not None


def _depthwise_conv_silu_grads(ctx, backward, grad):
    dx, dweight, dbias = backward(grad, *ctx.saved_tensors, ctx.backend)
    return dx, dweight, _or_none(dbias, ctx.has_bias), None


depthwise_conv_silu = Pair(_depthwise_conv_silu, _depthwise_conv_silu_backward, _depthwise_conv_silu_setup,
                           _depthwise_conv_silu_grads)
depthwise_conv_silu.register(
    'depthwise_conv_silu',
    lambda x, weight, bias, backend: _fake_run(backend, 'depthwise_conv_silu_forward', x, weight, bias),
    lambda grad, x, weight, bias, backend: tuple(
        _or_empty(g, x) for g in _fake_run(backend, 'depthwise_conv_silu_backward', grad, x, weight, bias)))


# --- residual add and LayerNorm -------------------------------------------------------------------------------------

def _add_layer_norm(residual: Tensor, branch: Tensor, mask: Tensor | None, mask_value: float, weight: Tensor,
                    bias: Tensor, eps: float, out_dtype: torch.dtype, backend: str
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The residual sum, its norm, the rows' mean and 1/std, and x-hat or an empty tensor (see :func:`_layer_norm`)."""
    return _module(backend).add_layer_norm_forward(residual, branch, mask, mask_value, weight, bias, eps, out_dtype)


def _add_layer_norm_backward(dsum: Tensor | None, dy: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor,
                             x_is_xhat: bool, mask: Tensor | None, mask_value: float, residual_dtype: torch.dtype,
                             branch_dtype: torch.dtype, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _module(backend).add_layer_norm_backward(dsum, dy, x, weight, mean, rstd, x_is_xhat, mask, mask_value,
                                                    residual_dtype, branch_dtype)


def _add_layer_norm_setup(ctx, inputs, output):
    residual, branch, mask, mask_value, weight, _, _, out_dtype, backend = inputs
    total, _, mean, rstd, xhat = output
    ctx.x_is_xhat = _module(backend).saves_xhat(residual.dtype, out_dtype)
    ctx.save_for_backward(xhat if ctx.x_is_xhat else total, weight, mean, rstd, mask)
    ctx.mask_value, ctx.backend, ctx.out_dtype = mask_value, backend, out_dtype
    ctx.residual_dtype, ctx.branch_dtype = residual.dtype, branch.dtype


def _add_layer_norm_grads(ctx, backward, grad_sum, grad_y, grad_mean, grad_rstd, grad_xhat):
    x, weight, mean, rstd, mask = ctx.saved_tensors
    if grad_y is None:  # the norm's output unused (eager): the gradient it would pass back is zero
        grad_y = torch.zeros(x.shape, device=x.device, dtype=ctx.out_dtype)
    dresidual, dbranch, dweight, dbias = backward(grad_sum, grad_y, x, weight, mean, rstd, ctx.x_is_xhat, mask,
                                                  ctx.mask_value, ctx.residual_dtype, ctx.branch_dtype, ctx.backend)
    return dresidual, dbranch, None, None, dweight, dbias, None, None, None


add_layer_norm = Pair(_add_layer_norm, _add_layer_norm_backward, _add_layer_norm_setup, _add_layer_norm_grads,
                      differentiable=2)
add_layer_norm.register(
    'add_layer_norm',
    lambda residual, branch, mask, mask_value, weight, bias, eps, out_dtype, backend: _fake_run(
        backend, 'add_layer_norm_forward', residual, branch, mask, mask_value, weight, bias, eps, out_dtype),
    lambda dsum, dy, x, weight, mean, rstd, x_is_xhat, mask, mask_value, residual_dtype, branch_dtype, backend:
        _fake_run(backend, 'add_layer_norm_backward', dsum, dy, x, weight, mean, rstd, x_is_xhat, mask, mask_value,
                  residual_dtype, branch_dtype))
