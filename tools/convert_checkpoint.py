"""Convert the authors' VMamba classification checkpoint into MMEngine checkpoints.

Writes two files (tensors only, loadable with ``torch.load(weights_only=True)``):

- ``<out>_mmpretrain.pth``: the whole classifier as mmpretrain's ImageClassifier (``backbone.*`` with the final
  norm as ``backbone.outnorm3``, ``head.fc.*``), for configs/vmamba_*_in1k.py (``load_from``) or evaluation;
- ``<out>_backbone.pth``: the backbone alone (``backbone.*`` keys, or plain keys with ``--plain-keys``), for
  ``model.backbone.init_cfg.checkpoint`` of the detection and segmentation configs.

    python tools/convert_checkpoint.py vssm1_tiny_0230s_ckpt_epoch_264.pth --key model_ema --arch tiny \
        --out checkpoints/vmamba_tiny
"""
from __future__ import annotations

import argparse
import io
import os
import re

import torch

from mmvmamba.engine.atomic_write import write_atomically
from mmvmamba.engine.safe_load import UNSAFE_LOAD_FLAG, CheckpointError, allow_unsafe_load
from mmvmamba.models.backbones.vmamba import VMamba
from mmvmamba.models.checkpoint import (
    backbone_state_from_checkpoint,
    classifier_state_for_mmpretrain,
    load_state_dict_strict,
    read_checkpoint,
    select_state_dict,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help="the authors' classification checkpoint")
    parser.add_argument('--key', default='auto', choices=('auto', 'model', 'model_ema'),
                        help="which weights: 'model', 'model_ema' (auto: 'model')")
    parser.add_argument('--out', help='output prefix (default: the input path without .pth)')
    parser.add_argument('--plain-keys', action='store_true', help='backbone file without the backbone. prefix')
    parser.add_argument('--arch', help='a VMamba preset: also check that the backbone loads strictly into it')
    parser.add_argument(UNSAFE_LOAD_FLAG, action='store_true',
                        help='read the input with weights_only=False: RUNS ANY CODE IN THE FILE. Only for a trusted '
                        'file that holds other objects than weights; the converted files hold tensors only')
    return parser.parse_args(argv)


def classification_state(ckpt: dict, key: str, path: str) -> dict[str, torch.Tensor]:
    """The authors' classification state dict in ``ckpt`` (``key`` if present); a clear error for anything else."""
    state = select_state_dict(ckpt, key if key in ckpt else 'auto')
    if not any(k.startswith(('classifier.head.', 'head.')) for k in state):
        raise CheckpointError(
            f'{path!r} is not one of the authors\' classification checkpoints (no classifier.head.* or head.* '
            f'weights; its keys start {sorted(state)[:3]}). The converter takes those. An MMEngine detection or '
            f'segmentation checkpoint needs no conversion: give it as load_from, or as '
            f'model.backbone.init_cfg.checkpoint.')
    return state


def convert(state: dict[str, torch.Tensor], plain_keys: bool = False) -> tuple[dict, dict, dict]:
    """(mmpretrain state, backbone state, report) from an authors' classification state dict.

    The report lists 'renamed' (legacy names), 'mapped' (moved into the new layout), 'dropped' (not kept in the
    classifier), 'backbone_dropped' (not kept in the backbone file: the head) and 'added' (parameters the targets
    have and the checkpoint lacks, left to the model's initialisation).
    """
    classifier, report = classifier_state_for_mmpretrain(state)
    backbone, backbone_report = backbone_state_from_checkpoint(state)
    if not plain_keys:
        backbone = {f'backbone.{k}': v for k, v in backbone.items()}
    report['backbone_dropped'] = backbone_report['dropped']
    report['added'] = ['outnorm0, outnorm1, outnorm2 (detection/segmentation output norms, initialised by the model)']
    return classifier, backbone, report


def save(state: dict[str, torch.Tensor], path: str, meta: dict) -> None:
    """Write ``{'meta', 'state_dict'}`` atomically, after checking that it loads with ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save({'meta': meta, 'state_dict': {k: v.contiguous() for k, v in state.items()}}, buffer)
    torch.load(io.BytesIO(buffer.getvalue()), map_location='cpu', weights_only=True)  # the promise of the format
    write_atomically(path, buffer.getvalue())


def verify(arch: str, backbone: dict[str, torch.Tensor], source: str = 'The converted backbone') -> list[str]:
    """Load the backbone strictly into a classification and a detection VMamba of ``arch``."""
    lines = []
    for out_indices in ((3,), (0, 1, 2, 3)):
        report = load_state_dict_strict(VMamba(arch, out_indices=out_indices), backbone, source=source)
        fresh = sorted({k.split('.')[0] for k in report['fresh']})
        lines.append(f'VMamba({arch!r}, out_indices={out_indices}): {report["loaded"]} tensors loaded strictly'
                     + (f', fresh: {", ".join(fresh)}' if fresh else ''))
    return lines


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    with allow_unsafe_load(args.unsafe_load):
        ckpt = read_checkpoint(args.checkpoint, source="the converter's input")
    key = args.key if args.key != 'auto' else 'model'
    state = classification_state(ckpt, key, args.checkpoint)
    classifier, backbone, report = convert(state, args.plain_keys)
    checks = verify(args.arch, backbone, source=f'The backbone of {args.checkpoint!r}') if args.arch else []
    out = args.out or re.sub(r'\.pth?$', '', args.checkpoint)
    meta = dict(source=os.path.basename(args.checkpoint), source_key=key, converter='tools/convert_checkpoint.py')
    paths = dict(mmpretrain=f'{out}_mmpretrain.pth', backbone=f'{out}_backbone.pth')
    save(classifier, paths['mmpretrain'], dict(meta, layout='mmpretrain ImageClassifier'))
    save(backbone, paths['backbone'], dict(meta, layout='VMamba backbone' + ('' if args.plain_keys else
                                                                             ', backbone. prefix')))
    print(f"read {len(state)} tensors from {args.checkpoint} ['{key}']")
    print(f'renamed ({len(report["renamed"])}): ' + (', '.join(report['renamed'][:8]) or 'nothing')
          + (' ...' if len(report['renamed']) > 8 else ''))
    print(f'mapped: {", ".join(report["mapped"]) or "nothing"}')
    print(f'dropped: {", ".join(report["dropped"]) or "nothing"}; from the backbone file also: '
          f'{", ".join(report["backbone_dropped"]) or "nothing"}')
    print(f'added: {"; ".join(report["added"])}')
    if checks:
        print('\n'.join(checks))
    for kind, path in paths.items():
        print(f'wrote {path} ({kind})')
    return paths


if __name__ == '__main__':
    main()
