"""mmvmamba.engine.grad_strides: gradients arrive with their parameter's strides (DDP's bucket layout)."""
import torch
import torch.nn as nn

from mmvmamba.engine.grad_strides import _with_parameter_strides, align_grad_strides
from mmvmamba.models import VMamba
from tests.test_vmamba_backbone import SMALL_V2


def test_every_vmamba_gradient_has_its_parameters_strides():
    """The depthwise convolution runs on a channels-last input; with the hooks, no gradient's strides differ from
    its parameter's, so DDP copies every gradient into its bucket without the stride warning."""
    torch.manual_seed(0)
    model = VMamba(arch=SMALL_V2)
    hooked = align_grad_strides(model)
    assert hooked >= len(SMALL_V2['depths'])  # at least each block's (C, 1, 3, 3) depthwise weight
    sum(out.sum() for out in model(torch.randn(2, 3, 64, 64))).backward()
    mismatched = [(name, param.stride(), param.grad.stride()) for name, param in model.named_parameters()
                  if param.grad.stride() != param.stride()]
    assert not mismatched


def test_depthwise_weight_gradient_is_reviewed_without_a_copy():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    align_grad_strides(conv)
    channels_last_input = torch.randn(2, 5, 5, 4).permute(0, 3, 1, 2)
    conv(channels_last_input).sum().backward()
    expected = torch.nn.grad.conv2d_weight(channels_last_input, conv.weight.shape, torch.ones(2, 4, 5, 5), padding=1,
                                           groups=4)
    assert conv.weight.grad.stride() == conv.weight.stride() == (9, 9, 3, 1)
    torch.testing.assert_close(conv.weight.grad, expected)


def test_only_strides_of_size_one_dimensions_are_reviewed():
    """A gradient whose strides differ only where the size is 1 becomes a view of the same memory with the
    parameter's strides; one whose layout really differs is returned as it is (autograd copies it into the
    parameter's layout)."""
    param = nn.Parameter(torch.zeros(4, 1, 3, 3))
    values = torch.randn(4, 1, 3, 3)
    channels_last = torch.empty_strided((4, 1, 3, 3), (9, 1, 3, 1)).copy_(values)
    viewed = _with_parameter_strides(param, channels_last)
    assert viewed.stride() == (9, 9, 3, 1) and viewed.data_ptr() == channels_last.data_ptr()
    assert torch.equal(viewed, values)
    transposed = torch.randn(3, 1, 3, 4).permute(3, 1, 2, 0)
    assert _with_parameter_strides(param, transposed) is transposed
