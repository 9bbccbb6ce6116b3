# ImageNet-1K classification, VMamba-T (tiny-s1l8), 224x224, 300 epochs, 8 GPUs x 128 images. Reference top-1: 82.6.
_base_ = [
    './_base_/models/vmamba_in1k.py',
    './_base_/datasets/imagenet_bs128_vmamba_224.py',
    './_base_/schedules/imagenet_adamw_300e.py',
    './_base_/default_runtime_cls.py',
]

model = dict(backbone=dict(arch='tiny', drop_path_rate=0.2), head=dict(in_channels=768))
