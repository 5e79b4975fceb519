"""The local directory target: a plain path or a ``file://`` URL.

Also serves a NAS mounted as a directory. Every write goes to a temporary
name, is flushed to disk, and is renamed into place (the folder flushed too),
so a crash leaves the old state or the new one. When the spool and the target
share a file system the archive is hard-linked instead of copied: archives are
immutable, so sharing the inode is safe and costs nothing.

With ``BACKUP_OBJECT_LOCK`` set, the files of every archive are made
immutable (the ``i`` attribute of ``chattr``, through ``FS_IOC_SETFLAGS``)
until the date :mod:`cellvault.immutability` gives them: nobody, root
included, can change, rename or delete them without clearing it first (which
takes ``CAP_LINUX_IMMUTABLE``). They are then copied, never hard-linked (an
immutable spool name could not be removed). ``prune`` clears the attribute
of an archive once its date has passed, then deletes it. Where the file
system or the process cannot set it, that is logged once per target and the
archive is stored unprotected.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import secrets
import shutil
import stat
import struct
import threading
from pathlib import Path
from typing import IO

from ..archive import Sidecar
from ..errors import ConfigError, TargetError
from ..hookspecs import hookimpl
from ..log import get_logger
from ..modes import FILE_MODE, private_dirs, private_opener
from ..specs import TargetSpec
from .base import ObjectInfo, ObjectStat, Target

__all__ = ["LocalTarget", "is_immutable", "set_immutable"]

log = get_logger(__name__)


class LocalTarget(Target):
    """Archives in a directory of this machine (or a mounted NAS)."""

    def __init__(self, spec: TargetSpec) -> None:
        super().__init__(spec)
        url = spec.url
        if url.startswith("file://"):
            url = url[len("file://") :]
        if not url:
            raise ConfigError(f"target {spec.name}: empty path")
        self.root = Path(url).expanduser().absolute()

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def _tmp(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")

    def put_file(self, local: Path, key: str) -> None:
        path = self._path(key)
        private_dirs(path.parent)
        tmp = self._tmp(path)
        try:
            if self.object_lock is not None or not _link_once(local, tmp):
                with open(local, "rb") as src, open(tmp, "wb", opener=private_opener) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
            elif stat.S_IMODE(os.stat(tmp).st_mode) != FILE_MODE:
                # A linked spool file keeps its own mode: stored objects are 0600 all the same.
                os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        private_dirs(path.parent)
        tmp = self._tmp(path)
        try:
            _write_synced(tmp, data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(path.parent)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        private_dirs(path.parent)
        tmp = self._tmp(path)
        try:
            _write_synced(tmp, data)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        try:
            # link() fails if the name exists, and the content is whole when it appears.
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        _fsync_dir(path.parent)
        return True

    def protect(self, sidecar: Sidecar, keys: list[str]) -> None:
        """Make *keys* immutable until the archive's date (:attr:`object_lock`).

        The date is kept with each file (the ``user.cellvault.retain_until``
        extended attribute, which the immutable attribute protects too); with
        the sidecar, the chain rule extends the dates of the archives it needs.
        """
        if self.object_lock is None:
            return
        until = self.object_lock.retain_until(sidecar)
        if until is None or until <= dt.datetime.now(dt.UTC):
            return
        paths = [self._path(k) for k in keys]
        if self.sidecar_key(sidecar.id) in keys and sidecar.meta.chain:
            needed = {str(i) for i in sidecar.meta.chain}
            folder = self._path(sidecar.id.cell)
            paths += [p for p in folder.iterdir() if p.name.split(".", 1)[0] in needed]
        for path in paths:
            why = _lock(path, until)
            if why is not None:
                if not self.__dict__.get("_said"):  # said once per target
                    self.__dict__["_said"] = True
                    log.warning(
                        "target.lock_unavailable", target=self.name, path=str(self.root), error=why
                    )
                return

    def locked_until(self, sidecar: Sidecar) -> dt.datetime | None:
        """The latest date kept with the archive's immutable files, while it is to come."""
        dates = [_locked_until(self._path(k)) for k in self._archive_keys(sidecar)]
        latest = max((d for d in dates if d is not None), default=None)
        return latest if latest is not None and latest > dt.datetime.now(dt.UTC) else None

    def unlock_expired(self, sidecar: Sidecar) -> None:
        """Clear the immutable attribute cellvault set on the archive's files, once past its date."""
        now = dt.datetime.now(dt.UTC)
        for key in self._archive_keys(sidecar):
            path = self._path(key)
            until = _locked_until(path)
            if until is not None and until <= now:
                set_immutable(path, False)

    def delete_archive(self, sidecar: Sidecar) -> None:
        """Delete an archive, clearing the lock cellvault set once its date has passed.

        ``prune`` asks :meth:`locked_until` first. A file made immutable by
        hand (no date kept with it) stays so, and its delete fails.
        """
        for key in self._archive_keys(sidecar):
            path = self._path(key)
            if _locked_until(path) is not None:
                set_immutable(path, False)
        super().delete_archive(sidecar)

    def uncommit(self, sidecar: Sidecar) -> None:
        path = self._path(self.sidecar_key(sidecar.id))
        if _locked_until(path) is not None:
            set_immutable(path, False)
        super().uncommit(sidecar)

    def _deletable(self, key: str) -> None:
        # Debris is never committed: an immutable part of it (a run stopped between
        # making its files immutable and committing) is cleared too.
        set_immutable(self._path(key), False)

    def _archive_keys(self, sidecar: Sidecar) -> list[str]:
        ident = sidecar.id
        return [
            f"{ident.cell}/{sidecar.data_name}",
            self.manifest_key(ident),
            self.sidecar_key(ident),
        ]

    def open_read(self, key: str) -> IO[bytes]:
        return open(self._path(key), "rb")

    def fetch(self, key: str, local: Path) -> None:
        # Created 0600 first: copyfile keeps the mode of a file it overwrites.
        open(local, "wb", opener=private_opener).close()
        shutil.copyfile(self._path(key), local)

    def stat(self, key: str) -> ObjectStat:
        return ObjectStat(os.stat(self._path(key)).st_size)

    def list(self, folder: str) -> list[ObjectInfo]:
        path = self._path(folder)
        out = []
        try:
            with os.scandir(path) as it:
                for e in it:
                    # One entry that vanished meanwhile (a temporary file renamed, debris
                    # removed) or a dangling link must not hide the whole folder.
                    try:
                        is_dir = e.is_dir(follow_symlinks=False)
                        size = 0 if is_dir else e.stat().st_size
                    except FileNotFoundError:
                        continue
                    out.append(ObjectInfo(e.name, size, is_dir))
        except FileNotFoundError:
            return []
        return out

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def check(self) -> None:
        try:
            private_dirs(self.root)
        except OSError as exc:
            raise TargetError(
                f"cannot create {self.root} ({exc.strerror})",
                target=self.name,
                hint="create the directory or fix its permissions",
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise TargetError(
                f"{self.root} is not writable", target=self.name, hint="fix its permissions"
            )


# One hard link per spooled file, at most: a second local target on the same
# file system (a "NAS" directory on the backup disk) must get a copy of its own,
# or a damaged block would damage both "copies" at once.
_LINK_LOCK = threading.Lock()


def _link_once(local: Path, tmp: Path) -> bool:
    """Hard-link *local* to *tmp* if no other target linked it yet; tell whether it did."""
    with _LINK_LOCK:
        if os.stat(local).st_nlink > 1:
            return False
        try:
            os.link(local, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            return False
    return True


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb", opener=private_opener) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@hookimpl
def cellvault_make_target(spec: TargetSpec) -> Target | None:
    """Local directories: plain paths and ``file://`` URLs."""
    if spec.scheme in ("", "file"):
        return LocalTarget(spec)
    return None


# chattr's flags (linux/fs.h); the kernel reads and writes an int whatever the
# ioctl's encoded size, so an 8-byte buffer is passed and its first 4 read.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x10


def _flags(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))[:4])[0])


