# UperNet, VMamba-S (small-s2l15), ADE20K 640x640 crops (short side 640), 160k iterations, 8 GPUs x 2 images.
_base_ = [
    './_base_/models/upernet_vmamba.py',
    './_base_/datasets/ade20k_640x640.py',
    './_base_/schedules/upernet_adamw_160k.py',
    './_base_/default_runtime_seg.py',
]
crop_size = (640, 640)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='small',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm_small_0229_ckpt_epoch_222.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
