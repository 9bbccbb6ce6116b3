import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_NUM_VAL = 3


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory) -> Path:
    """The demo's synthetic data sets (tools/make_demo_data.py), small: 8 training and 3 validation images."""
    out = tmp_path_factory.mktemp('demo_data')
    subprocess.run([sys.executable, 'tools/make_demo_data.py', '--out', str(out), '--num-train', '8', '--num-val',
                    str(DEMO_NUM_VAL)], cwd=ROOT, check=True, capture_output=True)
    return out


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
