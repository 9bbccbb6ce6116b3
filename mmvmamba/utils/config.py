"""The models that the tools run: built from a shipped config (any of mmpretrain, mmdet, mmseg) or a preset name.

A config model is built without its pretrained weights (``init_cfg`` is dropped, nothing is loaded), with SyncBN
turned into BatchNorm so that it runs in one process. :class:`TensorModel` gives every model the tensor-in,
tensors-out forward that tracing, timing and export need; :func:`load_weights` puts a checkpoint into a model built
here, reading it with :mod:`mmvmamba.models.checkpoint`.
"""
from __future__ import annotations

import copy
import importlib
import os
from typing import Any

import torch
import torch.nn as nn
from mmengine.config import Config
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from mmvmamba.models.backbones.vmamba import VMamba
from mmvmamba.models.checkpoint import load_state_dict_strict, read_checkpoint, rename_legacy_keys, select_state_dict
from mmvmamba.models.classifier import VMambaClassifier

# input (H, W) the authors quote FLOPs at, per kind of model
DEFAULT_SHAPES = {'backbone': (224, 224), 'classifier': (224, 224), 'detector': (1280, 800), 'segmentor': (512, 2048)}


def build_arch_model(arch: str | dict, num_classes: int | None = 1000, **overrides: Any) -> nn.Module:
    """A :class:`VMambaClassifier` (``num_classes`` given) or a bare :class:`VMamba` backbone (``num_classes=None``)."""
    if num_classes is None:
        return VMamba(arch, **overrides)
    return VMambaClassifier(arch, num_classes, **overrides)


def load_config(path: str, cfg_options: dict | None = None) -> Config:
    """Read a config and merge ``--cfg-options`` style overrides."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Config file not found: {path!r}. The configs are under configs/ (e.g. '
                                f'configs/demo/mask_rcnn_vmamba_demo.py); check the path.')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _drop_pretrained(model_cfg: dict) -> None:
    """No checkpoint is read when building for analysis: the tools load weights themselves when asked."""
    model_cfg.pop('pretrained', None)
    backbone = model_cfg.get('backbone')
    if isinstance(backbone, dict):
        backbone['init_cfg'] = None
        backbone.pop('pretrained', None)
    init_cfg = model_cfg.get('init_cfg')
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        model_cfg['init_cfg'] = None


def build_from_config(cfg: Config | str, cfg_options: dict | None = None) -> nn.Module:
    """Build ``cfg.model`` in the config's default scope (mmpretrain, mmdet or mmseg) without pretrained weights;
    SyncBN becomes BatchNorm."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, DefaultScope
    from mmengine.utils import import_modules_from_strings

    if isinstance(cfg, str):
        cfg = load_config(cfg, cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    scope = cfg.get('default_scope')
    if scope is None:
        raise ValueError('The config sets no default_scope (mmpretrain, mmdet or mmseg), so its model registry is '
                         'unknown; add default_scope to the config.')
    model_cfg = copy.deepcopy(cfg.model)
    _drop_pretrained(model_cfg)
    with DefaultScope.overwrite_default_scope(scope):  # the caller's default scope is left as it was
        model = MODELS.build(model_cfg)
    return revert_sync_batchnorm(model)


def model_kind(model: nn.Module) -> str:
    """'classifier', 'detector' or 'segmentor' (mmpretrain, mmdet, mmseg, or :class:`VMambaClassifier`); anything
    else is called as a 'backbone', ``model(images)``."""
    if isinstance(model, (VMamba, VMambaClassifier)):
        return 'backbone' if isinstance(model, VMamba) else 'classifier'
    bases = (('classifier', 'mmpretrain.models.classifiers', 'BaseClassifier'),
             ('detector', 'mmdet.models.detectors', 'BaseDetector'),
             ('segmentor', 'mmseg.models.segmentors', 'BaseSegmentor'))
    for kind, module, name in bases:
        if type(model).__module__.split('.')[0] != module.split('.')[0]:
            continue
        if isinstance(model, getattr(importlib.import_module(module), name)):
            return kind
    return 'backbone'


def get_backbone(model: nn.Module) -> nn.Module:
    """The model's backbone (the model itself when it is one)."""
    return model if isinstance(model, VMamba) else getattr(model, 'backbone', model)


class TensorModel(nn.Module):
    """A model with a plain ``forward(images) -> tensors``, as tracing, timing and export need.

    Classifiers return logits; detectors their ``mode='tensor'`` outputs (the head outputs, with meta data for
    unpadded images of the input size); segmentors the decode head's logits; backbones their feature maps.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.kind = model_kind(model)

    def forward(self, images: torch.Tensor):
        if self.kind == 'backbone' or isinstance(self.model, VMambaClassifier):
            return self.model(images)
        if self.kind == 'detector':
            return self.model(images, _det_samples(images), mode='tensor')
        return self.model(images, mode='tensor')


def _det_samples(images: torch.Tensor) -> list:
    from mmdet.structures import DetDataSample

    shape = tuple(int(s) for s in images.shape[2:])
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape, scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=meta) for _ in range(images.shape[0])]


def build_model(config: str | None = None, arch: str | dict | None = None, *, cfg_options: dict | None = None,
                arch_options: dict | None = None, num_classes: int | None = 1000) -> nn.Module:
    """A model from a config file, or from ``arch`` (plus ``arch_options`` overrides) as a classifier with
    ``num_classes`` outputs (``None``: the bare backbone)."""
    if (config is None) == (arch is None):
        raise ValueError('Give either a config file or --arch, not both.')
    if config is not None:
        return build_from_config(config, cfg_options)
    return build_arch_model(arch, num_classes, **(arch_options or {}))


def load_weights(model: nn.Module, path: str, key: str = 'auto') -> str:
    """Load a checkpoint into ``model`` strictly; returns what was loaded.

    MMEngine checkpoints of the same kind of model load as a whole; the authors' classification checkpoints (and
    backbone-only ones) load into the VMamba backbone through :func:`load_state_dict_strict`, and into a
    :class:`VMambaClassifier`'s head when they carry one.
    """
    state = select_state_dict(read_checkpoint(path), key)
    consume_prefix_in_state_dict_if_present(state, 'module.')  # saved from a DataParallel / DDP wrapper
    own = model.state_dict()
    if set(state) == set(own):
        model.load_state_dict(state)
        return f'{len(state)} tensors into the whole model'
    backbone = get_backbone(model)
    if not isinstance(backbone, VMamba):
        raise ValueError(f'{path}: keys do not match the model and its backbone is not VMamba.')
    report = load_state_dict_strict(backbone, state, source=f'Checkpoint {path!r}')
    message = f'{report["loaded"]} tensors into the VMamba backbone'
    head = {k[len('classifier.head.'):]: v for k, v in rename_legacy_keys(state)[0].items()
            if k.startswith('classifier.head.')}
    if isinstance(model, VMambaClassifier) and head:
        model.head.load_state_dict(head)
        message += ' and the classifier head'
    return message
