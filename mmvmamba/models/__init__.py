from .backbones import VMamba

__all__ = ['VMamba']
