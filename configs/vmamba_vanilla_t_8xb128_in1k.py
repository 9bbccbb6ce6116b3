# ImageNet-1K classification, Vanilla-VMamba-T (vanilla-tiny), 224x224, 300 epochs, 8x128. Reference top-1: 82.2.
_base_ = ['./vmamba_t_8xb128_in1k.py']

model = dict(backbone=dict(arch='vanilla-tiny', drop_path_rate=0.2), head=dict(in_channels=768))
