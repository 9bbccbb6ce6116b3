# Mask R-CNN + FPN, VMamba-B (base-s2l15), COCO 3x multi-scale (no published reference result).
_base_ = ['./mask_rcnn_vmamba_t_3x.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm_base_0229_ckpt_epoch_237.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
