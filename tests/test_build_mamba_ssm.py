"""tools/build_mamba_ssm.py on the CPU: the architecture list it edits in mamba_ssm's setup, and its refusals."""
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
import build_mamba_ssm  # noqa: E402

# the shape of mamba_ssm 2.3's setup.py around its architecture flags
SETUP = '''
        cc_flag.append("-gencode")
        cc_flag.append("arch=compute_80,code=sm_80")
        if bare_metal_version >= Version("11.8"):
            cc_flag.append("-gencode")
            cc_flag.append("arch=compute_90,code=sm_90")
        if bare_metal_version >= Version("12.8"):
            cc_flag.append("-gencode")
            cc_flag.append("arch=compute_100,code=sm_100")
'''


def test_only_the_asked_architecture_is_left_and_the_setup_still_parses():
    edited = build_mamba_ssm.keep_one_architecture(SETUP, '90')
    assert 'arch=compute_90,code=sm_90' in edited
    assert 'compute_80' not in edited and 'compute_100' not in edited
    assert edited.count('cc_flag.append("-gencode")') == 1
    compile('if True:\n' + edited.replace('bare_metal_version', '1').replace('Version("11.8")', '0')
            .replace('Version("12.8")', '0'), 'setup.py', 'exec')  # no if-block left empty


def test_an_architecture_mamba_ssm_does_not_build_is_refused_with_the_list():
    with pytest.raises(ValueError, match=r'architecture 75 is not among those mamba_ssm builds for \(80, 90, 100\)'):
        build_mamba_ssm.keep_one_architecture(SETUP, '75')


def test_a_setup_without_the_expected_flags_is_refused():
    with pytest.raises(RuntimeError, match='does not list its architectures'):
        build_mamba_ssm.keep_one_architecture('setup(name="x")\n', '90')


def test_an_archive_that_is_not_a_source_release_is_refused(tmp_path):
    (tmp_path / 'notes.txt').write_text('not a package')
    archive = tmp_path / 'other.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(tmp_path / 'notes.txt', arcname='notes.txt')
    with pytest.raises(ValueError, match='is not a mamba_ssm source release'):
        build_mamba_ssm.unpack(archive, tmp_path / 'out')
