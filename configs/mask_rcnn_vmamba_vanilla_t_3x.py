# Mask R-CNN + FPN, Vanilla-VMamba-T (vanilla-tiny, the first version), COCO 3x. Reference: box/mask AP 48.5/43.2.
_base_ = ['./mask_rcnn_vmamba_t_3x.py']

model = dict(
    backbone=dict(
        arch='vanilla-tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssmtiny_dp01_ckpt_epoch_292.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
