# UperNet, Vanilla-VMamba-T (vanilla-tiny), ADE20K 512x512, 160k. Reference mIoU: 47.3 SS / 48.3 MS.
_base_ = ['./upernet_vmamba_t_512x512_160k_ade20k.py']

model = dict(
    backbone=dict(
        arch='vanilla-tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssmtiny_dp01_ckpt_epoch_292.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
