"""The version and the dependency pins agree across version.py, requirements/, setup.py, the setup
script and the README's supported-versions table."""
import ast
import importlib.util
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def load_setup():
    spec = importlib.util.spec_from_file_location('mmvmamba_setup', ROOT / 'setup.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def package_version():
    text = (ROOT / 'mmvmamba' / 'version.py').read_text()
    return re.search(r"^__version__ = '([^']+)'", text, re.MULTILINE).group(1)


def readme_table():
    """{component: (supported, tested)} from the README's 'Supported versions' table."""
    text = (ROOT / 'README.md').read_text()
    section = text.split('## Supported versions', 1)[1].split('\n## ', 1)[0]
    rows = [line.strip('|').split('|') for line in section.splitlines() if line.startswith('|')]
    assert rows[0][0].strip() == 'Component' and set(rows[1][0]) <= set(' -')
    return {cells[0].strip(): (cells[1].strip(), cells[2].strip()) for cells in rows[2:]}


def requirements(name):
    return {req.name: req for req in map(Requirement, load_setup().read_requirements(name))}


def readme_form(req):
    """How the README writes a requirement's specifier: '2.1.0', '3.3.x' (a minor series), '>=1.5, <2' or '>=2.11'."""
    specs = {spec.operator: Version(spec.version) for spec in req.specifier}
    if set(specs) == {'=='}:
        return str(specs['=='])
    if set(specs) == {'>=', '<'}:
        low, high = specs['>='], specs['<']
        if high.release == (low.major, low.minor + 1, 0):
            return f'{low.major}.{low.minor}.x'
        return f'>={low}, <{high}'
    assert set(specs) == {'>='}, f'{req}: no README form for this specifier'
    return f">={specs['>=']}"


def test_version_is_in_setup_and_readme():
    version = package_version()
    assert re.fullmatch(r'\d+\.\d+\.\d+', version)
    assert load_setup().read_version() == version
    assert readme_table()['mmvmamba'][0] == version


@pytest.mark.parametrize('file,name', [('mminstall.txt', name) for name in
                                       ('mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain')] +
                         [('tests.txt', 'scikit-learn')])
def test_pins_match_readme(file, name):
    """The README's supported range (before any parenthesised note) is the requirement's, and its tested versions
    include the lowest the requirement allows."""
    req = requirements(file)[name]
    supported, tested = readme_table()[name]
    assert supported.split(' (')[0] == readme_form(req)
    lowest = min((Version(spec.version) for spec in req.specifier), key=lambda v: v.release)
    assert str(lowest) in tested, f'{name}: README says tested {tested!r}, requirements start at {lowest}'


def test_torch_pins_match_readme_and_setup_script():
    torch_req = requirements('runtime.txt')['torch']
    supported, tested = readme_table()['torch']
    assert supported.startswith(readme_form(torch_req))
    script = (ROOT / 'tools' / 'setup_env.sh').read_text()
    default = re.search(r'DEFAULT_TORCH=\(torch==(\S+) torchvision==(\S+)\)', script).group(1)
    assert torch_req.specifier.contains(default)
    assert f'default pin {default}' in supported and default in tested


def test_python_requirement_matches_readme():
    lowest = load_setup().PYTHON_REQUIRES.removeprefix('>=')
    supported, tested = readme_table()['Python']
    assert supported.split('–')[0] == lowest
    assert Version(tested) >= Version(lowest)


def test_setup_reads_the_requirement_files():
    tree = ast.parse((ROOT / 'setup.py').read_text())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup')
    keywords = {kw.arg: kw.value for kw in call.keywords}
    assert ast.unparse(keywords['install_requires']) == "read_requirements('runtime.txt')"
    extras = ast.unparse(keywords['extras_require'])
    for name in ('mminstall.txt', 'tests.txt', 'optional.txt'):
        assert f"read_requirements('{name}')" in extras

