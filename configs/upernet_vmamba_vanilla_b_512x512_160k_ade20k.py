# UperNet, Vanilla-VMamba-B (vanilla-base), ADE20K 512x512, 160k. Reference mIoU: 50.0 SS / 51.3 MS.
_base_ = ['./upernet_vmamba_b_512x512_160k_ade20k.py']

model = dict(
    backbone=dict(
        arch='vanilla-base',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssmbase_dp06_ckpt_epoch_241.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
