"""Single source of the package version (read by setup.py and the docs test)."""
__version__ = '0.1.0'
