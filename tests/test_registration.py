"""type='VMamba' from mmdet, mmseg and mmpretrain; the authors' classifier layout in mmpretrain."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mmvmamba  # noqa: F401  (registers VMamba)
from mmvmamba.models.checkpoint import classifier_state_for_mmpretrain
from tests.test_vmamba_backbone import SMALL_V2, authors_state_dict


@pytest.mark.parametrize('registry_module', ['mmdet.registry', 'mmseg.registry', 'mmpretrain.registry'])
def test_builds_from_each_downstream_registry(registry_module):
    registry = pytest.importorskip(registry_module).MODELS
    model = registry.build(dict(type='VMamba', arch=SMALL_V2, out_indices=(0, 3)))
    assert type(model).__name__ == 'VMamba'
    assert [o.shape[1] for o in model(torch.randn(1, 3, 64, 64))] == [16, 128]


def test_import_needs_no_downstream_package():
    code = ('import sys\n'
            'for name in ("mmdet", "mmseg", "mmpretrain", "mmcv"):\n'
            '    sys.modules[name] = None\n'
            'import mmvmamba\n'
            'from mmengine.registry import MODELS\n'
            'model = MODELS.build(dict(type="VMamba", arch="tiny", depths=(1, 1, 1, 1)))\n'
            'print(type(model).__name__)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'VMamba'


def test_mmpretrain_head_applies_the_authors_classifier_norm_pool_head_to_stage3_features():
    """The classifier key mapping only: the converted state in an mmpretrain ImageClassifier gives the logits of the
    authors' norm -> average pool -> head on the same stage-3 features (the body's equality with the authors' model
    is tests/test_fidelity.py)."""
    from mmpretrain.registry import MODELS
    classifier = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='VMamba', arch=SMALL_V2, out_indices=(3,)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=128))).eval()
    authors = authors_state_dict(SMALL_V2, legacy=True)
    state, report = classifier_state_for_mmpretrain(authors)
    classifier.load_state_dict(state, strict=True)
    assert 'classifier.head.weight -> head.fc.weight' in report['mapped']

    stage3 = {}
    classifier.backbone.layers[3].blocks[-1].register_forward_hook(lambda m, i, o: stage3.setdefault('x', o))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = classifier(x, mode='tensor')
        # the authors' classifier: norm -> global average pool -> head, on the stage-3 features
        features = F.layer_norm(stage3['x'], (128,), authors['norm.weight'], authors['norm.bias'])
        expected = F.linear(features.mean((1, 2)), authors['head.weight'], authors['head.bias'])
    assert torch.allclose(logits, expected, rtol=1e-5, atol=1e-5)
