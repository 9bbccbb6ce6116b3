"""mmvmamba: VMamba (the Visual State Space Model) for OpenMMLab.

Importing the package registers the ``VMamba`` backbone in MMEngine's root ``MODELS`` registry, which mmdet, mmseg and
mmpretrain all search, so ``type='VMamba'`` works in their configs (``custom_imports=dict(imports=['mmvmamba'])``).
"""
import importlib.util
import pathlib
import sys

from .version import __version__


def _import_ops_from_clone() -> None:
    """Make the repository's ``ops/`` importable as ``mmvmamba.ops`` when running from a clone without install."""
    if importlib.util.find_spec(f'{__name__}.ops') is not None:
        return
    ops_dir = pathlib.Path(__file__).resolve().parent.parent / 'ops'
    spec = importlib.util.spec_from_file_location(f'{__name__}.ops', ops_dir / '__init__.py',
                                                  submodule_search_locations=[str(ops_dir)])
    if spec is None:
        raise ImportError(f'mmvmamba.ops is not installed and no ops/ folder is next to the package ({ops_dir}); '
                          f'install mmvmamba with pip install -e .')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


_import_ops_from_clone()

from .models import VMamba  # noqa: E402  (registers the backbone)

__all__ = ['VMamba', '__version__']
