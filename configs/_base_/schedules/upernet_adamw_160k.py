# UperNet 160k iterations: AdamW lr 6e-5 (16 images per step: 8 GPUs x 2), weight decay 0.01, linear warmup over
# 1500 iterations from 1e-6 x lr, then poly decay (power 1) to 0 at 160k; validation and checkpoints every 16k.
_base_ = ['./vmamba_weight_decay.py']  # no decay on A_logs, Ds, dt_projs_bias, norms, biases

train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01))

auto_scale_lr = dict(enable=False, base_batch_size=16)
