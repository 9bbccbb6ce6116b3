# ImageNet-1K classification, Vanilla-VMamba-B (vanilla-base), 224x224, 300 epochs, 8x128. Reference top-1: 83.7.
_base_ = ['./vmamba_t_8xb128_in1k.py']

model = dict(backbone=dict(arch='vanilla-base', drop_path_rate=0.6), head=dict(in_channels=1024))
