"""Atomic file writes, shared by the adapter files, the report and the golden vectors.

A reader (or a crash) never sees a half-written file: the content goes to a fresh, uniquely
named temporary file in the same directory, is flushed and fsynced, and is then renamed over
the target with ``os.replace`` (atomic on POSIX and Windows within one file system). Unique
temporary names let concurrent writers of the same target race safely: the last rename wins
and each rename installs a complete file.
"""

from __future__ import annotations

import errno
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


# errno values with which a file system says "directories cannot be fsynced here" (not a lost write).
_NO_DIRECTORY_FSYNC = (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the renames in ``directory`` durable.

    A no-op where directories cannot be opened or fsynced (Windows; some file systems answer
    ``EINVAL``/``ENOTSUP``/``EBADF``/``EACCES``).

    Raises:
        OSError: any other failure of ``fsync`` (e.g. ``EIO``): the renames may not survive a power loss.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIRECTORY_FSYNC:
            raise
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object] | bytes,
    *,
    durable: bool = True,
    sync_directory: bool | None = None,
) -> None:
    """Write ``path`` atomically.

    Args:
        path: the target file; its directory must exist.
        write: the bytes to write, or a function that writes them to a binary file object.
        durable: fsync the file before the rename and the directory after it, so that the new
            content survives a power loss, not only a crash of this process.
        sync_directory: fsync the directory after the rename (default: ``durable``). A caller that
            renames several files as one protocol passes ``False`` and calls
            ``fsync_directory`` itself at the right step.

    Raises:
        OSError: from the file system. A failure up to the rename leaves the target unchanged and
            no temporary file; a failure of the directory fsync after it leaves the new content in
            place, possibly not yet durable.
    """
    target = Path(path)
    if sync_directory is None:
        sync_directory = durable
    # ".<name>.<random>.tmp" (a leading dot of ``name`` is not doubled): hidden, and easy to find after a crash.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name.lstrip('.')}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates the file 0600; give it the mode a plain open() would (0666 less the umask).
            os.chmod(tmp, 0o666 & ~_UMASK)
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
    if sync_directory:
        fsync_directory(target.parent)
