"""FLOPs of VMamba models as the authors counted them (see docs/design.md, "FLOPs rule").

MMEngine's counter (``mmengine.analysis``, a port of fvcore) traces the model and counts convolutions, linear
layers, matmuls, einsums, norms and pooling, one multiply-add as one FLOP. The selective scan is invisible to it: our
reference scan is plain elementwise tensor work. The scans are custom operators (:mod:`mmvmamba.ops.library`), so every
call appears in the traced graph as one ``mmvmamba::selective_scan`` or ``mmvmamba::cross_selective_scan`` node, and
:func:`selective_scan_flop_jit` counts it by Albert Gu's rule (``9 * B * L * D * N + B * L * D``, D the channels of
the call, ``4 * d_inner`` for a cross scan).

Not counted (0 FLOPs), as in the authors' numbers: elementwise ops and activations (add, mul, SiLU, GELU, softplus,
exp, the gate), reductions other than pooling, the cross-scan/merge layout changes, padding, and copies.
"""
from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import einsum_flop_jit, get_shape

from mmvmamba.ops import library, use_backend

SCAN_NODES = (f'{library.NAMESPACE}::selective_scan', f'{library.NAMESPACE}::cross_selective_scan')
NOT_COUNTED = ('elementwise ops and activations (add, mul, SiLU, GELU, softplus, exp, the gate z), reductions other '
               'than pooling, cross-scan/merge (layout only), padding, copies and shape ops')


def selective_scan_flops(batch: int, length: int, channels: int, d_state: int) -> int:
    """Albert Gu's count for one selective scan (mamba issue 110): 9*B*L*D*N + B*L*D (the D skip term)."""
    return 9 * batch * length * channels * d_state + batch * length * channels


def selective_scan_flop_jit(inputs: list, outputs: list) -> Counter:
    """FLOP handle for the :data:`SCAN_NODES`: inputs are (u or x, delta, A, ...) with u (B, D, L) or x (B, C, H, W),
    A (D, N); D is A's rows, so a cross scan counts its four routes. A cross scan given a rank-R delta and its
    ``delta_weight`` (4, C, R) (its eighth input) also counts that projection, as the matmul it is (dt_proj)."""
    x, a = get_shape(inputs[0]), get_shape(inputs[2])
    counts = Counter({'selective_scan': selective_scan_flops(x[0], math.prod(x[2:]), a[0], a[1])})
    weight = get_shape(inputs[7]) if len(x) == 4 else None
    if weight is not None and len(weight) == 3:
        counts['dt_proj'] = x[0] * math.prod(x[2:]) * math.prod(weight)
    return counts


def exact_einsum_flop_jit(inputs: list, outputs: list) -> int | float:
    """Multiply-adds of a two-operand einsum, exactly (MMEngine's handle rounds through numpy to 4 digits)."""
    equation = inputs[0].toIValue().replace(' ', '')
    shapes = [get_shape(v) for v in inputs[1].node().inputs()]
    if len(shapes) != 2 or '.' in equation or '->' not in equation:
        return einsum_flop_jit(inputs, outputs)
    sizes = {}
    for term, shape in zip(equation.split('->')[0].split(','), shapes, strict=True):
        sizes.update(zip(term, shape, strict=True))
    return math.prod(sizes.values())


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """``scaled_dot_product_attention``: Q K^T and the weighted sum of V, one multiply-add each per element."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


@dataclass
class FlopReport:
    """Totals of one count; ``by_operator`` and ``not_counted`` are over the whole model."""

    flops: int
    params: int
    by_operator: dict[str, int]
    scan_calls: int
    not_counted: dict[str, int] = field(default_factory=dict)
    analyzer: FlopAnalyzer | None = field(default=None, repr=False)

    @property
    def scan_flops(self) -> int:
        return self.by_operator.get('selective_scan', 0)


def flop_analyzer(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                  scan_handle: Callable = selective_scan_flop_jit) -> FlopAnalyzer:
    """MMEngine's analyzer with handles for the scan, exact einsums and fused attention (for baselines), its
    warnings off (:func:`count_flops` reports the unsupported ops)."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**dict.fromkeys(SCAN_NODES, scan_handle), **{
        'aten::einsum': exact_einsum_flop_jit, 'aten::scaled_dot_product_attention': sdpa_flop_jit})
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    return analyzer


def count_flops(model: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], run_scans: bool = False
                ) -> FlopReport:
    """FLOPs and parameters of ``model(*inputs)`` in eval mode, each scan call counted by :func:`selective_scan_flops`.

    ``model`` must take and return tensors (wrap detectors and segmentors: :class:`mmvmamba.utils.config.TensorModel`).
    The trace runs the model once; by default the scans return zeros instead of running (``run_scans=False``), which
    changes no count except where a model's work depends on values (the number of proposals a detector keeps).
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    calls = 0

    def scan_handle(inputs: list, outputs: list) -> Counter:
        nonlocal calls
        calls += 1
        return selective_scan_flop_jit(inputs, outputs)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (contextlib.nullcontext() if run_scans else use_backend('shapes')):
            analyzer = flop_analyzer(model, inputs, scan_handle)
            by_operator = {name: int(v) for name, v in analyzer.by_operator().items()}
    finally:
        model.train(was_training)
    return FlopReport(flops=sum(by_operator.values()), params=parameter_count(model)[''], by_operator=by_operator,
                      scan_calls=calls, not_counted=dict(analyzer.unsupported_ops()), analyzer=analyzer)
