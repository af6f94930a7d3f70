"""Atomic file writes, shared by the adapter files, the report and the golden vectors.

A reader (or a crash) never sees a half-written file: the content goes to a fresh, uniquely
named temporary file in the same directory, is flushed and fsynced, and is then renamed over
the target with ``os.replace`` (atomic on POSIX and Windows within one file system). Unique
temporary names let concurrent writers of the same target race safely: the last rename wins
and each rename installs a complete file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "fsync_directory"]


def _read_umask() -> int:
    # os.umask can only be read by setting it: do it once, at import (no other thread writes files yet).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the renames in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object] | bytes, *, durable: bool = True) -> None:
    """Write ``path`` atomically.

    Args:
        path: the target file; its directory must exist.
        write: the bytes to write, or a function that writes them to a binary file object.
        durable: fsync the file before the rename and the directory after it, so that the new
            content survives a power loss, not only a crash of this process.

    Raises:
        OSError: from the file system; the target is then unchanged and no temporary file is left.
    """
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 less the umask).
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray, memoryview)):
                f.write(write)
            else:
                write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(target.parent)
