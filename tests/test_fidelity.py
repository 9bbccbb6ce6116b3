"""The project's VMamba against the authors' model: golden logits of their code, loaded through the user's path.

``tests/data/vmamba_authors_golden.pth`` (tensors only) was written once by running the authors' code
(github MzeroMiko/VMamba, commit 2ed52ea, ``classification/models/vmamba.py``) on CPU, where their selective scan
falls back to its PyTorch loop (no CUDA extension importable) and their cross-scan to its PyTorch version. For each
block generation, one ``VSSM(depths=[1, 1, 2, 1], dims=4, num_classes=5, drop_path_rate=0.0, ...)``:

- ``v1`` (vanilla): ``ssm_d_state=4, ssm_ratio=2.0, ssm_conv_bias=True, forward_type='v0', mlp_ratio=0.0,
  norm_layer='ln', downsample_version='v1', patchembed_version='v1'``; input (2, 3, 36, 44): a multiple of the
  4x4 patch (their v1 patch embedding crops other sizes, ours pads them) with odd maps after it (9x11, 5x6, 3x3);
- ``v2``: ``ssm_d_state=1, ssm_ratio=2.0, ssm_conv_bias=False, forward_type='v05_noz', mlp_ratio=4.0,
  norm_layer='ln2d'`` (channel-first, as released), ``downsample_version='v3', patchembed_version='v2'``; input
  (2, 3, 37, 45), odd at every stage.

With ``torch.manual_seed(0)``, every parameter was moved by ``0.1 * randn`` from its initialisation (so that every
tensor's mapping shows in the output), then ``torch.randn`` inputs. Stored per generation: ``state_dict`` (their key
names), ``input``, ``features`` (their ``classifier.norm`` output, NCHW) and ``logits``. Their cross-scan wrapper
enters ``torch.cuda.device(x.device)``, which refuses CPU tensors: it was made a no-op for CPU devices for the run.
Their code is not part of this repository.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from mmengine.runner import load_checkpoint

import mmvmamba  # noqa: F401  (registers VMamba)
from mmvmamba.models.backbones.vmamba import VMamba

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / 'tests' / 'data' / 'vmamba_authors_golden.pth'
MAX_RELATIVE_ERROR = 2e-6
NUM_CLASSES = 5
ARCHS = {
    'v1': dict(depths=(1, 1, 2, 1), embed_dim=4, d_state=4, ssm_ratio=2.0, gated=True, conv_bias=True, mlp_ratio=0.0,
               downsample='v1', patch_embed='v1', drop_path_rate=0.0),
    'v2': dict(depths=(1, 1, 2, 1), embed_dim=4, d_state=1, ssm_ratio=2.0, gated=False, conv_bias=False, mlp_ratio=4.0,
               downsample='v3', patch_embed='v2', drop_path_rate=0.0),
}

sys.path.insert(0, str(ROOT / 'tools'))
import convert_checkpoint  # noqa: E402


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


@pytest.fixture(scope='module')
def golden() -> dict:
    return torch.load(GOLDEN, map_location='cpu', weights_only=True)


@pytest.mark.parametrize('generation', sorted(ARCHS))
def test_authors_golden_logits_through_converter_and_init_cfg(generation, golden, tmp_path):
    """The authors' weights, saved as their training code saves them, go through tools/convert_checkpoint.py; the
    backbone file through ``init_cfg`` gives their normed stage-3 features, the classifier file (MMEngine's
    ``load_from`` loader, strict) gives their logits."""
    from mmpretrain.registry import MODELS

    reference = golden[generation]
    source = tmp_path / 'authors.pth'
    torch.save({'model': reference['state_dict'], 'epoch': 1}, source)
    paths = convert_checkpoint.main([str(source), '--out', str(tmp_path / 'converted')])

    backbone = VMamba(ARCHS[generation], out_indices=(3,),
                      init_cfg=dict(type='Pretrained', checkpoint=paths['backbone']))
    backbone.init_weights()
    classifier = MODELS.build(dict(
        type='ImageClassifier', backbone=dict(type='VMamba', arch=ARCHS[generation], out_indices=(3,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=8 * ARCHS[generation]['embed_dim'])))
    load_checkpoint(classifier, paths['mmpretrain'], map_location='cpu', strict=True)
    with torch.no_grad():
        features = backbone.eval()(reference['input'])[0]
        logits = classifier.eval()(reference['input'], mode='tensor')

    assert features.shape == reference['features'].shape and logits.shape == reference['logits'].shape
    errors = dict(features=relative_error(features, reference['features']),
                  logits=relative_error(logits, reference['logits']))
    print(f'{generation}: relative L2 error {errors}')
    assert max(errors.values()) < MAX_RELATIVE_ERROR, errors

