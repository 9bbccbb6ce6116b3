# UperNet, VMamba-S (small-s2l15), ADE20K 512x512, 160k iterations. Reference mIoU: 50.6 SS / 51.2 MS.
_base_ = ['./upernet_vmamba_t_512x512_160k_ade20k.py']

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm_small_0229_ckpt_epoch_222.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
