# ImageNet-1K classification, VMamba-S (small-s2l15), 224x224, 300 epochs, 8 GPUs x 128 images. Reference top-1: 83.6.
_base_ = ['./vmamba_t_8xb128_in1k.py']

model = dict(backbone=dict(arch='small', drop_path_rate=0.3), head=dict(in_channels=768))
