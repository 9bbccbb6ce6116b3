"""VMamba: the Visual State Space Model (Liu et al., NeurIPS 2024) as one backbone class with presets.

Every released model is a preset of :class:`VMamba` (``arch='tiny'`` ...); any field of a preset can be overridden and
``arch`` may be a dict that defines a custom model. Parameter names and shapes are the authors', so their released
checkpoints load unchanged (see :mod:`mmvmamba.models.checkpoint`). Features are kept channel-last (B, H, W, C)
inside the network; the outputs are NCHW feature maps at strides 4, 8, 16 and 32.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from mmvmamba.ops import add_layer_norm, cross_selective_scan, depthwise_conv_silu, layer_norm

ROUTES = 4  # cross-scan directions
MIN_INPUT_SIZE = 32  # one stride of the last stage

ARCH_FIELDS = ('depths', 'embed_dim', 'd_state', 'ssm_ratio', 'gated', 'conv_bias', 'mlp_ratio', 'downsample',
               'patch_embed', 'drop_path_rate')

_VANILLA = dict(d_state=16, ssm_ratio=2.0, gated=True, conv_bias=True, mlp_ratio=0.0, downsample='v1',
                patch_embed='v1')
_V2 = dict(d_state=1, gated=False, conv_bias=False, mlp_ratio=4.0, downsample='v3', patch_embed='v2')

ARCH_PRESETS: dict[str, dict[str, Any]] = {
    'vanilla-tiny': dict(_VANILLA, depths=(2, 2, 9, 2), embed_dim=96, drop_path_rate=0.2),
    'vanilla-small': dict(_VANILLA, depths=(2, 2, 27, 2), embed_dim=96, drop_path_rate=0.3),
    'vanilla-base': dict(_VANILLA, depths=(2, 2, 27, 2), embed_dim=128, drop_path_rate=0.6),
    'tiny-s2l5': dict(_V2, depths=(2, 2, 5, 2), embed_dim=96, ssm_ratio=2.0, drop_path_rate=0.2),
    'small-s2l15': dict(_V2, depths=(2, 2, 15, 2), embed_dim=96, ssm_ratio=2.0, drop_path_rate=0.3),
    'base-s2l15': dict(_V2, depths=(2, 2, 15, 2), embed_dim=128, ssm_ratio=2.0, drop_path_rate=0.6),
    'tiny-s1l8': dict(_V2, depths=(2, 2, 8, 2), embed_dim=96, ssm_ratio=1.0, drop_path_rate=0.2),
    'small-s1l20': dict(_V2, depths=(2, 2, 20, 2), embed_dim=96, ssm_ratio=1.0, drop_path_rate=0.3),
    'base-s1l20': dict(_V2, depths=(2, 2, 20, 2), embed_dim=128, ssm_ratio=1.0, drop_path_rate=0.5),
}
# the names the authors' detection and segmentation configs use
ARCH_ALIASES = {'tiny': 'tiny-s1l8', 'small': 'small-s2l15', 'base': 'base-s2l15'}


def resolve_arch(arch: str | dict, **overrides: Any) -> dict[str, Any]:
    """The full, validated field dict of a preset name or custom dict, with ``overrides`` applied."""
    if isinstance(arch, str):
        name = ARCH_ALIASES.get(arch, arch)
        if name not in ARCH_PRESETS:
            choices = sorted(ARCH_PRESETS) + sorted(ARCH_ALIASES)
            raise ValueError(f'Unknown VMamba arch {arch!r}; choose one of {choices} or pass a dict with the fields '
                             f'{list(ARCH_FIELDS)}.')
        fields = dict(ARCH_PRESETS[name])
    elif isinstance(arch, dict):
        unknown = set(arch) - set(ARCH_FIELDS)
        if unknown:
            raise ValueError(f'Unknown VMamba arch fields {sorted(unknown)}; valid fields are {list(ARCH_FIELDS)}.')
        missing = set(ARCH_FIELDS) - set(arch) - set(overrides)
        if missing:
            raise ValueError(f'A custom VMamba arch must give every field; missing {sorted(missing)}.')
        fields = dict(arch)
    else:
        raise TypeError(f'arch must be a preset name or a dict, got {type(arch).__name__}')
    fields.update({k: v for k, v in overrides.items() if v is not None})
    _validate_arch(fields)
    fields['depths'] = tuple(fields['depths'])
    return fields


def _validate_arch(f: dict[str, Any]) -> None:
    def fail(field: str, expected: str) -> None:
        raise ValueError(f'VMamba arch field {field}={f[field]!r} is invalid: expected {expected}.')

    if (not isinstance(f['depths'], Sequence) or len(f['depths']) != 4
            or not all(isinstance(d, int) and d >= 1 for d in f['depths'])):
        fail('depths', 'four positive ints, one per stage')
    if not isinstance(f['embed_dim'], int) or f['embed_dim'] < 2 or f['embed_dim'] % 2:
        fail('embed_dim', 'an even int >= 2')
    if not isinstance(f['d_state'], int) or f['d_state'] < 1:
        fail('d_state', 'an int >= 1')
    if not isinstance(f['ssm_ratio'], (int, float)) or int(f['ssm_ratio'] * f['embed_dim']) < 1:
        fail('ssm_ratio', 'a positive number (d_inner = int(ssm_ratio * dim) >= 1)')
    if not isinstance(f['mlp_ratio'], (int, float)) or f['mlp_ratio'] < 0:
        fail('mlp_ratio', 'a number >= 0 (0 disables the MLP)')
    if not isinstance(f['drop_path_rate'], (int, float)) or not 0 <= f['drop_path_rate'] < 1:
        fail('drop_path_rate', 'a number in [0, 1)')
    for field in ('gated', 'conv_bias'):
        if not isinstance(f[field], bool):
            fail(field, 'True or False')
    if f['downsample'] not in ('v1', 'v3'):
        fail('downsample', "'v1' (patch merging) or 'v3' (3x3 stride-2 conv)")
    if f['patch_embed'] not in ('v1', 'v2'):
        fail('patch_embed', "'v1' (4x4 stride-4 conv) or 'v2' (two 3x3 stride-2 convs)")


class Permute(nn.Module):
    """Tensor.permute as a module, so that Sequential indices match the authors' checkpoint keys."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class DropPath(nn.Module):
    """Stochastic depth per sample, applied where the branch joins the residual stream (:meth:`add`)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def mask(self, residual: torch.Tensor) -> tuple[torch.Tensor | None, float]:
        """A training step's per-sample keep mask (B,) and 1 / keep, or (None, 1.0) where nothing is dropped."""
        if self.drop_prob == 0.0 or not self.training:
            return None, 1.0
        keep = 1.0 - self.drop_prob
        return residual.new_empty(residual.shape[0]).bernoulli_(keep), 1.0 / keep

    def add(self, residual: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """residual + DropPath(branch) in one kernel: the per-sample keep mask and 1 / keep are applied inside
        ``addcmul``."""
        mask, value = self.mask(residual)
        if mask is None:
            return residual + branch
        return torch.addcmul(residual, branch, mask.view(-1, *(1,) * (branch.dim() - 1)), value=value)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dim on mmvmamba's LayerNorm op (one Triton kernel on CUDA), same parameters.

    Under autocast the output is float32, as autocast makes ``F.layer_norm``'s, or, with ``linear_input``, the
    autocast dtype: what the Linear that follows casts it to, without a float32 tensor and a cast in between.
    """

    def __init__(self, dim: int, linear_input: bool = False):
        super().__init__(dim)
        self.linear_input = linear_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps, self._out_dtype(x))

    def add_forward(self, residual: torch.Tensor, branch: torch.Tensor, mask: torch.Tensor | None = None,
                    mask_value: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, this norm of s) for the residual sum s = residual + mask_value * mask[i] * branch (DropPath's, see
        :meth:`DropPath.mask`): the add and the norm in one operator (:func:`mmvmamba.ops.add_layer_norm`)."""
        return add_layer_norm(residual, branch, self.weight, self.bias, self.eps, self._out_dtype(residual), mask,
                              mask_value)

    def _out_dtype(self, x: torch.Tensor) -> torch.dtype:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device) if self.linear_input else torch.float32
        return x.dtype


