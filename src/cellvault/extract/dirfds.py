"""A tree's folders opened from its root without following links (what a restore writes through).

Every path of a staging tree is created relative to a directory descriptor;
:class:`DirFds` opens each folder on the way with ``O_NOFOLLOW |
O_DIRECTORY`` from the root down (a whole path at once with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` where the kernel has it),
so that a folder replaced by a link while the tree is built makes the
restore fail instead of writing through it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os

from ..errors import UnsafeArchive

__all__ = ["DirFds", "openat2"]

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: openat2(2) (Linux 5.6+; the same number on every architecture) and its
#: RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH: a whole relative path opened in one
#: call, refusing any link on the way and any escape from the directory.
_SYS_OPENAT2 = 437
_RESOLVE = 0x04 | 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


class _Openat2:
    """``openat2`` through libc's ``syscall``, or ``None`` where the kernel lacks it."""

    def __init__(self) -> None:
        self.works: bool | None = None  # unknown until tried
        try:
            self._syscall = ctypes.CDLL(None, use_errno=True).syscall
        except (OSError, AttributeError):
            self.works = False

    def __call__(self, dirfd: int, path: str, flags: int) -> int | None:
        if self.works is False:
            return None
        how = _OpenHow(flags, 0, _RESOLVE)
        fd: int = self._syscall(
            _SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
        )
        if fd >= 0:
            self.works = True
            return fd
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM) and self.works is None:
            self.works = False  # no openat2 here (or a seccomp filter refuses it)
            return None
        raise OSError(err, os.strerror(err), path)


openat2 = _Openat2()


class DirFds:
    """The directories of a tree, opened from its root without following links.

    :meth:`fd` keeps the chain of the last directory asked for open (archives
    list paths depth first, so consecutive files share it); :meth:`open`
    gives a descriptor of its own.
    """

    def __init__(self, root: str | int, archive: str) -> None:
        """*root*: the tree's path, or a descriptor of it (which this object then owns)."""
        self.archive = archive
        self.root = root if isinstance(root, int) else os.open(root, _OPEN_DIR)
        self._chain: list[tuple[str, int]] = []
        #: The last directory :meth:`fd` gave (path and descriptor): most files
        #: of an archive follow a sibling.
        self._last: tuple[str, int] | None = None

    def _step(self, parent: int, name: str, path: str, create: bool) -> int:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)
        try:
            return os.open(name, _OPEN_DIR, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise UnsafeArchive(
                f"{path} is no longer a directory of the staging tree (replaced by a "
                "link or a file while the restore ran); nothing was written through it",
                archive=self.archive,
                hint="find what changes the staging directory, then restore again",
            ) from None

    def _parts(self, rel: str) -> list[str]:
        """The folder names of *rel*, walked down one by one: never up, never in place."""
        parts = rel.split("/") if rel else []
        if "" in parts or "." in parts or ".." in parts:
            # Checked member names never hold one (checked_name); a caller's bug, refused.
            raise UnsafeArchive(
                f"folder path {rel!r} has '..', '.' or empty components; refused",
                archive=self.archive,
            )
        return parts

    def fd(self, rel: str, create: bool = True) -> int:
        """The directory *rel* (relative to the root; ``""`` for the root), kept open."""
        last = self._last
        if last is not None and last[0] == rel:
            return last[1]
        self._last = None
        parts = self._parts(rel)
        chain = self._chain
        keep = 0
        while keep < len(chain) and keep < len(parts) and chain[keep][0] == parts[keep]:
            keep += 1
        for _, fd in chain[keep:]:
            os.close(fd)
        del chain[keep:]
        parent = chain[-1][1] if chain else self.root
        for i in range(keep, len(parts)):
            parent = self._step(parent, parts[i], "/".join(parts[: i + 1]), create)
            chain.append((parts[i], parent))
        self._last = (rel, parent)
        return parent

    def open(self, rel: str) -> int:
        """A new descriptor of the directory *rel*, for the caller to close."""
        parts = self._parts(rel)
        if rel:
            try:
                fd = openat2(self.root, rel, _OPEN_DIR)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                    raise
                fd = None  # the walk below names the culprit
            if fd is not None:
                return fd
        fd = os.dup(self.root)
        for i, name in enumerate(parts):
            try:
                child = self._step(fd, name, "/".join(parts[: i + 1]), False)
            finally:
                os.close(fd)
            fd = child
        return fd

    def close(self) -> None:
        self.fd("", create=False)
        os.close(self.root)
