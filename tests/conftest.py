import pytest


def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA GPU (skipped when CUDA is not available)')


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker('gpu')]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU: torch.cuda.is_available() is False')
    for item in gpu_items:
        item.add_marker(skip)
