# ImageNet-1K: 300 epochs, AdamW betas (0.9, 0.999) lr 1e-3 for 1024 images per step (8 GPUs x 128; the authors'
# 5e-4 x batch / 512), weight decay 0.05, grad-norm clip 5.0, 20 warmup epochs from 5e-7, cosine to 5e-6 (both per
# iteration), EMA of the weights with decay 0.9999 per iteration.
_base_ = ['./vmamba_weight_decay.py']  # no decay on A_logs, Ds, dt_projs_bias, norms, biases

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05),
    clip_grad=dict(max_norm=5.0))

param_scheduler = [
    dict(type='LinearLR', start_factor=5e-4, by_epoch=True, begin=0, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=5e-6, by_epoch=True, begin=20, end=300, convert_to_iter_based=True)
]

train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()

custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]

auto_scale_lr = dict(base_batch_size=1024)
