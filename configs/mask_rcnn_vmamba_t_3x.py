# Mask R-CNN + FPN, VMamba-T (tiny-s1l8), COCO 3x (36 epochs) with multi-scale training (short side 480..800 step 32,
# plus the resize/crop/resize branch), 8 GPUs x 2 images. Reference: box/mask AP 48.8/43.7.
_base_ = [
    './_base_/models/mask_rcnn_vmamba_fpn.py',
    './_base_/datasets/coco_instance_ms_crop.py',
    './_base_/schedules/mask_rcnn_adamw_3x.py',
    './_base_/default_runtime_det.py',
]

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
