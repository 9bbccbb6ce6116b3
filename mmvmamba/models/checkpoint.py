"""Reading the authors' VMamba checkpoints and MMEngine checkpoints into :class:`VMamba`, strictly.

Accepted files: the authors' classification checkpoints (a dict with 'model', often 'model_ema'), MMEngine
checkpoints of detectors, segmentors or classifiers ('state_dict' with the backbone under 'backbone.'), or a bare state
dict. Legacy names of early checkpoints are renamed, the classifier's final norm becomes ``outnorm3`` and its head is
dropped. Anything else that does not match (missing keys other than fresh output norms, unexpected keys, shape
mismatches) is an error that lists the keys: a checkpoint is never silently half-loaded.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from mmengine.logging import print_log

from ..engine.safe_load import CheckpointError, load_checkpoint_file
from .backbones.vmamba import VMamba

# early checkpoints of the authors (see docs/design.md, "Checkpoint keys"): (pattern, replacement) on key prefixes
LEGACY_RENAMES = (
    (r'^patch_embed\.proj\.', 'patch_embed.0.'),
    (r'^patch_embed\.norm\.', 'patch_embed.2.'),
    (r'^(layers\.\d+\.blocks\.\d+\.)ln_1\.', r'\1norm.'),
    (r'^(layers\.\d+\.blocks\.\d+\.)self_attention\.', r'\1op.'),
    (r'^norm\.', 'classifier.norm.'),
    (r'^head\.', 'classifier.head.'),
)
CHECKPOINT_KEYS = ('state_dict', 'model', 'model_ema')
INIT_CFG_SOURCE = ('model.backbone.init_cfg.checkpoint or pretrained=; set it with --cfg-options '
                   'model.backbone.init_cfg.checkpoint=PATH')


def read_checkpoint(path: str, source: str = 'the checkpoint path') -> dict:
    """Load a local checkpoint file with ``weights_only=True`` (see :func:`mmvmamba.engine.load_checkpoint_file`);
    ``source`` says where the path was given, for the messages. Raises :class:`CheckpointError` for missing, damaged,
    unsafe or non-checkpoint files."""
    ckpt = load_checkpoint_file(path, source=source)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f'{path!r} ({source}) holds a {type(ckpt).__name__}, not a checkpoint dict: give a '
                              f'file written by torch.save of a dict (a state dict or a training checkpoint).')
    return dict(ckpt)


def select_state_dict(ckpt: Mapping, key: str = 'auto') -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: ``key`` in 'state_dict', 'model', 'model_ema', or 'auto' (state_dict,
    then model, then the dict itself when it holds only tensors)."""
    if key == 'auto':
        key = next((k for k in ('state_dict', 'model') if k in ckpt), None)
        if key is None:
            if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
                return dict(ckpt)
            raise ValueError(f'No state dict found in the checkpoint: expected one of {CHECKPOINT_KEYS}, found the '
                             f'keys {sorted(ckpt)[:20]}.')
    if key not in ckpt:
        raise ValueError(f'The checkpoint has no {key!r}; it has {sorted(ckpt)[:20]}.')
    state = ckpt[key]
    if not isinstance(state, Mapping):
        raise ValueError(f'checkpoint[{key!r}] is a {type(state).__name__}, not a state dict.')
    return dict(state)


def rename_legacy_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply :data:`LEGACY_RENAMES`; returns the new dict and 'old -> new' notes."""
    renamed, notes = {}, []
    for name, value in state.items():
        new = name
        for pattern, repl in LEGACY_RENAMES:
            new = re.sub(pattern, repl, new)
        if new != name:
            notes.append(f'{name} -> {new}')
        renamed[new] = value
    return renamed, notes


def backbone_state_from_checkpoint(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Backbone keys in the authors' names from any accepted state dict.

    Returns the backbone state and a report with 'renamed' (legacy names), 'dropped' (keys that are not the
    backbone's: heads, necks, the classifier head) and 'mapped' (classifier.norm -> outnorm3).
    """
    state = dict(state)
    if state and all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    dropped = []
    if any(k.startswith('backbone.') for k in state):
        dropped = sorted(k for k in state if not k.startswith('backbone.'))
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    state, renamed = rename_legacy_keys(state)
    mapped = []
    for name in list(state):
        if name.startswith('classifier.norm.'):
            new = 'outnorm3.' + name[len('classifier.norm.'):]
            state[new] = state.pop(name)
            mapped.append(f'{name} -> {new}')
        elif name.startswith('classifier.head.'):
            state.pop(name)
            dropped.append(name)
    return state, dict(renamed=renamed, dropped=dropped, mapped=mapped)


