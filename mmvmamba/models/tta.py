"""Flip test-time augmentation for instance segmentation (Mask R-CNN): boxes and masks of all views, merged by NMS.

mmdet 3.3's ``DetTTAModel`` merges boxes only and refuses predictions with masks. ``DetInstanceTTAModel`` undoes
each view's flip on its boxes and masks, concatenates the views and keeps the NMS survivors with their own masks.
Predictions without masks are merged exactly as ``DetTTAModel`` does.
"""
from __future__ import annotations

import torch
from mmengine.model import BaseTTAModel
from mmengine.registry import MODELS
from mmengine.structures import InstanceData

FLIP_DIMS = {'horizontal': (-1,), 'vertical': (-2,), 'diagonal': (-2, -1)}


def flip_boxes(boxes: torch.Tensor, shape: tuple[int, int], direction: str) -> torch.Tensor:
    """Mirror (x1, y1, x2, y2) boxes in an image of size ``shape`` (h, w)."""
    height, width = shape
    flipped = boxes.clone()
    if direction in ('horizontal', 'diagonal'):
        flipped[:, 0::4] = width - boxes[:, 2::4]
        flipped[:, 2::4] = width - boxes[:, 0::4]
    if direction in ('vertical', 'diagonal'):
        flipped[:, 1::4] = height - boxes[:, 3::4]
        flipped[:, 3::4] = height - boxes[:, 1::4]
    return flipped


@MODELS.register_module()
class DetInstanceTTAModel(BaseTTAModel):
    """Merge the flipped views of a detector or instance segmentor (``tta_model`` of the Mask R-CNN configs).

    Args:
        tta_cfg: ``dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)``.
    """

    def __init__(self, tta_cfg: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.tta_cfg = tta_cfg or dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)

    def merge_preds(self, data_samples_list: list[list]) -> list:
        return [self._merge_views(views) for views in data_samples_list]

    def _merge_views(self, views: list):
        from mmcv.ops import batched_nms

        boxes, scores, labels, masks = [], [], [], []
        with_masks = views[0].pred_instances.get('masks') is not None
        for view in views:
            pred = view.pred_instances
            view_boxes, view_masks = pred.bboxes, pred.get('masks')
            if view.metainfo.get('flip', False):
                direction = view.metainfo['flip_direction']
                view_boxes = flip_boxes(view_boxes, view.metainfo['ori_shape'], direction)
                if with_masks:
                    view_masks = view_masks.flip(FLIP_DIMS[direction])
            boxes.append(view_boxes)
            scores.append(pred.scores)
            labels.append(pred.labels)
            if with_masks:
                masks.append(view_masks)
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        merged = views[0]
        if boxes.numel() == 0:
            merged.pred_instances = InstanceData(bboxes=boxes, scores=scores, labels=labels,
                                                 **({'masks': torch.cat(masks)} if with_masks else {}))
            return merged
        dets, keep = batched_nms(boxes, scores, labels, self.tta_cfg['nms'])
        keep = keep[:self.tta_cfg['max_per_img']]
        dets = dets[:self.tta_cfg['max_per_img']]
        result = InstanceData(bboxes=dets[:, :-1], scores=dets[:, -1], labels=labels[keep])
        if with_masks:
            result.masks = torch.cat(masks)[keep]
        merged.pred_instances = result
        return merged