def _has_symbolic_sizes(example_inputs: list) -> bool:
    """Whether a graph's example inputs (fake tensors and sizes) carry symbolic sizes: a dynamic-shape compile."""
    return any(isinstance(x, torch.SymInt) or isinstance(x, torch.Tensor) and any(isinstance(d, torch.SymInt)
                                                                                 for d in x.shape)
               for x in example_inputs)


def inductor_recomputing_views(graph: torch.fx.GraphModule, example_inputs: list, mode: str | None = None,
                               options: dict[str, Any] | None = None) -> Callable:
    """``torch.compile``'s inductor backend, with autograd's partitioner recomputing views in the backward instead of
    saving them (``torch._functorch.config.recompute_views``, for this compilation only) and without inductor's layout
    optimization; ``options`` (inductor config patches) override both config settings below.

    Under dynamic image sizes inductor (torch 2.11 to 2.14) cannot order the symbolic strides of a saved view (the
    depthwise conv's channel-last input, permuted to NCHW: "cannot determine truth value of Relational"); a view costs
    nothing to recompute. The layout optimization (``layout_optimization``, on for static-size training graphs with
    convolutions) gives every 4-D tensor near a convolution PyTorch's channels-last strides, which for this backbone's
    channel-last (B, H, W, C) activations puts H innermost: the scan's output and chunk states are copied into that
    layout and back in every block (about 160 extra kernels a VMamba-T training step). A graph with symbolic sizes is
    also compiled without the memory-coalescing analysis of inductor's Triton tiling
    (``triton.coalesce_tiling_analysis``): on torch 2.11 it fails an assertion with no message on this backbone's
    graphs (2.14.1 compiles them).
    """
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx
    patches = {'layout_optimization': False,
               **({'triton.coalesce_tiling_analysis': False} if _has_symbolic_sizes(example_inputs) else {}),
               **(list_mode_options(mode) if mode not in (None, 'default') else {}), **(options or {})}
    with torch._functorch.config.patch(recompute_views=True):
        return compile_fx(graph, example_inputs, config_patches=patches)


