"""Checking that a checkpoint holds weights of the model it is about to be loaded into."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn as nn
from mmengine.model import BaseTTAModel, is_model_wrapper

from .safe_load import CheckpointError

SHOWN_KEYS = 5


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP and test-time-augmentation wrappers (what MMEngine loads a checkpoint into)."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def _tensors(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, Mapping):
        return {}
    return {re.sub(r'^module\.', '', key): value for key, value in state.items() if isinstance(value, torch.Tensor)}


def _examples(keys: list[str]) -> str:
    return ', '.join(keys[:SHOWN_KEYS]) + (' ...' if len(keys) > SHOWN_KEYS else '')


def check_checkpoint_matches(model: nn.Module, checkpoint: Mapping, path: str, source: str, config: str,
                             strict: bool) -> None:
    """Raise :class:`CheckpointError` when ``checkpoint`` is not for ``model``.

    ``strict`` (resuming, testing): every tensor of the model must be in the checkpoint with its shape and nothing
    else. Otherwise (``load_from``, where fine-tuning may change heads): at least half of the checkpoint's tensors must
    fit the model.
    """
    own = {key: value for key, value in unwrap_model(model).state_dict().items() if 'num_batches_tracked' not in key}
    state = {key: value for key, value in _tensors(checkpoint).items() if 'num_batches_tracked' not in key}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f'{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}'
                        for key in set(own) & set(state) if state[key].shape != own[key].shape)
    fitting = len(set(own) & set(state)) - len(mismatched)
    if not (missing or unexpected or mismatched) or (not strict and fitting * 2 >= max(len(state), 1)):
        return
    problems = []
    if missing:
        problems.append(f'{len(missing)} of the model\'s {len(own)} tensors are missing ({_examples(missing)})')
    if unexpected:
        problems.append(f'{len(unexpected)} of its {len(state)} tensors are not in the model '
                        f'({_examples(unexpected)})')
    if mismatched:
        problems.append(f'{len(mismatched)} have other shapes ({_examples(mismatched)})')
    hint = ''
    if not state or not any(key.startswith(('backbone.', 'neck.', 'head.', 'decode_head.')) for key in state):
        hint = (' A backbone-only checkpoint (the authors\' classification file, or the _backbone.pth of '
                'tools/convert_checkpoint.py) goes in model.backbone.init_cfg.checkpoint instead.')
    raise CheckpointError(f'{path!r} ({source}) does not hold weights of the model of {config} '
                          f'({type(unwrap_model(model)).__name__}): ' + '; '.join(problems)
                          + '. Give a checkpoint trained with this config.' + hint)
