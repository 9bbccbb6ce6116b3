# ImageNet-1K classification, Vanilla-VMamba-S (vanilla-small), 224x224, 300 epochs, 8x128. Reference top-1: 83.5.
_base_ = ['./vmamba_t_8xb128_in1k.py']

model = dict(backbone=dict(arch='vanilla-small', drop_path_rate=0.3), head=dict(in_channels=768))