def compile_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """``torch.compile`` keyword arguments for the backbone from the user's (``mode``, ``dynamic``, ``options``...):
    the default inductor backend becomes :func:`inductor_recomputing_views`, any other backend is left as given."""
    arguments = dict(options)
    if arguments.get('backend', 'inductor') == 'inductor':
        arguments['backend'] = inductor_recomputing_views
    return arguments


def _float32(t: torch.Tensor) -> torch.Tensor:
    """t in float32 (the scan's A, D and bias when the model was cast to a 16-bit dtype); no call when it is."""
    return t if t.dtype == torch.float32 else t.float()


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


class SS2D(nn.Module):
    """2D selective scan: in_proj -> depthwise conv -> four-route selective scan -> out_norm (-> gate) -> out_proj.

    Input and output are channel-last (B, H, W, C). ``conv2d`` holds the depthwise convolution's parameters (the
    authors' keys); it runs, with the SiLU after it, as one operator (:func:`mmvmamba.ops.depthwise_conv_silu`).
    """

    def __init__(self, dim: int, d_state: int, ssm_ratio: float, gated: bool, conv_bias: bool,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_floor: float = 1e-4):
        super().__init__()
        self.d_inner = d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(dim / 16)
        self.gated = gated
        self.in_proj = nn.Linear(dim, d_inner * (2 if gated else 1), bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=3, padding=1, groups=d_inner, bias=conv_bias)
        # PyTorch's default Linear init, one projection per route
        self.x_proj_weight = nn.Parameter(
            torch.empty(ROUTES, dt_rank + 2 * d_state, d_inner).uniform_(-d_inner ** -0.5, d_inner ** -0.5))
        self.dt_projs_weight = nn.Parameter(
            torch.empty(ROUTES, d_inner, dt_rank).uniform_(-dt_rank ** -0.5, dt_rank ** -0.5))
        dt = torch.exp(torch.rand(ROUTES, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_projs_bias = nn.Parameter(_inverse_softplus(dt.clamp(min=dt_floor)))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(
            ROUTES * d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(ROUTES * d_inner))
        self.out_norm = LayerNorm(d_inner, linear_input=True)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        if self.gated:
            x, z = x.chunk(2, dim=-1)
        x = depthwise_conv_silu(x, self.conv2d.weight, self.conv2d.bias).permute(0, 3, 1, 2)
        y = self.out_norm(self.scan(x)).to(x.dtype)
        if self.gated:
            y = y * F.silu(z)
        return self.out_proj(y)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """The selective-scan core on a (B, d_inner, H, W) map: :meth:`project`, then :meth:`selective_scan`."""
        return self.selective_scan(x, *self.project(x))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_proj of the four routes: the rank-``dt_rank`` delta (B, 4, dt_rank, H, W), B and C (B, 4, d_state, H, W).

        The per-route projections act on positions only, so this is one matmul for all four routes on the un-routed
        map; each route reads its slice in its own order inside ``cross_selective_scan``.
        """
        batch, _, height, width = x.shape
        n, r = self.d_state, self.dt_rank
        x_dbl = F.linear(x.permute(0, 2, 3, 1), self.x_proj_weight.flatten(0, 1))
        return x_dbl.view(batch, height, width, ROUTES, r + 2 * n).permute(0, 3, 4, 1, 2).split([r, n, n], 2)

    def selective_scan(self, x: torch.Tensor, dt_low: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """dt_proj and the four-route selective scan of ``x`` (B, d_inner, H, W) with the outputs of :meth:`project`;
        returns channel-last (B, H, W, d_inner) in float32 (under autocast too), as the authors' model gives it to
        out_norm: the routes are summed in float32 and normalised before any rounding, and no cast runs in between
        (out_norm writes its output in the Linear's dtype and keeps its normalised rows in that dtype for the
        backward)."""
        batch, _, height, width = x.shape
        y = cross_selective_scan(x, dt_low, _float32(self.A_logs), b, c, _float32(self.Ds),
                                 _float32(self.dt_projs_bias).flatten(), delta_softplus=True, float32_output=True,
                                 delta_weight=self.dt_projs_weight, A_is_log=True)
        return y.transpose(1, 2).reshape(batch, height, width, self.d_inner)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2, channel-last."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(norm(x))), then x + DropPath(MLP(norm2(x))) when the preset has an MLP."""

    def __init__(self, dim: int, drop_path: float, d_state: int, ssm_ratio: float, gated: bool, conv_bias: bool,
                 mlp_ratio: float):
        super().__init__()
        self.norm = LayerNorm(dim, linear_input=True)
        self.op = SS2D(dim, d_state, ssm_ratio, gated, conv_bias)
        self.drop_path = DropPath(drop_path)
        self.mlp_ratio = mlp_ratio
        if mlp_ratio > 0:
            self.norm2 = LayerNorm(dim, linear_input=True)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.op(self.norm(x))
        if self.mlp_ratio == 0:
            return self.drop_path.add(x, branch)
        x, normed = self.norm2.add_forward(x, branch, *self.drop_path.mask(x))  # the first residual add and norm2
        return self.drop_path.add(x, self.mlp(normed))


class PatchMerging(nn.Module):
    """Swin patch merging (downsample v1): pad odd sizes, concat 2x2 neighbours, norm(4C), Linear(4C -> 2C)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = LayerNorm(4 * dim, linear_input=True)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def _conv_downsample(dim: int, out_dim: int) -> nn.Sequential:
    """Downsample v3: 3x3 stride-2 conv then norm (keys .1 and .3)."""
    return nn.Sequential(Permute(0, 3, 1, 2), nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1),
                         Permute(0, 2, 3, 1), LayerNorm(out_dim))


def _patch_embed(version: str, in_channels: int, dim: int) -> nn.Sequential:
    """v1: 4x4 stride-4 conv, norm (keys .0, .2); v2: two 3x3 stride-2 convs with norms and GELU (.0 .2 .5 .7)."""
    if version == 'v1':
        return nn.Sequential(nn.Conv2d(in_channels, dim, kernel_size=4, stride=4), Permute(0, 2, 3, 1),
                             LayerNorm(dim))
    return nn.Sequential(
        nn.Conv2d(in_channels, dim // 2, kernel_size=3, stride=2, padding=1), Permute(0, 2, 3, 1),
        LayerNorm(dim // 2), Permute(0, 3, 1, 2), nn.GELU(),
        nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1), Permute(0, 2, 3, 1), LayerNorm(dim))


class VSSStage(nn.Module):
    """The blocks of one stage and the downsample that follows them (Identity after the last stage)."""

    def __init__(self, blocks: list[VSSBlock], downsample: nn.Module):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample


@MODELS.register_module()
class VMamba(BaseModule):
    """VMamba backbone for classification (mmpretrain), detection (mmdet) and segmentation (mmseg).

    Args:
        arch: preset name (``'tiny'``, ``'small'``, ``'base'``, ``'tiny-s1l8'``, ``'vanilla-tiny'``, ... see
            ``ARCH_PRESETS`` and ``ARCH_ALIASES``) or a dict giving every field of ``ARCH_FIELDS``.
        in_channels: input image channels.
        out_indices: stages whose (normed) features are returned, each with its own output norm ``outnorm{i}``.
            For classification use ``(3,)``: ``outnorm3`` is the authors' ``classifier.norm``.
        frozen_stages: freeze the patch embedding (``>= 0``) and stages ``0 .. frozen_stages - 1`` (-1: nothing).
        with_cp: gradient checkpointing per block (saves memory, costs a second forward).
        compile: ``torch.compile`` the backbone's forward (``True``, or a dict of ``torch.compile`` options such as
            ``dict(mode='max-autotune-no-cudagraphs')``): the backbone is one graph, and the compiler fuses the
            elementwise work around the scans. Its first iterations compile (about a minute per new input shape on a
            GPU; sizes then become dynamic); the rest of a detector or segmentor stays eager.
        pretrained: path of a checkpoint, shorthand for ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, key='auto')``; key picks 'model', 'model_ema' or
            'state_dict' in the file ('auto': 'state_dict', else 'model'). Loading is strict (see ``load_checkpoint``).
        **arch_overrides: any field of ``ARCH_FIELDS`` (e.g. ``drop_path_rate=0.3``) overriding the preset.
    """

    def __init__(self, arch: str | dict = 'tiny', in_channels: int = 3, out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, with_cp: bool = False, compile: bool | dict = False,
                 pretrained: str | None = None, init_cfg: dict | None = None, **arch_overrides: Any):
        unknown = set(arch_overrides) - set(ARCH_FIELDS)
        if unknown:
            raise TypeError(f'VMamba got unknown arguments {sorted(unknown)}; arch fields that can be overridden are '
                            f'{list(ARCH_FIELDS)}.')
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('Give either pretrained= or init_cfg=, not both.')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        if init_cfg is not None and init_cfg.get('type') != 'Pretrained':
            raise ValueError(f"VMamba supports init_cfg=dict(type='Pretrained', checkpoint=...) only; got {init_cfg}.")
        super().__init__(init_cfg=init_cfg)
        self.arch = resolve_arch(arch, **arch_overrides)
        depths, dim0 = self.arch['depths'], self.arch['embed_dim']
        self.dims = [dim0 * 2 ** i for i in range(4)]
        out_indices = tuple(out_indices)
        if not out_indices or any(i not in range(4) for i in out_indices) or len(set(out_indices)) != len(out_indices):
            raise ValueError(f'out_indices must be distinct stage indices in 0..3, got {out_indices}.')
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f'frozen_stages must be in -1..4, got {frozen_stages}.')
        self.in_channels = in_channels
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp

        self.patch_embed = _patch_embed(self.arch['patch_embed'], in_channels, dim0)
        drop_rates = torch.linspace(0, self.arch['drop_path_rate'], sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            rates, drop_rates = drop_rates[:depth], drop_rates[depth:]
            blocks = [VSSBlock(self.dims[i], rate, self.arch['d_state'], self.arch['ssm_ratio'], self.arch['gated'],
                               self.arch['conv_bias'], self.arch['mlp_ratio']) for rate in rates]
            if i == 3:
                downsample = nn.Identity()
            elif self.arch['downsample'] == 'v1':
                downsample = PatchMerging(self.dims[i], self.dims[i + 1])
            else:
                downsample = _conv_downsample(self.dims[i], self.dims[i + 1])
            self.layers.append(VSSStage(blocks, downsample))
        for i in out_indices:
            self.add_module(f'outnorm{i}', LayerNorm(self.dims[i]))
        self.apply(self._init_module)
        self._freeze_stages()
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f'compile must be True, False or a dict of torch.compile options, got {compile!r}.')
        if compile:
            self.compile(**compile_arguments({} if compile is True else compile))

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def init_weights(self) -> None:
        """Load the ``Pretrained`` checkpoint of ``init_cfg`` (strictly); without one keep the initialisation."""
        if self.init_cfg is None:
            return
        from mmvmamba.models.checkpoint import load_checkpoint
        load_checkpoint(self, self.init_cfg['checkpoint'], key=self.init_cfg.get('key', 'auto'))
        self._is_init = True

    def _freeze_stages(self) -> None:
        frozen = [self.patch_embed] if self.frozen_stages >= 0 else []
        for i in range(max(self.frozen_stages, 0)):
            frozen.append(self.layers[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'outnorm{i}'))
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> VMamba:
        super().train(mode)
        self._freeze_stages()
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        if not x.is_floating_point():
            raise ValueError(f'VMamba expects floating-point images, got {x.dtype}; convert them with images.float() '
                             f'(and normalise them, as the data preprocessor does) before the backbone.')
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'VMamba expects images (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}; '
                             f'set in_channels to your channel count.')
        if min(x.shape[2:]) < MIN_INPUT_SIZE:
            raise ValueError(f'VMamba needs H and W >= {MIN_INPUT_SIZE} (the stride of the last stage), got '
                             f'{tuple(x.shape[2:])}; resize or pad the input.')

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, C, H, W) -> tuple of NCHW maps, one per ``out_indices``, of spatial size ceil(H / 2**(i+2))."""
        self._check_input(x)
        if self.arch['patch_embed'] == 'v1':
            x = F.pad(x, (0, -x.shape[3] % 4, 0, -x.shape[2] % 4))
        # channels-last convolutions give channel-last features: the norms after them need no copy
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        checkpointing = self.with_cp and self.training and torch.is_grad_enabled()
        outs = []
        for i, layer in enumerate(self.layers):
            for block in layer.blocks:
                x = cp.checkpoint(block, x, use_reentrant=False) if checkpointing else block(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'outnorm{i}')(x).permute(0, 3, 1, 2).contiguous())
            x = layer.downsample(x)
        return tuple(outs)
