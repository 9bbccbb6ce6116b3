"""Every shipped config: parses, carries the recipe it documents, builds its model on CPU and runs one forward."""
from __future__ import annotations

import copy
import functools
import importlib
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope
from torch.nn.modules.batchnorm import _BatchNorm

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)
VMAMBA_CONFIGS = [c for c in CONFIGS if '/baselines/' not in c and '/demo/' not in c]
SIZES = {'t': ('tiny', 96, 0.2), 's': ('small', 96, 0.3), 'b': ('base', 128, 0.6)}
CHECKPOINTS = {  # the authors' ImageNet-1K checkpoints the downstream configs start from
    'tiny': 'vssm1_tiny_0230s_ckpt_epoch_264.pth', 'small': 'vssm_small_0229_ckpt_epoch_222.pth',
    'base': 'vssm_base_0229_ckpt_epoch_237.pth', 'vanilla-tiny': 'vssmtiny_dp01_ckpt_epoch_292.pth',
    'vanilla-small': 'vssmsmall_dp03_ckpt_epoch_238.pth', 'vanilla-base': 'vssmbase_dp06_ckpt_epoch_241.pth'}
NO_DECAY_SSM = ('A_logs', 'Ds', 'dt_projs_bias')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """One intra-op thread: the models here are small, and on a busy 2-core machine spinning threads cost more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def parse(config: str) -> Config:
    return Config.fromfile(str(ROOT / config))


def load(config: str) -> Config:
    """A fresh copy of the parsed config, with its codebase registered and made the default scope."""
    cfg = copy.deepcopy(parse(config))
    importlib.import_module(f'{cfg.default_scope}.utils').register_all_modules(init_default_scope=False)
    init_default_scope(cfg.default_scope)
    return cfg


def build_model(cfg: Config) -> torch.nn.Module:
    """The config's model with the pretrained backbone checkpoint disabled, SyncBN as BN, initialised, eval mode."""
    cfg.model.backbone.init_cfg = None
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    model.eval()
    return model


def expected_arch(config: str) -> tuple[str, int, float]:
    """(arch, C, drop_path_rate) that a config's name promises."""
    size = re.search(r'vmamba_(?:vanilla_)?([tsb])_', config).group(1)
    arch, channels, drop_path = SIZES[size]
    return ('vanilla-' + arch if '_vanilla_' in config else arch), channels, drop_path


def test_config_families_are_complete():
    names = {Path(c).stem for c in CONFIGS}
    for size in 'tsb':
        for variant in ('', 'vanilla_'):
            family = {f'mask_rcnn_vmamba_{variant}{size}_1x', f'mask_rcnn_vmamba_{variant}{size}_3x',
                      f'upernet_vmamba_{variant}{size}_512x512_160k_ade20k', f'vmamba_{variant}{size}_8xb128_in1k'}
            assert family <= names
    assert {'upernet_vmamba_s_640x640_160k_ade20k', 'upernet_vmamba_b_640x640_160k_ade20k'} <= names


@pytest.mark.parametrize('config', CONFIGS)
def test_config_scope_and_imports(config):
    cfg = parse(config)
    assert cfg.custom_imports == dict(imports=['mmvmamba'], allow_failed_imports=False)
    expected = 'mmdet' if 'mask_rcnn' in config else 'mmseg' if 'upernet' in config else 'mmpretrain'
    assert cfg.default_scope == expected


