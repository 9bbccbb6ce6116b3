# UperNet, VMamba-B (base-s2l15), ADE20K 512x512, 160k iterations. Reference mIoU: 51.0 SS / 51.6 MS.
_base_ = ['./upernet_vmamba_t_512x512_160k_ade20k.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm_base_0229_ckpt_epoch_237.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
