# UperNet with VMamba-T exactly as configs/upernet_vmamba_t_512x512_160k_ade20k.py (512x512 crops, 2 images per GPU,
# 150 classes), from scratch on the synthetic shapes of tools/make_demo_data.py (ADE20K layout): multi-GPU and
# multi-node checks without ADE20K (docs/training.md, "Multi-GPU and multi-node"). 200 iterations, a checkpoint
# every 100, validation at the end. bash tools/dist_train.sh configs/demo/upernet_vmamba_t_demo_data.py 8
_base_ = ['../upernet_vmamba_t_512x512_160k_ade20k.py']

data_root = 'data/demo/ade/ADEChallengeData2016'

model = dict(backbone=dict(init_cfg=None))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=200, val_interval=200)
default_hooks = dict(checkpoint=dict(interval=100))
