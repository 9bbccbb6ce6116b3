# Baseline for speed and memory comparisons: mmseg's UperNet Swin-T (swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-
# 160k_ade20k-512x512.py) on the same heads, data and schedule as configs/upernet_vmamba_t_512x512_160k_ade20k.py.
# Reference mIoU: 44.4 SS / 45.8 MS.
_base_ = [
    '../_base_/models/upernet_vmamba.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/schedules/upernet_adamw_160k.py',
    '../_base_/default_runtime_seg.py',
]
crop_size = (512, 512)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        pretrain_img_size=224,
        embed_dims=96,
        patch_size=4,
        window_size=7,
        mlp_ratio=4,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        strides=(4, 2, 2, 2),
        out_indices=(0, 1, 2, 3),
        qkv_bias=True,
        qk_scale=None,
        patch_norm=True,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.3,
        use_abs_pos_embed=False,
        act_cfg=dict(type='GELU'),
        norm_cfg=dict(type='LN', requires_grad=True),
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/swin_tiny_patch4_window7_224_20220317-1cdeb081.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

# mmseg's Swin recipe: no decay on position tables and norms
optim_wrapper = dict(
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
        }))
