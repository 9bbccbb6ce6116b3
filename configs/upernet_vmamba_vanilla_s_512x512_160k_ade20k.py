# UperNet, Vanilla-VMamba-S (vanilla-small), ADE20K 512x512, 160k. Reference mIoU: 49.5 SS / 50.5 MS.
_base_ = ['./upernet_vmamba_s_512x512_160k_ade20k.py']

model = dict(
    backbone=dict(
        arch='vanilla-small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssmsmall_dp03_ckpt_epoch_238.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
