"""Writing files so that a killed process never leaves a partial one: a temporary name, then a rename."""
from __future__ import annotations

import os
import os.path as osp

from mmengine.fileio import LocalBackend, register_backend

ATOMIC_BACKEND = 'atomic_local'


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to a hidden temporary file next to ``path``, flush it to disk, then rename it to ``path``.

    A reader sees the old file or the new one, never a partial one; on error the temporary file is removed.
    """
    path = os.fspath(path)
    folder, name = osp.split(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = osp.join(folder, f'.{name}.{os.getpid()}.tmp')
    try:
        with open(temporary, 'wb') as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if osp.exists(temporary):
            os.remove(temporary)
        raise


class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend whose writes (``put``, ``put_text``) are atomic."""

    def put(self, obj: bytes, filepath: str) -> None:
        write_atomically(filepath, obj)

    def put_text(self, obj: str, filepath: str, encoding: str = 'utf-8') -> None:
        write_atomically(filepath, obj.encode(encoding))


register_backend(ATOMIC_BACKEND, AtomicLocalBackend)
