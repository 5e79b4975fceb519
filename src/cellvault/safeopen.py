"""Opening the files a scan saw, and only those: no link followed, no FIFO waited on.

Between the scan of a cell (``lstat``) and the read of a file, the file may
be swapped: for a symbolic link to a file the backup must not copy, for a
FIFO whose open would block the backup forever while it holds the lease,
for a socket or device, for another file. :func:`open_scanned` opens with
``O_NOFOLLOW | O_NONBLOCK`` and checks the open file's type, and
:func:`check_same` its device and inode against the scan's: a swapped file
raises :class:`SwappedFile`, which the packer reports as a warning and skips.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import IO

from .fsmeta import special_kind

__all__ = ["SwappedFile", "check_same", "open_scanned", "open_scanned_fd"]


class SwappedFile(OSError):
    """A file that is no longer the one the scan saw (now a FIFO, a socket, a link, another inode)."""


# O_NOFOLLOW: a file swapped for a link is not followed to what it points at;
# O_NONBLOCK: one swapped for a FIFO does not block the open until a writer comes.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_scanned(path: str, st: os.stat_result | None = None) -> IO[bytes]:
    """Open the regular file at *path* for reading, never following a link nor blocking.

    With *st* (the scan's ``lstat``), the file must also be the one the scan
    saw (same device and inode). Raises :class:`SwappedFile` when *path* is
    now something else: a link, a FIFO, a socket, a device, another file.
    """
    fd, _ = open_scanned_fd(path, st)
    try:
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def open_scanned_fd(path: str, st: os.stat_result | None = None) -> tuple[int, os.stat_result]:
    """:func:`open_scanned`, as a bare descriptor and its ``fstat`` (the caller closes it)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SwappedFile(errno.ELOOP, "became a symbolic link after the scan", path) from None
        raise
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):
            what = "a " + special_kind(now.st_mode)
            raise SwappedFile(errno.ESTALE, f"became {what} after the scan", path)
        check_same(path, st, now)
    except BaseException:
        os.close(fd)
        raise
    return fd, now


def check_same(path: str, scanned: os.stat_result | None, opened: os.stat_result | None) -> None:
    """Raise :class:`SwappedFile` when the file opened is not the one scanned (device, inode)."""
    if scanned is None or opened is None:
        return
    if (opened.st_dev, opened.st_ino) != (scanned.st_dev, scanned.st_ino):
        raise SwappedFile(errno.ESTALE, "was replaced by another file after the scan", path)
