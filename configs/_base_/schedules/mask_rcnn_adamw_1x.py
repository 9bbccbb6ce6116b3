# Mask R-CNN 1x: 12 epochs, AdamW lr 1e-4 (16 images per step: 8 GPUs x 2), weight decay 0.05, linear warmup over
# 1000 iterations from 0.001 x lr, lr x 0.1 after epochs 8 and 11.
_base_ = ['./vmamba_weight_decay.py']  # no decay on A_logs, Ds, dt_projs_bias, norms, biases

max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1)
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))

# the learning rate above is for 16 images per step; tools/train.py --auto-scale-lr rescales it
auto_scale_lr = dict(enable=False, base_batch_size=16)
