from .backbones import VMamba
from .tta import DetInstanceTTAModel

__all__ = ['DetInstanceTTAModel', 'VMamba']
