# ImageNet-1K classifier: VMamba (its outnorm3 is the authors' classifier.norm) -> global average pooling -> linear
# head, label smoothing 0.1, Mixup 0.8 / CutMix 1.0 (VMamba-T; the size configs override arch, drop path, in_channels).
model = dict(
    type='ImageClassifier',
    backbone=dict(type='VMamba', arch='tiny', out_indices=(3,), drop_path_rate=0.2),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        cal_acc=False),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
