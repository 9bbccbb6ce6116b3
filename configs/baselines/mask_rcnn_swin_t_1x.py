# Baseline for speed and memory comparisons: mmdet's Mask R-CNN Swin-T 1x (mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py)
# on the same detector, data and schedule as configs/mask_rcnn_vmamba_t_1x.py. Reference box/mask AP: 42.7/39.3.
# The ImageNet checkpoint is the Swin authors' (swin_tiny_patch4_window7_224.pth, see docs/data_preparation.md).
_base_ = [
    '../_base_/models/mask_rcnn_vmamba_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/mask_rcnn_adamw_1x.py',
    '../_base_/default_runtime_det.py',
]

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/swin_tiny_patch4_window7_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# mmdet's Swin recipe: no decay on position tables and norms
optim_wrapper = dict(
    paramwise_cfg=dict(
        _delete_=True,
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
        }))