@pytest.mark.parametrize('config', VMAMBA_CONFIGS)
def test_config_recipe(config):
    cfg = parse(config)
    arch, channels, drop_path = expected_arch(config)
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == ('VMamba', arch, drop_path)
    dims = [channels * 2 ** i for i in range(4)]
    optim = cfg.optim_wrapper.optimizer
    paramwise = cfg.optim_wrapper.paramwise_cfg
    assert optim.type == 'AdamW' and optim.betas == (0.9, 0.999)
    assert paramwise.norm_decay_mult == 0 and paramwise.bias_decay_mult == 0
    assert {key.lstrip('.'): value.decay_mult for key, value in paramwise.custom_keys.items()} == dict.fromkeys(
        NO_DECAY_SSM, 0.0)
    warmup, main = cfg.param_scheduler
    if 'mask_rcnn' in config:
        epochs, milestones = (12, [8, 11]) if config.endswith('_1x.py') else (36, [27, 33])
        assert backbone.out_indices == (0, 1, 2, 3) and cfg.model.neck.in_channels == dims
        assert (optim.lr, optim.weight_decay) == (1e-4, 0.05)
        assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == ('LinearLR', 0.001, 1000, False)
        assert (cfg.train_cfg.max_epochs, main.type, main.milestones) == (epochs, 'MultiStepLR', milestones)
        assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
        assert cfg.tta_model.type == 'DetInstanceTTAModel'
        if config.endswith('_3x.py'):
            choice = cfg.train_dataloader.dataset.pipeline[3]
            scales = choice.transforms[0][0].scales
            assert sorted(min(s) for s in scales) == list(range(480, 801, 32))
            assert [t.type for t in choice.transforms[1]] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    elif 'upernet' in config:
        crop = 640 if '640x640' in config else 512
        assert cfg.model.decode_head.in_channels == dims and cfg.model.auxiliary_head.in_channels == dims[2]
        assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 150
        assert cfg.model.data_preprocessor.size == (crop, crop) and cfg.crop_size == (crop, crop)
        assert (optim.lr, optim.weight_decay) == (6e-5, 0.01)
        assert (warmup.type, warmup.start_factor, warmup.end) == ('LinearLR', 1e-6, 1500)
        assert (main.type, main.power, main.begin, main.end) == ('PolyLR', 1.0, 1500, 160000)
        assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
        assert cfg.tta_model.type == 'SegTTAModel'
        ratios = [t.scale_factor for t in cfg.tta_pipeline[1].transforms[0]]
        assert ratios == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
        assert [t.prob for t in cfg.tta_pipeline[1].transforms[1]] == [0.0, 1.0]
    else:
        assert backbone.out_indices == (3,) and cfg.model.head.in_channels == dims[3]
        assert cfg.model.head.num_classes == 1000 and cfg.model.head.loss.label_smooth_val == 0.1
        assert (optim.lr, optim.weight_decay, cfg.optim_wrapper.clip_grad.max_norm) == (1e-3, 0.05, 5.0)
        assert warmup.start_factor * optim.lr == pytest.approx(5e-7) and warmup.end == 20
        assert (main.type, main.eta_min, main.begin, main.end) == ('CosineAnnealingLR', 5e-6, 20, 300)
        assert cfg.train_cfg.max_epochs == 300 and cfg.train_dataloader.batch_size == 128
        assert [a.alpha for a in cfg.model.train_cfg.augments] == [0.8, 1.0]
        assert cfg.custom_hooks[0].type == 'EMAHook' and cfg.custom_hooks[0].momentum == 1e-4
        randaug = cfg.train_dataloader.dataset.pipeline[3]
        assert (randaug.magnitude_level, randaug.magnitude_std, randaug.policies) == (9, 0.5, 'timm_increasing')
        assert cfg.train_dataloader.dataset.pipeline[4].erase_prob == 0.25
    if 'in1k' not in config:
        assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'checkpoints/{CHECKPOINTS[arch]}')


def test_pretrained_checkpoint_is_strict_and_overridable():
    cfg = load('configs/mask_rcnn_vmamba_t_1x.py')
    backbone = MODELS.build(cfg.model.backbone)
    with pytest.raises(FileNotFoundError, match='vssm1_tiny_0230s_ckpt_epoch_264.pth'):
        backbone.init_weights()
    cfg.merge_from_dict({'model.backbone.init_cfg': None})
    assert cfg.model.backbone.init_cfg is None


def _forward(cfg: Config, model: torch.nn.Module, size: int) -> None:
    scope = cfg.default_scope
    with torch.no_grad():
        if scope == 'mmdet':
            from mmdet.testing import demo_mm_inputs
            data = demo_mm_inputs(batch_size=1, image_shapes=(3, size, size), num_items=[2])
            (result,) = model.test_step(data)
            assert result.pred_instances.bboxes.shape[1] == 4
            if 'mask_head' in cfg.model.roi_head:
                assert result.pred_instances.masks.shape[1:] == (size, size)
        elif scope == 'mmseg':
            logits = model(torch.rand(1, 3, size, size), mode='tensor')
            assert logits.shape == (1, cfg.model.decode_head.num_classes, size // 4, size // 4)
            assert torch.isfinite(logits).all()
        else:
            logits = model(torch.rand(1, 3, size, size), mode='tensor')
            assert logits.shape == (1, cfg.model.head.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds_and_forwards(config):
    cfg = load(config)
    model = build_model(cfg)
    if cfg.model.backbone.type == 'VMamba':
        assert model.backbone.init_cfg is None
    _forward(cfg, model, 64)


@pytest.mark.parametrize('config', ['configs/demo/mask_rcnn_vmamba_demo.py', 'configs/demo/upernet_vmamba_demo.py',
                                    'configs/demo/vmamba_demo_digits.py',
                                    'configs/vmamba_t_8xb128_in1k.py'])
def test_weight_decay_policy(config):
    """No decay on A_logs, Ds, dt_projs_bias, normalisation layers and biases; the config's decay elsewhere."""
    cfg = load(config)
    model = build_model(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_decay = cfg.optim_wrapper.optimizer.weight_decay
    names = {id(p): n for n, p in model.named_parameters()}
    norms = {f'{m}.{n}' for m, mod in model.named_modules() if isinstance(mod, (_BatchNorm, nn.LayerNorm, nn.GroupNorm))
             for n, _ in mod.named_parameters(recurse=False)}
    # (MMEngine adds a group with one plain tensor that carries the base learning rate for logging)
    decay = {names[id(p)]: group['weight_decay'] for group in optim_wrapper.param_groups for p in group['params']
             if id(p) in names}
    assert set(decay) == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, value in decay.items():
        leaf = name.rsplit('.', 1)[-1]
        no_decay = leaf in NO_DECAY_SSM or name in norms or leaf == 'bias'
        assert value == (0 if no_decay else base_decay), name
    assert {name.rsplit('.', 1)[-1] for name in decay} >= set(NO_DECAY_SSM)
    assert any(value == base_decay for value in decay.values())
