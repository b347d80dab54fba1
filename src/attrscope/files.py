"""The one atomic writer: every result, chunk, report, figure, table and fact file attrscope
writes goes through :func:`write_bytes`, so a reader (or a run killed mid-write) never sees a
partial file, and a full disk ends in one line naming the file and the bytes it needed."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path


class DiskFullError(OSError):
    """A file that could not be written for lack of space; nothing partial is left. ``str()``
    is one line naming the file and the bytes needed."""

    def __str__(self) -> str:
        return self.strerror


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``; the file gets the permissions of a new file (the umask's), not
    mkstemp's private ones. Raises :class:`DiskFullError` when the disk is full."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        _write_file(tmp, data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(path.parent).free
        raise DiskFullError(e.errno, f"cannot write {path}: no space left on its disk "
                            f"({len(data)} bytes needed, {free} free in {path.parent}); nothing "
                            "was written there. Free some space or write elsewhere.") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` (a full disk raises OSError ENOSPC here, on write or close)."""
    with open(path, "wb") as f:
        f.write(data)
