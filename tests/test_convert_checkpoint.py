"""The checkpoint converter: the authors' classifier -> mmpretrain ImageClassifier and mmdet/mmseg backbone files."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import mmvmamba  # noqa: F401  (registers VMamba)
from tests.test_vmamba_backbone import SMALL_V2, SMALL_VANILLA, authors_state_dict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))

import convert_checkpoint  # noqa: E402


def final_norm_and_head(authors: dict) -> tuple:
    if 'classifier.norm.weight' in authors:
        return tuple(authors[f'classifier.{k}'] for k in ('norm.weight', 'norm.bias', 'head.weight', 'head.bias'))
    return tuple(authors[k] for k in ('norm.weight', 'norm.bias', 'head.weight', 'head.bias'))


@pytest.mark.parametrize('arch,legacy,key', [(SMALL_V2, False, 'model_ema'), (SMALL_VANILLA, True, 'model')],
                         ids=['v2-ema', 'vanilla-legacy'])
def test_round_trip_into_mmpretrain_and_mmdet(tmp_path, arch, legacy, key):
    from mmdet.registry import MODELS as DET_MODELS
    from mmpretrain.registry import MODELS as CLS_MODELS

    weights = {'model': authors_state_dict(arch, legacy=legacy), 'model_ema': authors_state_dict(arch, legacy=legacy)}
    weights['model_ema'] = {k: v * 0.5 for k, v in weights['model_ema'].items()}
    source = tmp_path / 'authors.pth'
    torch.save({**weights, 'epoch': 300}, source)
    paths = convert_checkpoint.main([str(source), '--key', key, '--out', str(tmp_path / 'converted')])
    authors = weights[key]
    dim = 8 * arch['embed_dim']

    # mmpretrain: strict load, logits of the authors' layout (norm -> mean pool -> head on stage-3 features)
    classifier = CLS_MODELS.build(dict(
        type='ImageClassifier', backbone=dict(type='VMamba', arch=arch, out_indices=(3,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=dim))).eval()
    ckpt = torch.load(paths['mmpretrain'], map_location='cpu', weights_only=True)
    classifier.load_state_dict(ckpt['state_dict'], strict=True)
    stage3 = {}
    classifier.backbone.layers[3].blocks[-1].register_forward_hook(lambda m, i, o: stage3.setdefault('x', o))
    x = torch.randn(2, 3, 64, 96)
    norm_w, norm_b, head_w, head_b = final_norm_and_head(authors)
    with torch.no_grad():
        logits = classifier(x, mode='tensor')
        expected = F.linear(F.layer_norm(stage3['x'], (dim,), norm_w, norm_b).mean((1, 2)), head_w, head_b)
        cls_features = classifier.backbone(x)[0]
    assert torch.allclose(logits, expected, rtol=1e-5, atol=1e-5)

    # mmdet: the backbone file through init_cfg, strictly, same stage-3 features
    detector_backbone = DET_MODELS.build(dict(type='VMamba', arch=arch, out_indices=(0, 1, 2, 3),
                                              init_cfg=dict(type='Pretrained', checkpoint=paths['backbone'])))
    detector_backbone.init_weights()
    with torch.no_grad():
        det_features = detector_backbone.eval()(x)
    assert torch.equal(det_features[3], cls_features)
    backbone = torch.load(paths['backbone'], map_location='cpu', weights_only=True)['state_dict']
    assert all(k.startswith('backbone.') for k in backbone) and 'backbone.outnorm3.weight' in backbone


def test_report_and_plain_keys(tmp_path, capsys):
    source = tmp_path / 'authors.pth'
    torch.save({'model': authors_state_dict(SMALL_V2, legacy=True)}, source)
    paths = convert_checkpoint.main([str(source), '--plain-keys', '--out', str(tmp_path / 'c')])
    out = capsys.readouterr().out
    assert 'renamed (' in out and 'classifier.head.weight -> head.fc.weight' in out
    assert 'outnorm0, outnorm1, outnorm2' in out
    backbone = torch.load(paths['backbone'], map_location='cpu', weights_only=True)['state_dict']
    assert 'outnorm3.weight' in backbone and not any(k.startswith(('backbone.', 'classifier.')) for k in backbone)
    classifier, _, report = convert_checkpoint.convert(authors_state_dict(SMALL_V2, legacy=True))
    legacy = [k for k in authors_state_dict(SMALL_V2, legacy=True)
              if '.ln_1.' in k or '.self_attention.' in k or k.startswith(('norm.', 'head.'))]
    assert len(report['renamed']) == len(legacy)
    assert set(classifier) >= {'head.fc.weight', 'head.fc.bias', 'backbone.outnorm3.weight'}


def test_verify_rejects_a_different_preset(tmp_path):
    source = tmp_path / 'authors.pth'
    torch.save({'model': authors_state_dict(SMALL_V2)}, source)
    with pytest.raises(ValueError, match='shape mismatches|missing keys'):
        convert_checkpoint.main([str(source), '--arch', 'tiny', '--out', str(tmp_path / 'c')])
