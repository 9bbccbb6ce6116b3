# Demo: UperNet with a small VMamba (v2 blocks, depths 1-1-2-1, 32 channels, d_state 1) trained from scratch on the
# synthetic shapes of tools/make_demo_data.py in ADE20K layout (background + 3 classes); minutes on a CPU.
# bash tools/run_demo.sh runs it; alone: bash tools/dist_train.sh configs/demo/upernet_vmamba_demo.py 1
_base_ = [
    '../_base_/models/upernet_vmamba.py',
    '../_base_/datasets/ade20k_512x512.py',
    '../_base_/schedules/upernet_adamw_160k.py',
    '../_base_/default_runtime_seg.py',
]

demo_arch = dict(depths=(1, 1, 2, 1), embed_dim=32, d_state=1, ssm_ratio=2.0, gated=False, conv_bias=False,
                 mlp_ratio=4.0, downsample='v3', patch_embed='v2')
classes = ('background', 'disc', 'square', 'triangle')
palette = [[120, 120, 120], [220, 20, 60], [0, 128, 255], [255, 200, 0]]
data_root = 'data/demo/ade/ADEChallengeData2016'
crop_size = (128, 128)
image_scale = (160, 160)
max_iters = 200

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch=dict(_delete_=True, **demo_arch), drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64, num_classes=len(classes)),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=len(classes)))

dataset = dict(type='BaseSegDataset', data_root=data_root, img_suffix='.jpg', seg_map_suffix='.png',
               reduce_zero_label=True, metainfo=dict(classes=classes, palette=palette))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=image_scale, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations', reduce_zero_label=True)],
            [dict(type='PackSegInputs')],
        ])
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
test_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
# no validation during training: the demo evaluates the trained checkpoint once, with tools/test.py
val_dataloader = None
val_evaluator = None
val_cfg = None

# short from-scratch schedule: a larger learning rate, warmup over 20 iterations, then poly decay
train_cfg = dict(max_iters=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=20, end=max_iters, by_epoch=False)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=100, max_keep_ckpts=2))
log_processor = dict(window_size=10)
randomness = dict(seed=0)