def classifier_state_for_mmpretrain(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """An authors' classification state dict as an mmpretrain ``ImageClassifier`` state dict.

    The classifier's norm -> pool -> head becomes ``backbone.outnorm3`` -> ``GlobalAveragePooling`` ->
    ``head.fc`` (a ``LinearClsHead``), so logits are unchanged. Returns the state and the report of
    :func:`backbone_state_from_checkpoint` (where the head now counts as mapped, not dropped).
    """
    state, renamed = rename_legacy_keys(state)
    head = {f'head.fc.{k[len("classifier.head."):]}': v for k, v in state.items() if k.startswith('classifier.head.')}
    if len(head) != 2:
        raise ValueError(f'Not a classification state dict: expected classifier.head.weight/bias (or head.*), found '
                         f'{sorted(k for k in state if "head" in k)}.')
    backbone, report = backbone_state_from_checkpoint(state)
    report['renamed'] = renamed
    report['dropped'] = [k for k in report['dropped'] if not k.startswith('classifier.head.')]
    report['mapped'] += [f'classifier.head.{k[len("head.fc."):]} -> {k}' for k in head]
    return {**{f'backbone.{k}': v for k, v in backbone.items()}, **head}, report


def _limited(keys: list[str], limit: int = 30) -> str:
    more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def load_state_dict_strict(model: VMamba, state: Mapping[str, torch.Tensor], source: str = 'state dict') -> dict:
    """Load a backbone state (authors' names) into ``model``; raise on any mismatch except fresh output norms.

    Output norms of stages the model does not return are dropped; output norms the model has and the state lacks
    keep their initialisation (a classification checkpoint has no per-stage output norms). Returns the report.
    """
    state, report = backbone_state_from_checkpoint(state)
    own = model.state_dict()
    outnorm = re.compile(r'^outnorm(\d)\.')
    for name in list(state):
        m = outnorm.match(name)
        if m and name not in own:
            state.pop(name)
            report['dropped'].append(name)
    for name, value in state.items():  # 1x1 convolutions stored as conv weights by some checkpoints
        if name in own and value.dim() == 4 and own[name].dim() == 2 and value.shape[2:] == (1, 1):
            state[name] = value.flatten(1)
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    fresh = [k for k in missing if outnorm.match(k)]
    missing = [k for k in missing if not outnorm.match(k)]
    mismatched = sorted(f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
                        for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if unexpected or missing or mismatched:
        problems = []
        if missing:
            problems.append(f'missing keys ({len(missing)}): {_limited(missing)}')
        if unexpected:
            problems.append(f'unexpected keys ({len(unexpected)}): {_limited(unexpected)}')
        if mismatched:
            problems.append(f'shape mismatches ({len(mismatched)}): {_limited(mismatched)}')
        raise ValueError(f'{source} does not match VMamba(arch={model.arch}):\n  ' + '\n  '.join(problems)
                         + '\nCheck that arch (and its overrides) is the model the checkpoint was trained with.')
    model.load_state_dict(state, strict=False)
    report['fresh'] = fresh
    report['loaded'] = len(state)
    return report


def load_checkpoint(model: VMamba, path: str, key: str = 'auto') -> dict:
    """Read ``path`` and load it into ``model`` strictly (see :func:`load_state_dict_strict`); logs what changed."""
    state = select_state_dict(read_checkpoint(path, source=INIT_CFG_SOURCE), key)
    report = load_state_dict_strict(model, state, source=f'Checkpoint {path!r}')
    print_log(f'VMamba: loaded {report["loaded"]} tensors from {path} (key={key}); renamed {len(report["renamed"])} '
              f'legacy keys, mapped {report["mapped"] or "nothing"}, dropped {len(report["dropped"])} non-backbone '
              f'keys, output norms left at their initialisation: {sorted({k.split(".")[0] for k in report["fresh"]})}',
              logger='current')
    return report
