# Mask R-CNN + FPN, Vanilla-VMamba-S (vanilla-small, the first version), COCO 1x. Reference: box/mask AP 48.2/43.0.
_base_ = ['./mask_rcnn_vmamba_s_1x.py']

model = dict(
    backbone=dict(
        arch='vanilla-small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssmsmall_dp03_ckpt_epoch_238.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
