"""The VMamba backbone: presets, shapes, gradients, options, checkpoints and bad input."""
import math

import pytest
import torch

from mmvmamba.models.backbones.vmamba import ARCH_ALIASES, ARCH_PRESETS, VMamba, resolve_arch
from mmvmamba.models.checkpoint import load_checkpoint, load_state_dict_strict

# Parameter counts with the 1000-class head (see docs/design.md, "Presets and parameter counts").
RELEASED_PARAMS = {
    'vanilla-tiny': 22_893_448, 'vanilla-small': 44_417_416, 'vanilla-base': 76_254_056,
    'tiny-s2l5': 30_705_832, 'small-s2l15': 50_147_752, 'base-s2l15': 88_557_800,
    'tiny-s1l8': 30_249_064, 'small-s1l20': 49_012_840, 'base-s1l20': 86_614_504,
}
SMALL_V2 = dict(depths=(1, 1, 2, 1), embed_dim=16, d_state=2, ssm_ratio=1.0, gated=False, conv_bias=False,
                mlp_ratio=2.0, downsample='v3', patch_embed='v2', drop_path_rate=0.0)
SMALL_VANILLA = dict(depths=(1, 1, 1, 1), embed_dim=16, d_state=3, ssm_ratio=2.0, gated=True, conv_bias=True,
                     mlp_ratio=0.0, downsample='v1', patch_embed='v1', drop_path_rate=0.0)


@pytest.mark.parametrize('name', sorted(RELEASED_PARAMS))
def test_released_parameter_counts(name):
    model = VMamba(name, out_indices=(3,))
    head = model.dims[3] * 1000 + 1000
    assert sum(p.numel() for p in model.parameters()) + head == RELEASED_PARAMS[name]


def test_aliases_are_the_authors_downstream_presets():
    assert ARCH_ALIASES == {'tiny': 'tiny-s1l8', 'small': 'small-s2l15', 'base': 'base-s2l15'}
    assert resolve_arch('small') == resolve_arch('small-s2l15')
    assert set(ARCH_PRESETS) == set(RELEASED_PARAMS)


@pytest.mark.parametrize('arch', [SMALL_V2, SMALL_VANILLA], ids=['v2', 'vanilla'])
@pytest.mark.parametrize('size', [(64, 64), (97, 131), (32, 33), (100, 45)])
def test_output_shapes_for_any_input_size(arch, size):
    model = VMamba(arch).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    assert len(outs) == 4
    for i, out in enumerate(outs):
        stride = 2 ** (i + 2)
        assert out.shape == (2, 16 * 2 ** i, math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def test_out_indices_select_stages_and_norms():
    model = VMamba(SMALL_V2, out_indices=(1, 3))
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 128]
    assert hasattr(model, 'outnorm1') and hasattr(model, 'outnorm3') and not hasattr(model, 'outnorm0')


@pytest.mark.parametrize('arch', [SMALL_V2, SMALL_VANILLA], ids=['v2', 'vanilla'])
def test_backward_reaches_every_parameter(arch):
    model = VMamba(arch).train()
    outs = model(torch.randn(2, 3, 64, 72))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = VMamba(SMALL_V2).train()
    checkpointed = VMamba(SMALL_V2, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (plain, checkpointed):
        outs = model(x)
        sum(o.square().sum() for o in outs).backward()
        grads.append((outs, {n: p.grad for n, p in model.named_parameters()}))
    for a, b in zip(grads[0][0], grads[1][0], strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    for name, grad in grads[0][1].items():
        assert torch.allclose(grad, grads[1][1][name], rtol=1e-4, atol=1e-6), name


def test_frozen_stages():
    model = VMamba(SMALL_V2, frozen_stages=2).train()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.startswith(('patch_embed.', 'layers.0.', 'layers.1.', 'outnorm0.', 'outnorm1.')) for n in frozen)
    assert any(n.startswith('layers.1.') for n in frozen) and not any(n.startswith('layers.2.') for n in frozen)
    assert not model.layers[0].training and model.layers[2].training


def test_overrides_and_custom_arch():
    model = VMamba('tiny', depths=(1, 1, 1, 1), embed_dim=32, drop_path_rate=0.0)
    assert model.arch['depths'] == (1, 1, 1, 1) and model.dims == [32, 64, 128, 256]
    assert model.arch['d_state'] == ARCH_PRESETS['tiny-s1l8']['d_state']


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), 'Unknown VMamba arch'),
    (dict(arch='tiny', d_state=0), 'd_state'),
    (dict(arch='tiny', downsample='v2'), 'downsample'),
    (dict(arch='tiny', depths=(2, 2, 2)), 'depths'),
    (dict(arch='tiny', drop_path_rate=1.5), 'drop_path_rate'),
    (dict(arch={'depths': (1, 1, 1, 1)}), 'missing'),
    (dict(arch={**SMALL_V2, 'heads': 3}), 'Unknown VMamba arch fields'),
    (dict(arch='tiny', out_indices=(4,)), 'out_indices'),
    (dict(arch='tiny', frozen_stages=7), 'frozen_stages'),
    (dict(arch='tiny', init_cfg=dict(type='Kaiming')), 'Pretrained'),
])
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VMamba(**kwargs)


