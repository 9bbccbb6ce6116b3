import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
PYTHON_REQUIRES = '>=3.10'


def read_version():
    """The version from mmvmamba/version.py, without importing the package."""
    text = (ROOT / 'mmvmamba' / 'version.py').read_text()
    return re.search(r"^__version__ = '([^']+)'", text, re.MULTILINE).group(1)


def read_requirements(name):
    """Requirement lines of requirements/<name>, comments and blank lines dropped."""
    lines = (ROOT / 'requirements' / name).read_text().splitlines()
    return [req for req in (line.split('#')[0].strip() for line in lines) if req]


def list_packages():
    """mmvmamba* from mmvmamba/, plus mmvmamba.ops and its subpackages from ops/."""
    ops = ['mmvmamba.ops'] + [f'mmvmamba.ops.{name}' for name in find_packages('ops')]
    return find_packages(include=['mmvmamba', 'mmvmamba.*']) + ops


if __name__ == '__main__':
    setup(
        name='mmvmamba',
        version=read_version(),
        description='VMamba (Visual State Space Model) as an OpenMMLab extension',
        long_description=(ROOT / 'README.md').read_text(encoding='utf-8'),
        long_description_content_type='text/markdown',
        license='Apache-2.0',
        python_requires=PYTHON_REQUIRES,
        packages=list_packages(),
        package_dir={'mmvmamba.ops': 'ops'},
        install_requires=read_requirements('runtime.txt'),
        extras_require={
            'mim': read_requirements('mminstall.txt'),
            'optional': read_requirements('optional.txt'),
            'tests': read_requirements('tests.txt'),
        },
        classifiers=[
            'Programming Language :: Python :: 3',
            'Programming Language :: Python :: 3.10',
            'Programming Language :: Python :: 3.11',
            'Programming Language :: Python :: 3.12',
        ],
        zip_safe=False,
    )
