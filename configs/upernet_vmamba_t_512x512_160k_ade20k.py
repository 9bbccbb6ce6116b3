# UperNet, VMamba-T (tiny-s1l8), ADE20K 512x512, 160k iterations, 8 GPUs x 2 images.
# Reference mIoU: 47.9 single-scale / 48.8 multi-scale + flip (tools/test.py --aug-test).
# The backbone starts from the authors' ImageNet checkpoint (docs/data_preparation.md); train from scratch with
# --cfg-options model.backbone.init_cfg=None, or point elsewhere with model.backbone.init_cfg.checkpoint=PATH.
_base_ = [
    './_base_/models/upernet_vmamba.py',
    './_base_/datasets/ade20k_512x512.py',
    './_base_/schedules/upernet_adamw_160k.py',
    './_base_/default_runtime_seg.py',
]
crop_size = (512, 512)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
