# UperNet, VMamba-B (base-s2l15), ADE20K 640x640 crops (short side 640), 160k iterations.
_base_ = ['./upernet_vmamba_s_640x640_160k_ade20k.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm_base_0229_ckpt_epoch_237.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
