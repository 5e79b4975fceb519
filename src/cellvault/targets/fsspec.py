"""A target on any fsspec file system: ``s3://``, ``oss://``, ``memory://``, ``sftp://``, ...

The URL and ``storage_options`` go to fsspec untouched; the backend is
imported only when a target of its protocol is built. Object stores make a
PUT (and a completed multipart upload) visible whole or not at all, so data is
written straight to its key; on other file systems it goes to a temporary name
first and is moved into place.
"""

from __future__ import annotations

import contextlib
import posixpath
import secrets
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError, TargetError
from ..hookspecs import hookimpl
from ..log import get_logger, redact_text
from ..specs import TargetSpec
from .base import ObjectInfo, ObjectStat, Target

__all__ = ["FsspecTarget"]

log = get_logger(__name__)

# Protocols whose writes are atomic per object (no rename needed, and none cheap).
OBJECT_STORES = frozenset({"s3", "s3a", "oss", "gs", "gcs", "az", "abfs", "memory", "r2"})


class FsspecTarget(Target):
    """A target on the fsspec file system of its URL."""

    def __init__(self, spec: TargetSpec) -> None:
        super().__init__(spec)
        self._fs: Any = None
        self.root = ""
        self.object_store = spec.scheme in OBJECT_STORES
        try:
            self._connect()
        except TargetError as exc:
            # A file system that connects when it is built (sftp, ...) and cannot:
            # this target fails on its own when it is used; the others proceed.
            log.warning("target.unreachable", target=self.name, error=exc.message)

    def _connect(self) -> Any:
        """Build the fsspec file system (once); :class:`TargetError` when it cannot be reached."""
        if self._fs is not None:
            return self._fs
        spec = self.spec
        try:
            import fsspec

            fs, root = fsspec.core.url_to_fs(spec.url, **dict(spec.options))
        except ImportError as exc:
            raise ConfigError(
                f"target {spec.name}: the file system for {spec.display()} is not installed ({exc})",
                hint=f"install the fsspec backend for '{spec.scheme}' (for example s3fs or ossfs)",
            ) from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"target {spec.name}: cannot use {spec.display()} ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - a boundary: the client's own errors, reported
            raise TargetError(
                f"cannot reach {spec.display()} ({redact_text(f'{type(exc).__name__}: {exc}')})",
                target=spec.name,
                hint="check the host, the network and the credentials; the other targets "
                "are backed up meanwhile",
            ) from None
        self.root = root.rstrip("/")
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self.object_store = bool(OBJECT_STORES.intersection(protocols))
        self._fs = fs
        return fs

    @property
    def fs(self) -> Any:
        """The fsspec file system (connecting to it on first use)."""
        return self._connect()

    def _path(self, key: str) -> str:
        self._connect()  # the root is known once connected
        return posixpath.join(self.root, key) if key else self.root

    def put_file(self, local: Path, key: str) -> None:
        path = self._path(key)
        if self.object_store:
            self.fs.put_file(str(local), path)
            return
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = self._tmp(path)
        self.fs.put_file(str(local), tmp)
        self.fs.mv(tmp, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self.object_store:
            self.fs.pipe_file(path, data)
            return
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = self._tmp(path)
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError):
            # The backend has no conditional create: check, then write. Two
            # runs starting in the same instant could both pass; the lock's
            # token check on release and refresh narrows what that can break.
            if self.fs.exists(path):
                return False
            self.put_bytes(key, data)
            return True

    def open_read(self, key: str) -> IO[bytes]:
        path = self._path(key)
        try:
            return self.fs.open(path, "rb", block_size=8 << 20)  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise
        except OSError as exc:
            if getattr(exc, "errno", None) == 2:
                raise FileNotFoundError(key) from None
            raise

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))  # type: ignore[no-any-return]

    def fetch(self, key: str, local: Path) -> None:
        self.fs.get_file(self._path(key), str(local))

    def stat(self, key: str) -> ObjectStat:
        path = self._path(key)
        self.fs.invalidate_cache(path)
        info = self.fs.info(path)
        if info.get("type") == "directory":
            raise FileNotFoundError(key)
        checksums = {}
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
        # A single-part upload's ETag is the MD5 of the content; a multipart
        # one ("<hex>-<parts>") depends on the part size and is not compared.
        if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
            checksums["md5"] = etag
        return ObjectStat(int(info.get("size") or 0), checksums)

    def list(self, folder: str) -> list[ObjectInfo]:
        path = self._path(folder)
        # Listings must be fresh: another run (or site) may have committed since.
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            name = posixpath.basename(entry["name"].rstrip("/"))
            if not name or entry["name"].rstrip("/") == path.rstrip("/"):
                continue
            out.append(
                ObjectInfo(name, int(entry.get("size") or 0), entry.get("type") == "directory")
            )
        return out

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    @staticmethod
    def _tmp(path: str) -> str:
        head, tail = posixpath.split(path)
        return posixpath.join(head, f".{tail}.{secrets.token_hex(4)}.tmp")


@hookimpl(trylast=True)
def cellvault_make_target(spec: TargetSpec) -> Target | None:
    """Any URL whose protocol fsspec knows; asked last, so specific plugins win."""
    if not spec.scheme:
        return None
    import fsspec

    if spec.scheme in fsspec.available_protocols():
        return FsspecTarget(spec)
    return None
