# Mask R-CNN + FPN, Vanilla-VMamba-B (vanilla-base, the first version), COCO 3x (no published reference result).
_base_ = ['./mask_rcnn_vmamba_b_3x.py']

model = dict(
    backbone=dict(
        arch='vanilla-base',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssmbase_dp06_ckpt_epoch_241.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
