from .vmamba import ARCH_ALIASES, ARCH_FIELDS, ARCH_PRESETS, VMamba

__all__ = ['ARCH_ALIASES', 'ARCH_FIELDS', 'ARCH_PRESETS', 'VMamba']