def is_immutable(path: Path) -> bool:
    """Whether *path* has the immutable attribute (``False`` too where there is none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return bool(_flags(fd) & _FS_IMMUTABLE_FL)
    except OSError:
        return False
    finally:
        os.close(fd)


_RETAIN = "user.cellvault.retain_until"


def _locked_until(path: Path) -> dt.datetime | None:
    """The date cellvault locked *path* until, while it is immutable (``None`` otherwise)."""
    if not is_immutable(path):
        return None
    try:
        return dt.datetime.fromisoformat(os.getxattr(path, _RETAIN).decode())
    except (OSError, ValueError):
        return None


def _lock(path: Path, until: dt.datetime) -> str | None:
    """Make *path* immutable until *until* (a date kept only grows); ``None``, or why not."""
    current = _locked_until(path)
    if current is not None and current >= until:
        return None
    why = set_immutable(path, False)  # the date cannot change while it is set
    if why is None:
        try:
            os.setxattr(path, _RETAIN, until.isoformat().encode())
        except OSError as exc:
            return f"the file system keeps no extended attributes ({exc.strerror})"
        why = set_immutable(path, True)
    return why


def set_immutable(path: Path, on: bool) -> str | None:
    """Set (or clear) *path*'s immutable attribute; ``None``, or why it could not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{exc.strerror} ({path})"
    try:
        flags = _flags(fd)
        wanted = flags | _FS_IMMUTABLE_FL if on else flags & ~_FS_IMMUTABLE_FL
        if wanted != flags:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", wanted) + bytes(4))
    except OSError as exc:
        if exc.errno == errno.EPERM:
            return "setting the immutable attribute needs CAP_LINUX_IMMUTABLE (root)"
        return f"the file system does not support the immutable attribute ({exc.strerror})"
    finally:
        os.close(fd)
    return None
