"""No checkpoint runs code: a malicious file is refused at every entry point, before anything in it runs.

Entry points: the backbone's ``init_cfg`` and ``pretrained=``, MMEngine's checkpoint loader (``load_from``,
``--resume``, the checkpoint under test), tools/train.py (``load_from``, ``--resume PATH``, ``--resume`` alone),
tools/test.py, tools/convert_checkpoint.py and the analysis tools' ``--checkpoint``. Checkpoints written by the tools
themselves load without any opt-in (see also tests/test_resume.py); ``--unsafe-load`` reads trusted old files.
"""
from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

import mmvmamba  # noqa: F401  (registers VMamba)
from mmvmamba.engine import CheckpointError, load_checkpoint_file
from mmvmamba.models.backbones.vmamba import VMamba
from tests.test_train_test_tools import CONFIGS, demo_options, run
from tests.test_vmamba_backbone import SMALL_V2, authors_state_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import convert_checkpoint  # noqa: E402


class RunsCode:
    """Unpickled, it calls ``exec(code)``: what a malicious checkpoint does."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def write_malicious(path: Path, marker: Path, zip_format: bool = True) -> Path:
    """A checkpoint-looking dict whose unpickling writes ``marker``: torch.save's zip format, or a bare pickle."""
    content = {'state_dict': {'backbone.patch_embed.0.weight': torch.zeros(1)},
               'meta': RunsCode(f'open({str(marker)!r}, "w").write("code from the checkpoint ran")')}
    if zip_format:
        torch.save(content, path)
    else:
        torch.save(content, path, _use_new_zipfile_serialization=False)
    return path


def files_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its content: compare before and after to see that none changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def malicious(tmp_path_factory) -> tuple[Path, Path]:
    """(a malicious zip checkpoint, the marker it would write). Its payload is live: an unsafe load of a twin writes
    the twin's marker."""
    folder = tmp_path_factory.mktemp('malicious')
    twin_marker = folder / 'twin_marker'
    torch.load(write_malicious(folder / 'twin.pth', twin_marker), weights_only=False)
    assert twin_marker.exists()
    return write_malicious(folder / 'malicious.pth', folder / 'marker'), folder / 'marker'


def refused(message: str, path: Path) -> bool:
    return f"Refusing to load '{path}'" in message and 'exec' in message and '--unsafe-load' in message


