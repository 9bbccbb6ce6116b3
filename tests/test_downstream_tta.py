"""DetInstanceTTAModel (tta_model of the Mask R-CNN configs): flipped views are mapped back and merged with masks."""
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from mmengine.structures import InstanceData

import mmvmamba  # noqa: F401  (registers DetInstanceTTAModel)


class NoModel(BaseModel):
    """Stands in for the detector: only merge_preds is exercised."""

    def forward(self, inputs, data_samples=None, mode='tensor'):
        raise NotImplementedError


def view(boxes, scores, labels, masks, flip: str | None):
    """A DetDataSample of one view of a 10x20 image, predicted in that view's (flipped) coordinates."""
    sample = DetDataSample(metainfo=dict(ori_shape=(10, 20), flip=flip is not None,
                                                          flip_direction=flip))
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), scores=torch.tensor(scores),
        labels=torch.tensor(labels, dtype=torch.long),
        masks=torch.stack(masks) if masks else torch.zeros(0, 10, 20, dtype=torch.bool))
    return sample


def box_mask(x0, y0, x1, y1):
    mask = torch.zeros(10, 20, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize('direction', ['horizontal', 'vertical', 'diagonal'])
def test_flipped_views_merge_with_their_masks(direction):
    tta = MODELS.build(dict(type='DetInstanceTTAModel', module=NoModel(),
                            tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)))
    dims = {'horizontal': [-1], 'vertical': [-2], 'diagonal': [-2, -1]}[direction]

    def flip_box(x0, y0, x1, y1):
        if direction in ('horizontal', 'diagonal'):
            x0, x1 = 20 - x1, 20 - x0
        if direction in ('vertical', 'diagonal'):
            y0, y1 = 10 - y1, 10 - y0
        return [x0, y0, x1, y1]

    plain = view([[2, 3, 6, 7]], [0.9], [1], [box_mask(2, 3, 6, 7)], None)
    # the flipped view sees the same object (lower score) and one more, both in flipped coordinates
    flipped = view([flip_box(2, 3, 6, 7), flip_box(10, 1, 16, 9)], [0.8, 0.7], [1, 2],
                   [box_mask(2, 3, 6, 7).flip(dims), box_mask(10, 1, 16, 9).flip(dims)], direction)
    (merged,) = tta.merge_preds([[plain, flipped]])
    pred = merged.pred_instances
    assert pred.bboxes.tolist() == [[2, 3, 6, 7], [10, 1, 16, 9]]
    assert pred.scores.tolist() == pytest.approx([0.9, 0.7])
    assert pred.labels.tolist() == [1, 2]
    assert torch.equal(pred.masks[0], box_mask(2, 3, 6, 7)) and torch.equal(pred.masks[1], box_mask(10, 1, 16, 9))


def test_views_without_detections():
    tta = MODELS.build(dict(type='DetInstanceTTAModel', module=NoModel()))
    (merged,) = tta.merge_preds([[view([], [], [], [], None), view([], [], [], [], 'horizontal')]])
    assert len(merged.pred_instances) == 0 and merged.pred_instances.masks.shape == (0, 10, 20)
