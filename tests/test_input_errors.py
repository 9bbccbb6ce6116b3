"""Bad input gets an error that names what is wrong and what to do, at each entry point, and changes no file.

Errors: a file that is no checkpoint, a truncated checkpoint, a checkpoint of another model, a missing checkpoint, a
missing config, the demo config before its data exists, non-float image tensors.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mmvmamba.models.backbones.vmamba import VMamba
from tests.test_checkpoint_safety import (
    IN_PROCESS,
    files_digest,
    tool_test,
    tool_train_load_from,
    tool_train_resume,
    train_args,
    via_converter,
)
from tests.test_train_test_tools import CONFIGS, ROOT, run
from tests.test_vmamba_backbone import SMALL_V2, SMALL_VANILLA, authors_state_dict


def unchanged(folder: Path, before: dict[str, str]) -> bool:
    """Every file that was in ``folder`` is still there, with the same content (new log files may have appeared)."""
    return {name: digest for name, digest in files_digest(folder).items() if name in before} == before


def truncated_checkpoint(path: Path) -> Path:
    """A real checkpoint with its last half cut off, as a run killed while writing it would have left it."""
    torch.save({'meta': {'iter': 2}, 'state_dict': authors_state_dict(SMALL_V2)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


@pytest.mark.parametrize('entry', sorted(IN_PROCESS) + ['test_tool'])
def test_text_file_is_not_a_checkpoint(entry, demo_data, tmp_path):
    path = tmp_path / 'notes.pth'
    path.write_text('epoch 12: loss 0.31\n')
    before = files_digest(tmp_path)
    message = tool_test(path, demo_data, tmp_path / 'work') if entry == 'test_tool' else IN_PROCESS[entry](path)
    assert f"'{path}'" in message and 'is not a PyTorch checkpoint' in message and 'Give the .pth file' in message
    assert unchanged(tmp_path, before)


@pytest.mark.parametrize('entry', sorted(IN_PROCESS) + ['train_resume'])
def test_truncated_checkpoint(entry, demo_data, tmp_path):
    path = truncated_checkpoint(tmp_path / 'iter_2.pth')
    before = files_digest(tmp_path)
    if entry == 'train_resume':
        message = tool_train_resume(path, demo_data, tmp_path / 'work')
    else:
        message = IN_PROCESS[entry](path)
    assert f"'{path}' is truncated" in message and 'use an earlier checkpoint' in message
    assert unchanged(tmp_path, before)


@pytest.mark.parametrize('entry', sorted(IN_PROCESS) + ['train_load_from'])
def test_missing_checkpoint(entry, demo_data, tmp_path):
    path = tmp_path / 'no_such_checkpoint.pth'
    if entry == 'train_load_from':
        message = tool_train_load_from(path, demo_data, tmp_path / 'work')
    else:
        message = IN_PROCESS[entry](path)
    assert f"Checkpoint file not found: '{path}'" in message and 'Check the path' in message
    assert not path.exists()


def test_checkpoint_of_another_model(demo_data, tmp_path):
    """The backbone (init_cfg), the converter, load_from and the test tool each name the file and the mismatch."""
    vanilla = tmp_path / 'vanilla.pth'
    torch.save({'model': authors_state_dict(SMALL_VANILLA)}, vanilla)
    detector = tmp_path / 'detector.pth'
    torch.save({'meta': {}, 'state_dict': {'backbone.patch_embed.0.weight': torch.zeros(8, 3, 4, 4),
                                           'rpn_head.rpn_conv.weight': torch.zeros(64, 64, 3, 3)}}, detector)
    before = files_digest(tmp_path)

    with pytest.raises(ValueError, match='does not match VMamba') as info:
        VMamba(SMALL_V2, init_cfg=dict(type='Pretrained', checkpoint=str(vanilla))).init_weights()
    assert str(vanilla) in str(info.value) and 'Check that arch' in str(info.value)
    message = via_converter(detector)
    assert f"'{detector}' is not one of the authors' classification checkpoints" in message
    assert 'needs no conversion: give it as load_from' in message

    output = tool_train_load_from(vanilla, demo_data, tmp_path / 'train')
    assert f"'{vanilla}' (load_from) does not hold weights of the model of {CONFIGS['upernet']}" in output
    assert 'goes in model.backbone.init_cfg.checkpoint instead' in output, output[-3000:]
    output = tool_test(detector, demo_data, tmp_path / 'test')
    assert f"'{detector}' (the checkpoint to test) does not hold weights of the model" in output
    assert 'Give a checkpoint trained with this config' in output, output[-3000:]
    assert unchanged(tmp_path, before)


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_missing_config(tool, tmp_path):
    config = tmp_path / 'mask_rcnn_vmamba_tiny.py'
    args = [str(tmp_path / 'any.pth')] if tool == 'test' else []
    output = run([sys.executable, f'tools/{tool}.py', str(config), *args, '--work-dir', str(tmp_path / 'work')],
                 succeeds=False)
    assert f"Config file not found: '{config}'" in output and 'configs/demo/mask_rcnn_vmamba_demo.py' in output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('task,tool', [('mask_rcnn', 'train'), ('upernet', 'test')])
def test_demo_config_before_its_data_exists(task, tool, tmp_path):
    """Run from a folder without data/demo (a fresh clone): the error says which path is missing and the command that
    writes the demo data."""
    args = [str(tmp_path / 'any.pth')] if tool == 'test' else []
    output = run([sys.executable, str(ROOT / 'tools' / f'{tool}.py'), str(ROOT / CONFIGS[task]), *args,
                  '--work-dir', str(tmp_path / 'work')], succeeds=False, cwd=tmp_path)
    assert 'is missing' in output and "'data/demo/" in output, output[-3000:]
    assert 'run `python tools/make_demo_data.py`' in output
    assert not any(tmp_path.iterdir())


def test_tool_data_check_names_the_option_for_other_data(demo_data, tmp_path):
    output = run(train_args(demo_data, tmp_path / 'work') + [
        f'train_dataloader.dataset.data_root={tmp_path / "ade"}'], succeeds=False)
    assert f"train_dataloader.dataset.data_root = '{tmp_path / 'ade'}' does not exist" in output
    assert 'docs/data_preparation.md' in output


@pytest.mark.parametrize('dtype', [torch.uint8, torch.int64])
def test_backbone_refuses_non_float_images(dtype):
    """Integer images (e.g. uint8 pixels straight from a decoder) get a message, not a dtype error from inside a
    convolution."""
    images = torch.zeros(1, 3, 64, 64, dtype=dtype)
    with pytest.raises(ValueError, match=f'floating-point images, got {dtype}') as info:
        VMamba(SMALL_V2)(images)
    assert 'images.float()' in str(info.value)

