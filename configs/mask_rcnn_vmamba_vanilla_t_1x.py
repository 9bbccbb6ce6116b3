# Mask R-CNN + FPN, Vanilla-VMamba-T (vanilla-tiny, the first version), COCO 1x. Reference: box/mask AP 46.5/42.1.
_base_ = ['./mask_rcnn_vmamba_t_1x.py']

model = dict(
    backbone=dict(
        arch='vanilla-tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssmtiny_dp01_ckpt_epoch_292.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
