# Demo: Mask R-CNN + FPN with a small VMamba (v2 blocks, depths 1-1-2-1, 32 channels, d_state 1) trained from scratch
# on the synthetic shapes of tools/make_demo_data.py (3 classes, images resized to 128 px); minutes on a CPU.
# bash tools/run_demo.sh runs it; alone: bash tools/dist_train.sh configs/demo/mask_rcnn_vmamba_demo.py 1
_base_ = [
    '../_base_/models/mask_rcnn_vmamba_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/mask_rcnn_adamw_1x.py',
    '../_base_/default_runtime_det.py',
]

demo_arch = dict(depths=(1, 1, 2, 1), embed_dim=32, d_state=1, ssm_ratio=2.0, gated=False, conv_bias=False,
                 mlp_ratio=4.0, downsample='v3', patch_embed='v2')
classes = ('disc', 'square', 'triangle')
data_root = 'data/demo/coco/'
image_scale = (128, 128)
max_iters = 200

model = dict(
    backbone=dict(arch=dict(_delete_=True, **demo_arch), drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=64, num_classes=len(classes))),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=image_scale, keep_ratio=True)],
            [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
            [dict(type='LoadAnnotations', with_bbox=True, with_mask=True)],
            [dict(type='PackDetInputs',
                  meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                             'flip_direction'))],
        ])
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), filter_cfg=dict(min_size=8),
                 pipeline=train_pipeline))
test_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
# no validation during training: the demo evaluates the trained checkpoint once, with tools/test.py
val_dataloader = None
val_evaluator = None
val_cfg = None

# short from-scratch schedule: a larger learning rate, warmup over 50 iterations, decay after 150 and 180
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[150, 180], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=10.0))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=100, max_keep_ckpts=2))
log_processor = dict(window_size=10, by_epoch=False)
randomness = dict(seed=0)
