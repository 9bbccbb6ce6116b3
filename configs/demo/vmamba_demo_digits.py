# Demo: an mmpretrain ImageClassifier with a small VMamba (v2 blocks, depths 1-1-2-1, 32 channels, d_state 1) trained
# from scratch on real handwritten digits: scikit-learn's load_digits(), written by tools/make_demo_data.py as 32x32
# images with a stratified 80/20 train / test split (1438 / 359 images, 10 classes); minutes on a CPU.
# bash tools/run_demo.sh runs it; alone: bash tools/dist_train.sh configs/demo/vmamba_demo_digits.py 1
_base_ = [
    '../_base_/models/vmamba_in1k.py',
    '../_base_/schedules/vmamba_weight_decay.py',  # no decay on A_logs, Ds, dt_projs_bias, norms, biases
    '../_base_/default_runtime_cls.py',
]

demo_arch = dict(depths=(1, 1, 2, 1), embed_dim=32, d_state=1, ssm_ratio=2.0, gated=False, conv_bias=False,
                 mlp_ratio=4.0, downsample='v3', patch_embed='v2')
classes = tuple(str(digit) for digit in range(10))
data_root = 'data/demo/digits/'
image_size = 32  # the backbone's smallest input: 8x8 tokens in the first stage, 1x1 in the last
max_epochs = 8

# white-on-black grey digits: the training images' mean and standard deviation
data_preprocessor = dict(num_classes=len(classes), mean=[78.0] * 3, std=[83.0] * 3, to_rgb=False)
model = dict(
    backbone=dict(arch=dict(_delete_=True, **demo_arch), drop_path_rate=0.1, init_cfg=None),
    head=dict(num_classes=len(classes), in_channels=256),  # 8 x embed_dim channels in the last stage
    train_cfg=None)  # no Mixup / CutMix: one digit per image

# digits are not mirror-symmetric: no flips; small rotations and shifts, as in handwriting
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Rotate', magnitude_range=(0, 15), magnitude_std='inf', prob=0.5, pad_val=0, interpolation='bilinear'),
    dict(type='RandomCrop', crop_size=image_size, padding=3, pad_val=0),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
dataset = dict(type='CustomDataset', data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(dataset, ann_file='meta/train.txt', pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=120,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, ann_file='meta/test.txt', pipeline=test_pipeline))
test_evaluator = dict(type='Accuracy', topk=(1,))
test_cfg = dict()
# no validation during training: the demo evaluates the trained checkpoint once, with tools/test.py
val_dataloader = None
val_evaluator = None
val_cfg = None

# short from-scratch schedule: 8 epochs of 90 steps, AdamW lr 1e-3 for 16 images (2e-3 and 4e-3 learn less in 8
# epochs), one warmup epoch, cosine decay
train_cfg = dict(by_epoch=True, max_epochs=max_epochs)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs, convert_to_iter_based=True)
]
default_hooks = dict(
    logger=dict(interval=30),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
