# Mask R-CNN + FPN, VMamba-T (tiny-s1l8), COCO 1x (12 epochs), 8 GPUs x 2 images. Reference: box/mask AP 47.3/42.7.
# The backbone starts from the authors' ImageNet checkpoint (docs/data_preparation.md); train from scratch with
# --cfg-options model.backbone.init_cfg=None, or point elsewhere with model.backbone.init_cfg.checkpoint=PATH.
_base_ = [
    './_base_/models/mask_rcnn_vmamba_fpn.py',
    './_base_/datasets/coco_instance.py',
    './_base_/schedules/mask_rcnn_adamw_1x.py',
    './_base_/default_runtime_det.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
