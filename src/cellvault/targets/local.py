"""The local directory target: a plain path or a ``file://`` URL.

Also serves a NAS mounted as a directory. Every write goes to a temporary
name, is flushed to disk, and is renamed into place (the folder flushed too),
so a crash leaves the old state or the new one. When the spool and the target
share a file system the archive is hard-linked instead of copied: archives are
immutable, so sharing the inode is safe and costs nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import IO

from ..errors import ConfigError, TargetError
from ..hookspecs import hookimpl
from ..modes import private_dirs, private_opener
from ..specs import TargetSpec
from .base import ObjectInfo, ObjectStat, Target

__all__ = ["LocalTarget"]


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
            if not _link_once(local, tmp):
                with open(local, "rb") as src, open(tmp, "wb", opener=private_opener) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
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
