"""The authors' ImageNet classifier in plain PyTorch, for the tools that run a preset without a config."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .backbones.vmamba import VMamba


class VMambaClassifier(nn.Module):
    """VMamba (its ``outnorm3`` is the authors' ``classifier.norm``) -> global average pool -> linear head.

    Same layers, parameters and FLOPs as the mmpretrain config's ``ImageClassifier``; ``forward`` takes images and
    returns logits (B, ``num_classes``).
    """

    def __init__(self, arch: str | dict = 'tiny', num_classes: int = 1000, **backbone_kwargs: Any):
        super().__init__()
        self.backbone = VMamba(arch, out_indices=(3,), **backbone_kwargs)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(self.backbone.dims[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(x)[0]).flatten(1))
