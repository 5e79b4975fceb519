"""How a dump travels inside an archive: its files as tar members, and back.

In the archive, the output of the dumper called ``<name>`` is a tree of its
own, after the cell's files and before ``manifest.json``::

    dumps/<name>/                  directory
    dumps/<name>/<file>            one member per file the dumper wrote ...
    dumps/<name>/<file>.part-000001  ... or, for a file larger than one chunk,
    dumps/<name>/<file>.part-000002  consecutive parts to concatenate
    dumps/<name>/dumper.json       what was dumped, how, and whether it completed

A tar member needs its size before its data. A tool's output has no size
until the tool ends, so it is cut into chunks of :data:`DUMP_CHUNK` bytes
held in memory: output that fits in one chunk becomes one member; a larger
one becomes parts, each written as soon as the next byte shows that more is
coming. Nothing is copied to disk on the way, memory stays bounded, and
``cat <file>.part-*`` rebuilds the file with stock tools. Every member is in
the manifest with its sha256, so verify covers dumps like any file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import attrs

from ..errors import DumpError
from ..manifest import Entry, ManifestWriter

__all__ = [
    "DESCRIPTOR",
    "DUMPS_ROOT",
    "DUMP_CHUNK",
    "ArchiveDumps",
    "ConcatReader",
    "DumpWriter",
    "FileRecord",
    "SizedFileReader",
    "TarSink",
    "is_dump_file_name",
]

#: Top-level folder of dumper output in an archive.
DUMPS_ROOT = "dumps"
#: The descriptor each dumper's folder ends with.
DESCRIPTOR = "dumper.json"
#: Bytes of tool output held in memory before a part is written (see the module docs).
DUMP_CHUNK = 32 << 20

_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PART = re.compile(r"(?P<file>.+)\.part-(?P<n>\d{6})")


def is_dump_file_name(filename: str) -> bool:
    """Tell whether a dumper may name a file of its dump *filename* (not a part, not the descriptor)."""
    return (
        bool(_FILE.fullmatch(filename)) and filename != DESCRIPTOR and not _PART.fullmatch(filename)
    )


class TarSink(Protocol):
    """What the dumpers write into: the part of :class:`tarfile.TarFile` they use.

    The packer passes its own tar writer (:class:`cellvault.tarwrite.TarWriter`).
    """

    members: list[tarfile.TarInfo]

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: Any = None) -> None: ...


@attrs.define
class ArchiveDumps:
    """Writes the ``dumps/`` tree of one archive into its tar stream, and into its manifest."""

    tar: TarSink
    manifest: ManifestWriter
    archive: str
    chunk: int = DUMP_CHUNK
    on_progress: Callable[[int], None] | None = None
    #: Set when writing into the tar stream failed: the archive cannot be finished.
    broken: bool = False
    _dirs: set[str] = attrs.field(factory=set)
    _when: int = attrs.field(factory=lambda: int(time.time()))

    def progress(self, n: int) -> None:
        if self.on_progress is not None:
            self.on_progress(n)

    def folder(self, name: str) -> str:
        # No member for dumps/ itself: as for data/, every member lies below it.
        path = f"{DUMPS_ROOT}/{name}"
        if path not in self._dirs:
            self._add_dir(path)
        return path

    def _add_dir(self, path: str) -> None:
        info = tarfile.TarInfo(path)
        info.type = tarfile.DIRTYPE
        info.mode = 0o700
        self._own(info)
        self.tar.addfile(info)
        self.tar.members.clear()
        self._dirs.add(path)
        self.manifest.add(
            Entry(
                path=path,
                type="dir",
                mode=0o700,
                mtime_ns=self._when * 10**9,
                uid=info.uid,
                gid=info.gid,
            )
        )

    def _own(self, info: tarfile.TarInfo) -> None:
        info.uid, info.gid = os.geteuid(), os.getegid()
        info.uname = info.gname = ""
        info.mtime = self._when

    def add_member(self, path: str, size: int, reader: Any) -> None:
        info = tarfile.TarInfo(path)
        info.size = size
        info.mode = 0o600
        self._own(info)
        hashing = _Hashing(reader)
        try:
            self.tar.addfile(info, hashing)
        except BaseException:
            self.broken = True
            raise
        self.tar.members.clear()
        self.manifest.add(
            Entry(
                path=path,
                type="file",
                mode=0o600,
                mtime_ns=self._when * 10**9,
                size=size,
                sha256=hashing.digest.hexdigest(),
                uid=info.uid,
                gid=info.gid,
                archive=self.archive,
            )
        )

    def add_descriptor(self, name: str, body: dict[str, Any]) -> None:
        data = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
        self.add_member(f"{self.folder(name)}/{DESCRIPTOR}", len(data), io.BytesIO(data))


class _Hashing:
    """Hash what passes through ``read``."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self.digest.update(data)
        return data


class _BufferReader:
    """Read a bytearray through memoryview slices (no copy of the whole chunk)."""

    def __init__(self, data: bytearray) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n < 0 else min(len(self.view), self.pos + n)
        out = self.view[self.pos : end].tobytes()
        self.pos = end
        return out


class DumpWriter(io.RawIOBase):
    """One file of a dump: buffered into chunks, each written as a tar member (see module docs)."""

    def __init__(self, archive_dumps: ArchiveDumps, folder: str, filename: str) -> None:
        super().__init__()
        self.owner = archive_dumps
        self.folder = folder
        self.filename = filename
        self.buf = bytearray()
        self.parts: list[str] = []
        self.digest = hashlib.sha256()
        self.size = 0
        self.finished = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        self.digest.update(view)
        self.size += n
        chunk = self.owner.chunk
        while view:
            room = chunk - len(self.buf)
            if room == 0:
                # The chunk is full and more is coming: it becomes a part.
                self._emit(f"{self.filename}.part-{len(self.parts) + 1:06d}")
                continue
            self.buf += view[:room]
            view = view[room:]
        self.owner.progress(n)
        return n

    def _emit(self, member: str) -> None:
        self.owner.add_member(f"{self.folder}/{member}", len(self.buf), _BufferReader(self.buf))
        self.parts.append(member)
        self.buf = bytearray()

    def finish(self) -> None:
        """Write what is buffered: the whole file, or its last part."""
        if self.finished:
            return
        self.finished = True
        if self.parts:
            self._emit(f"{self.filename}.part-{len(self.parts) + 1:06d}")
        else:
            self._emit(self.filename)


@attrs.define
class FileRecord:
    """What a dump wrote of one file: its size, sha256 (empty if cut short) and members."""

    size: int
    sha256: str
    parts: list[str]


class SizedFileReader:
    """Read exactly *size* bytes of a file that must not change while it is read."""

    def __init__(self, raw: IO[bytes], size: int) -> None:
        self.raw = raw
        self.remaining = size
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.remaining:
            n = self.remaining
        data = self.raw.read(n)
        if len(data) != n:
            raise DumpError("a dump file changed size while it was added to the archive")
        self.remaining -= n
        self.digest.update(data)
        return data


class ConcatReader(io.RawIOBase):
    """Read several files as one stream."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self.paths = list(paths)
        self.current: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while True:
            if self.current is None:
                if not self.paths:
                    return 0
                self.current = open(self.paths.pop(0), "rb")  # noqa: SIM115 - closed below
            n = self.current.readinto(b)
            if n:
                return n
            self.current.close()
            self.current = None

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
        super().close()
