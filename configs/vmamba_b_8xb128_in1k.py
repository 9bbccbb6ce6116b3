# ImageNet-1K classification, VMamba-B (base-s2l15), 224x224, 300 epochs, 8 GPUs x 128 images. Reference top-1: 83.9.
_base_ = ['./vmamba_t_8xb128_in1k.py']

model = dict(backbone=dict(arch='base', drop_path_rate=0.6), head=dict(in_channels=1024))
