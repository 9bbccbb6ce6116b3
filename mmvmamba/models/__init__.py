from .backbones import VMamba
from .classifier import VMambaClassifier
from .tta import DetInstanceTTAModel

__all__ = ['DetInstanceTTAModel', 'VMamba', 'VMambaClassifier']
