"""Reading checkpoint files without running code from them.

Every checkpoint a user gives (``load_from``, ``--resume``, the checkpoint under test, a backbone's ``init_cfg``, the
converter's input, the analysis tools' ``--checkpoint``) is read with ``torch.load(weights_only=True)``. Besides
tensors and plain containers, MMEngine's checkpoints hold numpy arrays and scalars and the message hub's
``HistoryBuffer``: exactly these types are allowed, and only while a checkpoint is read. A file that names any other
type is refused before anything in it is run, with the file and the types in the message. A truncated file, a file
that is no checkpoint and a missing file get their own messages.

:func:`allow_unsafe_load` (the tools' ``--unsafe-load``) reads trusted old files with ``weights_only=False``, which
runs whatever code the file holds.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader

UNSAFE_LOAD_FLAG = '--unsafe-load'
_PICKLE_PROTOCOL_OPCODE = 0x80
_ZIP_MAGIC = b'PK\x03\x04'
HISTORY_BUFFER_STATISTICS = ('current', 'max', 'mean', 'min')
_unsafe = [False]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message says what is wrong and what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path where no file is."""


@contextlib.contextmanager
def allow_unsafe_load(enabled: bool = True) -> Iterator[None]:
    """Within the block (when ``enabled``), checkpoints are read with ``weights_only=False``: code in the files runs.
    For trusted old files only."""
    previous, _unsafe[0] = _unsafe[0], enabled
    try:
        yield
    finally:
        _unsafe[0] = previous


def unsafe_load_allowed() -> bool:
    return _unsafe[0]


def _numpy_types() -> list[Any]:
    """What pickled numpy arrays and scalars refer to: the reconstructors, ndarray, dtype and every dtype class."""
    core = np._core if hasattr(np, '_core') else np.core
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes['All']}
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *sorted(
        dtype_classes, key=lambda cls: cls.__name__)]


def history_buffer_statistic(owner: Any, name: Any) -> Any:
    """What ``getattr`` may do in a checkpoint: a ``HistoryBuffer`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'min')`` (and ``max``, ``current``, ``mean``). Anything else is refused."""
    if owner is HistoryBuffer and name in HISTORY_BUFFER_STATISTICS:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f'GLOBAL builtins.getattr({owner!r}, {name!r}) was not an allowed global')


def mmengine_checkpoint_types() -> list[Any]:
    """What MMEngine's checkpoints hold besides tensors and plain containers (message hub and meta): numpy arrays,
    scalars and dtypes, ``HistoryBuffer`` and its statistics methods (in place of ``getattr``)."""
    return [*_numpy_types(), HistoryBuffer, (history_buffer_statistic, 'builtins.getattr')]


@contextlib.contextmanager
def mmengine_types_allowed() -> Iterator[None]:
    """Within the block, ``weights_only`` loads accept :func:`mmengine_checkpoint_types` too."""
    with torch.serialization.safe_globals(mmengine_checkpoint_types()):
        yield


def _file_kind(path: str) -> str:
    """'zip' (torch.save's format), 'truncated' (a zip without its directory), 'pickle' (the legacy format), 'empty'
    or 'other'."""
    with open(path, 'rb') as file:
        head = file.read(4)
    if not head:
        return 'empty'
    if head == _ZIP_MAGIC:
        return 'zip' if zipfile.is_zipfile(path) else 'truncated'
    if head[0] == _PICKLE_PROTOCOL_OPCODE:
        return 'pickle'
    return 'other'


def _refused(path: str, names: list[str]) -> CheckpointError:
    return CheckpointError(
        f'Refusing to load {path!r}: it holds objects of type {", ".join(sorted(names))}, which a checkpoint of '
        f'weights never needs and a weights_only=True load does not create; loading them would run code from the '
        f'file. If you trust the file and its author (e.g. a checkpoint written by an older version of these tools), '
        f'pass {UNSAFE_LOAD_FLAG} (tools/train.py, tools/test.py, tools/convert_checkpoint.py), which runs the code '
        f'in it.')


def _truncated(path: str, size: int) -> CheckpointError:
    return CheckpointError(
        f'{path!r} is truncated ({size} bytes, the end of the file is missing): a copy or download that stopped '
        f'early, or a run killed while writing it. Copy or download it again, or use an earlier checkpoint.')


def _check_path(path: str, source: str) -> None:
    if re.match(r'^[a-z0-9+]+://', str(path)):
        raise CheckpointError(f'Checkpoint {path!r} ({source}) is a URL; nothing is downloaded at run time. Download '
                              f'the file and give its local path.')
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f'Checkpoint file not found: {path!r} ({source}). Check the path.')
    if not os.path.isfile(path):
        raise CheckpointError(f'{path!r} ({source}) is a directory, not a checkpoint file: give the .pth file.')


def load_checkpoint_file(path: str, map_location: Any = 'cpu', source: str = 'the checkpoint',
                         mmap: bool = False) -> Any:
    """``torch.load`` of a local checkpoint with ``weights_only=True`` and MMEngine's types allowed.

    ``source`` says where the path came from (e.g. ``'load_from'``) for the messages. ``mmap=True`` maps the tensors'
    data instead of reading it (cheap checks of large files). Raises :class:`CheckpointError` for a missing, empty,
    truncated or unsafe file and for a file that is no PyTorch checkpoint.
    """
    path = os.fspath(path)
    _check_path(path, source)
    kind = _file_kind(path)
    size = os.path.getsize(path)
    if kind in ('empty', 'truncated'):
        raise _truncated(path, size)
    if kind == 'other':
        with open(path, 'rb') as file:
            head = file.read(24)
        raise CheckpointError(f'{path!r} ({source}) is not a PyTorch checkpoint: it starts with {head!r}, where '
                              f'torch.save writes a zip archive. Give the .pth file itself (a failed download can '
                              f'leave a text or HTML page under the checkpoint\'s name).')
    if unsafe_load_allowed():
        print_log(f'{UNSAFE_LOAD_FLAG}: reading {path} with weights_only=False (runs any code in the file)',
                  logger='current')
        return torch.load(path, map_location=map_location, weights_only=False)
    with mmengine_types_allowed():
        if kind == 'zip':
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except (RuntimeError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise CheckpointError(f'{path!r} ({source}) is a damaged checkpoint ({err}). Copy or download it '
                                      f'again, or use an earlier checkpoint.') from err
            if unsafe:
                raise _refused(path, unsafe)
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and kind == 'zip')
        except pickle.UnpicklingError as err:
            names = re.findall(r'GLOBAL (.+?) was not an allowed global', str(err))
            if names:
                raise _refused(path, names) from None
            raise CheckpointError(f'{path!r} ({source}) cannot be read as weights: {str(err).splitlines()[0]}') from err
        except EOFError:
            raise _truncated(path, size) from None
        except RuntimeError as err:
            raise CheckpointError(f'{path!r} ({source}) is a damaged checkpoint ({str(err).splitlines()[0]}). Copy '
                                  f'or download it again, or use an earlier checkpoint.') from err


def _load_for_mmengine(filename: str, map_location: Any = None) -> Any:
    return load_checkpoint_file(filename, map_location, source='load_from, --resume or the checkpoint to test')


# every local checkpoint MMEngine reads (load_from, resume, Pretrained init_cfg of other modules) goes through here
CheckpointLoader.register_scheme(prefixes='', loader=_load_for_mmengine, force=True)
