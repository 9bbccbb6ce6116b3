# Mask R-CNN + FPN, VMamba-S (small-s2l15), COCO 3x multi-scale. Reference: box/mask AP 49.9/44.2.
_base_ = ['./mask_rcnn_vmamba_t_3x.py']

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm_small_0229_ckpt_epoch_222.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
