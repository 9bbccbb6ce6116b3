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
import os
import re

import torch

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
    return parser.parse_args(argv)


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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({'meta': meta, 'state_dict': {k: v.contiguous() for k, v in state.items()}}, path)
    torch.load(path, map_location='cpu', weights_only=True)  # the promise of the file format


def verify(arch: str, backbone: dict[str, torch.Tensor]) -> list[str]:
    """Load the backbone strictly into a classification and a detection VMamba of ``arch``."""
    lines = []
    for out_indices in ((3,), (0, 1, 2, 3)):
        report = load_state_dict_strict(VMamba(arch, out_indices=out_indices), backbone)
        fresh = sorted({k.split('.')[0] for k in report['fresh']})
        lines.append(f'VMamba({arch!r}, out_indices={out_indices}): {report["loaded"]} tensors loaded strictly'
                     + (f', fresh: {", ".join(fresh)}' if fresh else ''))
    return lines


def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    ckpt = read_checkpoint(args.checkpoint)
    key = args.key if args.key != 'auto' else 'model'
    state = select_state_dict(ckpt, key if key in ckpt else 'auto')
    classifier, backbone, report = convert(state, args.plain_keys)
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
    if args.arch:
        print('\n'.join(verify(args.arch, backbone)))
    for kind, path in paths.items():
        print(f'wrote {path} ({kind})')
    return paths


if __name__ == '__main__':
    main()