# in-process entry points: each loads ``path`` the way its user would and returns the error message
def via_init_cfg(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        VMamba(SMALL_V2, init_cfg=dict(type='Pretrained', checkpoint=str(path))).init_weights()
    return str(info.value)


def via_pretrained(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        VMamba(SMALL_V2, pretrained=str(path)).init_weights()
    return str(info.value)


def via_mmengine_loader(path: Path) -> str:
    """MMEngine's loader, which load_from, resume and the checkpoint under test go through."""
    from mmengine.runner import load_checkpoint
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(torch.nn.Linear(1, 1), str(path))
    return str(info.value)


def via_converter(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint.main([str(path), '--out', str(path.parent / 'converted')])
    return str(info.value)


IN_PROCESS: dict[str, Callable[[Path], str]] = {
    'init_cfg': via_init_cfg, 'pretrained': via_pretrained, 'mmengine_loader': via_mmengine_loader,
    'convert_checkpoint': via_converter}


# the command lines: each returns the failed run's output
def train_args(data: Path, work: Path, *extra: str) -> list[str]:
    return [sys.executable, 'tools/train.py', CONFIGS['upernet'], '--work-dir', str(work), *extra,
            '--cfg-options', *demo_options('upernet', data, iters=2)]


def tool_train_load_from(path: Path, data: Path, work: Path) -> str:
    return run(train_args(data, work) + [f'load_from={path}'], succeeds=False)


def tool_train_resume(path: Path, data: Path, work: Path) -> str:
    return run(train_args(data, work, '--resume', str(path)), succeeds=False)


def tool_test(path: Path, data: Path, work: Path) -> str:
    return run([sys.executable, 'tools/test.py', CONFIGS['upernet'], str(path), '--work-dir', str(work),
                '--cfg-options', *demo_options('upernet', data, iters=2)], succeeds=False)


def tool_analysis(path: Path, data: Path, work: Path) -> str:
    return run([sys.executable, 'tools/analysis/activation_map.py', '--arch', 'tiny', '--checkpoint', str(path),
                '--out', str(work / 'map.png')], succeeds=False)


COMMAND_LINES: dict[str, Callable[[Path, Path, Path], str]] = {
    'train_load_from': tool_train_load_from, 'train_resume': tool_train_resume, 'test': tool_test,
    'analysis': tool_analysis}


@pytest.mark.parametrize('zip_format', [True, False], ids=['torch.save', 'legacy_pickle'])
@pytest.mark.parametrize('entry', sorted(IN_PROCESS))
def test_malicious_checkpoint_refused_in_process(entry, zip_format, tmp_path):
    marker = tmp_path / 'marker'
    path = write_malicious(tmp_path / 'malicious.pth', marker, zip_format)
    before = files_digest(tmp_path)
    assert refused(IN_PROCESS[entry](path), path)
    assert not marker.exists() and files_digest(tmp_path) == before


@pytest.mark.parametrize('entry', sorted(COMMAND_LINES))
def test_malicious_checkpoint_refused_by_the_tools(entry, malicious, demo_data, tmp_path):
    path, marker = malicious
    before = files_digest(path.parent)
    output = COMMAND_LINES[entry](path, demo_data, tmp_path / 'work')
    assert refused(output, path), output[-3000:]
    assert not marker.exists() and files_digest(path.parent) == before


def test_malicious_last_checkpoint_refused_by_auto_resume(malicious, demo_data, tmp_path):
    """``--resume`` alone skips the malicious newest checkpoint, says why, and finds no other to resume from."""
    path, marker = malicious
    work = tmp_path / 'work'
    work.mkdir()
    planted = work / 'iter_2.pth'
    planted.write_bytes(path.read_bytes())
    (work / 'last_checkpoint').write_text(str(planted))
    before = files_digest(work)
    output = run(train_args(demo_data, work, '--resume'), succeeds=False)
    assert f'skipping {planted}' in output and refused(output, planted), output[-3000:]
    assert 'none of the checkpoints' in output and 'Remove them to train from the start' in output
    assert not marker.exists() and not (work / 'marker').exists()
    assert {k: v for k, v in files_digest(work).items() if k in before} == before


def test_unsafe_load_reads_a_trusted_file_with_other_objects(tmp_path):
    """--unsafe-load: a trusted old file holding a non-weights object (the authors' training code stores its config
    object) converts into tensors-only files; without the flag it is refused."""
    source = tmp_path / 'authors.pth'
    torch.save({'model': authors_state_dict(SMALL_V2), 'config': RunsCode('pass')}, source)
    with pytest.raises(CheckpointError, match='Refusing to load'):
        convert_checkpoint.main([str(source), '--out', str(tmp_path / 'refused')])
    paths = convert_checkpoint.main([str(source), '--unsafe-load', '--out', str(tmp_path / 'converted')])
    for path in paths.values():
        assert load_checkpoint_file(path)['state_dict']
    with pytest.raises(CheckpointError, match='Refusing to load'):  # the opt-in ended with the conversion
        load_checkpoint_file(source)


class FetchesAttribute:
    """Unpickled, it calls ``getattr(owner, name)``, which MMEngine's checkpoints use for HistoryBuffer.min & co."""

    def __init__(self, owner: object, name: str):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


def test_getattr_is_allowed_for_history_buffer_statistics_only(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save({'mean': FetchesAttribute(HistoryBuffer, 'mean')}, path)
    assert load_checkpoint_file(path)['mean'] is HistoryBuffer.mean
    for owner, name in ((HistoryBuffer, 'update'), (HistoryBuffer, '__init__'), (np.ndarray, 'tofile')):
        torch.save({'attribute': FetchesAttribute(owner, name)}, path)
        with pytest.raises(CheckpointError, match=f"Refusing to load .*getattr.*'{name}'.*--unsafe-load"):
            load_checkpoint_file(path)


def test_mmengine_checkpoint_types_load_without_opt_in(tmp_path):
    """What MMEngine's checkpoints hold besides tensors (numpy arrays and scalars, HistoryBuffer) is allowed."""
    buffer = HistoryBuffer()
    buffer.update(0.5)
    content = {'meta': {'seed': np.int64(3), 'scale': np.float32(0.5), 'palette': np.zeros((2, 3), np.uint8)},
               'message_hub': {'log_scalars': {'train/loss': buffer}}, 'state_dict': {'w': torch.ones(2)}}
    path = tmp_path / 'mmengine.pth'
    torch.save(content, path)
    loaded = load_checkpoint_file(path)
    assert loaded['meta']['seed'] == 3 and loaded['meta']['palette'].shape == (2, 3)
    assert loaded['message_hub']['log_scalars']['train/loss'].current() == 0.5
