"""Gradients with their parameter's strides, so that DistributedDataParallel takes them without its stride warning.

A convolution whose input is channels-last returns its weight gradient channels-last as well, on CPU (oneDNN) and
on CUDA (cuDNN). VMamba's depthwise convolution runs on a permuted ``(B, H, W, C)`` tensor, which is channels-last,
so the gradient of its ``(C, 1, k, k)`` weight comes back with strides ``(k*k, 1, k, 1)`` where the weight has
``(k*k, k*k, k, 1)``. The two differ only in the stride of a dimension of size 1: the same elements at the same
offsets. Autograd's layout contract ignores such strides and stores the gradient as it comes, but DDP compares every
stride with its bucket view (made with the parameter's strides) and warns once per process: "Grad strides do not
match bucket view strides". The same holds for any weight with a dimension of size 1, such as a ``1 x 1`` kernel
fed a channels-last input.

:func:`align_grad_strides` re-views such gradients with their parameter's strides before they are accumulated: a
view of the same memory, no copy. Gradients whose layout really differs are left alone; autograd copies those into
the parameter's layout itself.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _with_parameter_strides(param: nn.Parameter, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` viewed with ``param``'s strides when the two layouts differ only in dimensions of size 1."""
    strides = param.stride()
    if grad.layout != torch.strided or grad.stride() == strides:
        return grad
    layouts = zip(grad.shape, grad.stride(), strides, strict=True)
    if any(size != 1 and ours != theirs for size, ours, theirs in layouts):
        return grad
    return grad.as_strided(grad.shape, strides)


def align_grad_strides(model: nn.Module) -> int:
    """Hook every trainable parameter of ``model`` that has a dimension of size 1 (the only ones whose gradients can
    differ in strides and still be stored as they come) so that its gradients arrive with its own strides; returns
    the number of parameters hooked. Call it once, on the model or its DDP wrapper, before training."""
    hooked = 0
    for param in model.parameters():
        if param.requires_grad and param.dim() > 1 and 1 in param.shape:
            param.register_hook(lambda grad, param=param: _with_parameter_strides(param, grad))
            hooked += 1
    return hooked