def test_unknown_argument_raises():
    with pytest.raises(TypeError, match='unknown arguments'):
        VMamba('tiny', num_heads=3)


def test_bad_inputs_raise():
    model = VMamba(SMALL_V2)
    with pytest.raises(ValueError, match='in_channels'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='>= 32'):
        model(torch.randn(1, 3, 31, 64))


# --- checkpoints in the authors' names ---------------------------------------------------------------------------

def authors_state_dict(arch: dict, legacy: bool = False, num_classes: int = 10) -> dict:
    """A classification state dict written from the key list of docs/design.md ("Checkpoint keys"), random values."""
    c, n = arch['embed_dim'], arch['d_state']
    shapes = {}
    if arch['patch_embed'] == 'v1':
        embed = 'patch_embed.proj.' if legacy else 'patch_embed.0.'
        norm = 'patch_embed.norm.' if legacy else 'patch_embed.2.'
        shapes.update({embed + 'weight': (c, 3, 4, 4), embed + 'bias': (c,),
                       norm + 'weight': (c,), norm + 'bias': (c,)})
    else:
        shapes.update({'patch_embed.0.weight': (c // 2, 3, 3, 3), 'patch_embed.0.bias': (c // 2,),
                       'patch_embed.2.weight': (c // 2,), 'patch_embed.2.bias': (c // 2,),
                       'patch_embed.5.weight': (c, c // 2, 3, 3), 'patch_embed.5.bias': (c,),
                       'patch_embed.7.weight': (c,), 'patch_embed.7.bias': (c,)})
    for i, depth in enumerate(arch['depths']):
        dim = c * 2 ** i
        d_inner, rank, hidden = int(arch['ssm_ratio'] * dim), math.ceil(dim / 16), int(dim * arch['mlp_ratio'])
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            norm, op = (p + 'ln_1.', p + 'self_attention.') if legacy else (p + 'norm.', p + 'op.')
            shapes.update({norm + 'weight': (dim,), norm + 'bias': (dim,),
                           op + 'in_proj.weight': (d_inner * (2 if arch['gated'] else 1), dim),
                           op + 'conv2d.weight': (d_inner, 1, 3, 3),
                           op + 'x_proj_weight': (4, rank + 2 * n, d_inner), op + 'dt_projs_weight': (4, d_inner, rank),
                           op + 'dt_projs_bias': (4, d_inner), op + 'A_logs': (4 * d_inner, n),
                           op + 'Ds': (4 * d_inner,),
                           op + 'out_norm.weight': (d_inner,), op + 'out_norm.bias': (d_inner,),
                           op + 'out_proj.weight': (dim, d_inner)})
            if arch['conv_bias']:
                shapes[op + 'conv2d.bias'] = (d_inner,)
            if arch['mlp_ratio'] > 0:
                shapes.update({p + 'norm2.weight': (dim,), p + 'norm2.bias': (dim,),
                               p + 'mlp.fc1.weight': (hidden, dim), p + 'mlp.fc1.bias': (hidden,),
                               p + 'mlp.fc2.weight': (dim, hidden), p + 'mlp.fc2.bias': (dim,)})
        if i < 3:
            d = f'layers.{i}.downsample.'
            if arch['downsample'] == 'v1':
                shapes.update({d + 'reduction.weight': (2 * dim, 4 * dim), d + 'norm.weight': (4 * dim,),
                               d + 'norm.bias': (4 * dim,)})
            else:
                shapes.update({d + '1.weight': (2 * dim, dim, 3, 3), d + '1.bias': (2 * dim,),
                               d + '3.weight': (2 * dim,), d + '3.bias': (2 * dim,)})
    final = 8 * c
    norm, head = ('norm.', 'head.') if legacy else ('classifier.norm.', 'classifier.head.')
    shapes.update({norm + 'weight': (final,), norm + 'bias': (final,), head + 'weight': (num_classes, final),
                   head + 'bias': (num_classes,)})
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize('arch', [SMALL_V2, SMALL_VANILLA], ids=['v2', 'vanilla'])
@pytest.mark.parametrize('legacy', [False, True], ids=['current-names', 'legacy-names'])
def test_authors_classification_state_dict_loads_strictly(arch, legacy):
    state = authors_state_dict(arch, legacy=legacy)
    model = VMamba(arch)
    report = load_state_dict_strict(model, state)
    assert sorted({k.split('.')[0] for k in report['fresh']}) == ['outnorm0', 'outnorm1', 'outnorm2']
    assert sorted(report['dropped']) == ['classifier.head.bias', 'classifier.head.weight']
    assert bool(report['renamed']) == legacy
    own = model.state_dict()
    norm_key = 'norm.weight' if legacy else 'classifier.norm.weight'
    assert torch.equal(own['outnorm3.weight'], state[norm_key])
    op = 'self_attention' if legacy else 'op'
    assert torch.equal(own['layers.2.blocks.0.op.A_logs'], state[f'layers.2.blocks.0.{op}.A_logs'])


def test_mismatched_state_dict_names_the_keys():
    state = authors_state_dict(SMALL_V2)
    del state['layers.1.blocks.0.op.Ds']
    state['layers.0.blocks.0.op.x_proj_weight'] = torch.zeros(4, 6, 16)
    state['layers.0.blocks.0.op.extra'] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_state_dict_strict(VMamba(SMALL_V2), state)
    message = str(err.value)
    for key in ('layers.1.blocks.0.op.Ds', 'layers.0.blocks.0.op.x_proj_weight', 'layers.0.blocks.0.op.extra'):
        assert key in message
    assert 'missing keys (1)' in message and 'unexpected keys (1)' in message and 'shape mismatches (1)' in message


def test_checkpoint_of_another_preset_is_rejected():
    with pytest.raises(ValueError, match='shape mismatches'):
        load_state_dict_strict(VMamba({**SMALL_V2, 'embed_dim': 32}), authors_state_dict(SMALL_V2))


def test_mmengine_checkpoint_with_backbone_prefix(tmp_path):
    source = VMamba(SMALL_V2)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.zeros(1)
    path = tmp_path / 'detector.pth'
    torch.save({'state_dict': state, 'meta': {'epoch': 12}}, path)
    model = VMamba(SMALL_V2, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


@pytest.mark.parametrize('key', ['model', 'model_ema'])
def test_pretrained_classification_checkpoint_by_key(tmp_path, key):
    states = {'model': authors_state_dict(SMALL_V2), 'model_ema': authors_state_dict(SMALL_V2, num_classes=10)}
    states['model_ema'] = {k: v + 1 for k, v in states['model_ema'].items()}
    path = tmp_path / 'cls.pth'
    torch.save({**states, 'epoch': 300}, path)
    model = VMamba(SMALL_V2, out_indices=(3,))
    load_checkpoint(model, str(path), key=key)
    assert torch.equal(model.state_dict()['patch_embed.0.weight'], states[key]['patch_embed.0.weight'])


def test_pretrained_shorthand(tmp_path):
    path = tmp_path / 'cls.pth'
    torch.save({'model': authors_state_dict(SMALL_V2)}, path)
    model = VMamba(SMALL_V2, pretrained=str(path))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=str(path))
    with pytest.raises(ValueError, match='either pretrained'):
        VMamba(SMALL_V2, pretrained=str(path), init_cfg=dict(type='Pretrained', checkpoint=str(path)))


def test_missing_and_invalid_checkpoints_raise(tmp_path):
    model = VMamba(SMALL_V2, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        model.init_weights()
    text = tmp_path / 'notes.txt'
    text.write_text('not a checkpoint')
    with pytest.raises(ValueError, match='not a PyTorch checkpoint'):
        load_checkpoint(VMamba(SMALL_V2), str(text))
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'model': authors_state_dict(SMALL_V2), 'config': torch.nn.Identity()}, unsafe)
    with pytest.raises(ValueError, match='weights_only'):
        load_checkpoint(VMamba(SMALL_V2), str(unsafe))
    empty = tmp_path / 'empty.pth'
    torch.save({'epoch': 3}, empty)
    with pytest.raises(ValueError, match='No state dict'):
        load_checkpoint(VMamba(SMALL_V2), str(empty))
    with pytest.raises(ValueError, match='URL'):
        load_checkpoint(VMamba(SMALL_V2), 'https://example.org/vmamba.pth')


def test_drop_path_scales_whole_samples_in_training_only():
    from mmvmamba.models.backbones.vmamba import DropPath
    torch.manual_seed(0)
    drop = DropPath(0.5)
    residual, branch = torch.randn(64, 3, 4), torch.randn(64, 3, 4)
    out = drop.add(residual, branch)
    dropped = torch.isclose(out, residual).flatten(1).all(1)
    kept = torch.isclose(out, residual + 2 * branch).flatten(1).all(1)
    assert torch.all(dropped ^ kept) and dropped.any() and kept.any()
    drop.eval()
    assert torch.equal(drop.add(residual, branch), residual + branch)


def test_drop_path_drops_or_keeps_whole_samples_and_rescales_the_kept_ones():
    from mmvmamba.models.backbones.vmamba import DropPath

    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    residual, branch = torch.full((64, 3, 5), 2.0), torch.ones(64, 3, 5)
    out = drop.add(residual, branch)
    per_sample = out.flatten(1)
    assert torch.equal(per_sample.amin(1), per_sample.amax(1))  # one decision per sample
    kept = per_sample[:, 0] != 2.0
    assert torch.allclose(per_sample[kept, 0], torch.tensor(2.0 + 1 / 0.75)) and 0 < kept.sum() < 64
    assert torch.equal(drop.eval().add(residual, branch), residual + branch)


def test_scan_output_reaches_out_norm_in_float32_under_autocast():
    """As in the authors' model, the four routes' sum goes to out_norm unrounded; out_norm then writes the Linear's
    dtype."""
    from mmvmamba.models.backbones.vmamba import SS2D
    ss2d = SS2D(16, d_state=1, ssm_ratio=1.0, gated=False, conv_bias=True)
    x = torch.randn(1, 16, 5, 6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        scanned = ss2d.scan(x.bfloat16())
        normed = ss2d.out_norm(scanned)
    assert scanned.dtype == torch.float32 and scanned.shape == (1, 5, 6, 16)
    assert normed.dtype == torch.bfloat16


@pytest.mark.parametrize('autocast', [False, True], ids=['fp32', 'bf16-autocast'])
def test_block_with_mlp_fuses_its_first_residual_add_into_norm2_exactly(autocast):
    """A VSS block with an MLP runs its first residual add (with DropPath) and norm2 as one operator; in training,
    with samples dropped, it computes exactly the separate add and norm of the authors' block, gradients included."""
    from mmvmamba.ops import layer_norm
    torch.manual_seed(0)
    block = VMamba(SMALL_V2, drop_path_rate=0.5).train().layers[2].blocks[1]
    assert block.mlp_ratio > 0 and block.drop_path.drop_prob > 0
    x = torch.randn(8, 3, 5, block.norm.weight.shape[0], requires_grad=True)

    def unfused(x):
        x = block.drop_path.add(x, block.op(block.norm(x)))
        normed = layer_norm(x, block.norm2.weight, block.norm2.bias, block.norm2.eps, block.norm2._out_dtype(x))
        return block.drop_path.add(x, block.mlp(normed))

    results = []
    for fn in (block, unfused):
        torch.manual_seed(1)  # the same DropPath masks
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = fn(x)
        results.append((out, torch.autograd.grad(out.square().sum(), [x, *block.parameters()])))
    (out, grads), (expected, expected_grads) = results
    assert torch.equal(out, expected) and not torch.equal(out, x)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.equal(got, want)
