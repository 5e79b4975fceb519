"""The checks the verify levels share, below any target: names, checksums, streams, trees.

The verify levels themselves (``quick``, ``read``, ``full``, ``drill``) are
in :mod:`cellvault.ops.verify`. This module holds what they compute on bytes
and files, without a target:

* :data:`LEVELS`, the levels' names, cheapest first (status ranks results by it);
* :func:`content_checksums`, the checksums a store reports on HEAD (OSS's
  CRC-64, an S3 single-part ETag), computed once at backup time;
* :func:`scan`, one read of an archive's stored bytes to its end, without
  unpacking it: size, sha256, the decompressed head (``meta.json``) and tail
  (the tar's end blocks), with :class:`ZstdFrames` catching a zstd stream cut
  at a frame's edge; :func:`check_meta` checks the head;
* :func:`compare_tree`, a restored tree against its manifest (drills).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

import attrs
import zstandard

from .archive import ArchiveMeta, Sidecar
from .codec import HashingReader, codec_for
from .errors import ArchiveCorrupt
from .manifest import ENTRY_TYPES, Entry, Manifest

__all__ = [
    "DECOMPRESS_ERRORS",
    "LEVELS",
    "Scan",
    "ZstdFrames",
    "check_meta",
    "compare_tree",
    "content_checksums",
    "scan",
]

#: The verify levels, cheapest first.
LEVELS: tuple[str, ...] = ("quick", "read", "full", "drill")

#: What :func:`scan` raises for data that does not decompress (or ends too soon).
DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (
    zstandard.ZstdError,
    gzip.BadGzipFile,
    zlib.error,
    EOFError,
)

#: Decompressed bytes kept from the head of an archive: ``meta.json`` (a few KiB,
#: with its PAX header) lies well within.
_HEAD = 256 << 10
#: A tar stream ends with two zero blocks (tarfile pads the last record with more).
_TAR_END = 1024

_BLOCK = 1 << 20


def _crc64_function() -> Callable[[bytes, int], int] | None:
    """OSS's CRC-64/ECMA-182 through crcmod's C extension (it comes with oss2)."""
    try:
        import crcmod  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    fn: Callable[[bytes, int], int] = crcmod.mkCrcFun(
        0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF
    )
    return fn


def content_checksums(path: Path, kinds: Iterable[str]) -> dict[str, str]:
    """The checksums of the file *path* of the given *kinds* (``md5``, ``crc64ecma``).

    Read in one pass. A kind that cannot be computed here (``crc64ecma``
    without crcmod, an unknown kind) is left out: a quick verify then
    compares the size alone for it.
    """
    wanted = set(kinds)
    md5 = hashlib.md5(usedforsecurity=False) if "md5" in wanted else None
    crc_fn = _crc64_function() if "crc64ecma" in wanted else None
    crc = 0
    if md5 is None and crc_fn is None:
        return {}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            if md5 is not None:
                md5.update(block)
            if crc_fn is not None:
                crc = crc_fn(block, crc)
    out: dict[str, str] = {}
    if md5 is not None:
        out["md5"] = md5.hexdigest()
    if crc_fn is not None:
        out["crc64ecma"] = str(crc)
    return out


@attrs.frozen
class Scan:
    """What one read of an archive's stored bytes found (see :func:`scan`)."""

    #: Stored bytes read, and their sha256 (hex).
    count: int
    sha256: str
    #: The first decompressed bytes (``meta.json`` lies within) and the last KiB.
    head: bytes
    tail: bytes

    @property
    def tar_ends(self) -> bool:
        """Whether the tar stream ends with its end-of-archive blocks."""
        return len(self.tail) == _TAR_END and self.tail.count(0) == _TAR_END


def scan(data_name: str, raw: IO[bytes]) -> Scan:
    """Read the archive data *raw* (stored as *data_name*) once, to its end.

    Raises one of :data:`DECOMPRESS_ERRORS` when the data does not
    decompress or ends inside a frame; memory stays bounded however large.
    """
    frames = ZstdFrames() if codec_for(data_name).name == "zstd" else None
    hashing = HashingReader(raw, see=frames.feed if frames is not None else None)
    head = bytearray()
    tail = b""
    for block in _decompressed(data_name, hashing, frames):
        if len(head) < _HEAD:
            head += block[: _HEAD - len(head)]
        tail = (tail + block[-_TAR_END:])[-_TAR_END:]
    return Scan(hashing.count, hashing.digest.hexdigest(), bytes(head), tail)


def _decompressed(data_name: str, raw: HashingReader, frames: ZstdFrames | None) -> Iterator[bytes]:
    """The decompressed blocks of an archive; a truncated stream raises, even at a block edge.

    zstd's streaming reader ends quietly when its input stops inside a frame
    (a cut just before the content checksum, say), so the compressed bytes
    also go through *frames* (fed by *raw*), which follows the frames'
    structure and says whether the last one is whole. Memory stays bounded:
    the reader hands out at most a block at a time, however well the data
    compresses. gzip's reader raises EOFError on a truncated member itself, and
    checks each member's CRC-32.
    """
    reader = codec_for(data_name).reader(raw)  # type: ignore[arg-type]
    while block := reader.read(_BLOCK):
        yield block
    raw.drain(_BLOCK)  # bytes after the last frame: the frame walk refuses them
    if frames is not None:
        frames.finish()


_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE = 0x184D2A50  # to 0x184D2A5F


class ZstdFrames:
    """Follow the frame and block headers of a zstd stream (RFC 8878), not its content.

    Fed the compressed bytes in order; :meth:`finish` raises :class:`EOFError`
    unless the stream held at least one frame and ended exactly after a whole
    one (its last block and, when flagged, its checksum).
    """

    def __init__(self) -> None:
        self.pending = bytearray()
        self.skip = 0
        self.need = 4
        self.state = "magic"
        self.frames = 0
        self.checksum = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.skip:
                n = min(self.skip, len(view))
                self.skip -= n
                view = view[n:]
                continue
            take = min(self.need - len(self.pending), len(view))
            self.pending += view[:take]
            view = view[take:]
            if len(self.pending) == self.need:
                head = bytes(self.pending)
                self.pending.clear()
                self._step(head)

    def _step(self, head: bytes) -> None:
        if self.state == "magic":
            magic = int.from_bytes(head, "little")
            if magic == _ZSTD_MAGIC:
                self.state, self.need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == _SKIPPABLE:
                self.state, self.need = "skippable", 4
            else:
                raise zstandard.ZstdError(f"not a zstd frame (magic {magic:#010x})")
        elif self.state == "skippable":
            self.skip = int.from_bytes(head, "little")
            self.state, self.need = "magic", 4
        elif self.state == "descriptor":
            fhd = head[0]
            single = bool(fhd & 0x20)
            self.checksum = bool(fhd & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 0x03] + fcs
            self.frames += 1
            self.state, self.need = "block", 3
            self.skip = rest
        elif self.state == "block":
            header = int.from_bytes(head, "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            if kind == 3:
                raise zstandard.ZstdError("a zstd block of the reserved type")
            self.skip = 1 if kind == 1 else size
            if last:
                self.state, self.need = "end", (4 if self.checksum else 0)
                if not self.checksum:
                    self.state, self.need = "magic", 4
        elif self.state == "end":
            self.state, self.need = "magic", 4

    def finish(self) -> None:
        if self.frames == 0:
            raise EOFError("no zstd frame in the data")
        if self.state != "magic" or self.pending or self.skip:
            raise EOFError("the data ends inside a zstd frame (truncated)")


def check_meta(
    head: bytes, sidecar: Sidecar, corrupt: Callable[[str, str | None], ArchiveCorrupt]
) -> None:
    """``meta.json`` is the first member of *head*, names the archive and has ``backed_at``."""
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r:") as tar:
            info = tar.next()
            if info is None or info.name != "meta.json" or not info.isreg():
                raise corrupt("meta.json is not the first member", "meta.json")
            f = tar.extractfile(info)
            assert f is not None
            body = f.read()
    except (tarfile.TarError, EOFError, OSError):
        raise corrupt("meta.json is not the first member", "meta.json") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise corrupt("meta.json is not JSON", "meta.json") from None
    if not isinstance(data, dict) or "backed_at" not in data:
        raise corrupt("meta.json has no backed_at", "meta.json")
    try:
        meta = ArchiveMeta.from_dict(data)
    except ArchiveCorrupt as exc:
        raise corrupt(exc.detail, "meta.json") from None
    if meta.id != sidecar.id:
        raise corrupt(f"meta.json names archive {meta.id}", "meta.json")


_KINDS = {
    stat.S_IFLNK: "symlink",
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}


def compare_tree(root: Path, manifest: Manifest) -> int:
    """Compare a restored tree under *root* with *manifest*; return the paths compared.

    Every ``data/<root name>/...`` entry must be at ``root/<root name>/...``
    with its type, mode, size (files), link target (links), device number
    (devices) and, for a hard link, the inode of its group's first name; and
    nothing else may be there. Contents were hashed as they were written.
    The tree is walked through directory descriptors (any path length). A
    device node may be missing when not running as root: only root makes them.
    """
    as_root = os.geteuid() == 0
    expected = 0  # the manifest's paths under data/ that must be there
    for entry in manifest.select(*ENTRY_TYPES):
        if entry.path.startswith("data/"):
            expected += as_root or entry.type not in _DEVICES
    # Hard links, checked at the end against their first names: (path, inode, first name).
    links: list[tuple[str, tuple[int, int], str]] = []
    present = 0
    top = os.fspath(root)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top):
        base = os.path.relpath(dirpath, top)
        for name in dirnames + filenames:
            rel = name if base == "." else f"{base}/{name}"
            found = manifest.get(f"data/{rel}")
            if found is None:
                raise ArchiveCorrupt(
                    "the restored tree holds a path the manifest does not list",
                    archive=manifest.archive,
                    member=f"data/{rel}",
                )
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            present += as_root or found.type not in _DEVICES
            if found.type == "hardlink":
                links.append((found.path, (st.st_dev, st.st_ino), found.target or ""))
            problem = _differs(st, found, name, dirfd)
            if problem:
                raise ArchiveCorrupt(problem, archive=manifest.archive, member=found.path)
    if present != expected:
        _name_missing(top, manifest, as_root)
    for path, inode, first in links:
        try:
            first_st = os.lstat(os.path.join(top, first.partition("/")[2]))
            first_inode = (first_st.st_dev, first_st.st_ino)
        except OSError:
            first_inode = None
        if first_inode != inode:
            raise ArchiveCorrupt(
                f"not a hard link of {first}", archive=manifest.archive, member=path
            )
    return expected


_DEVICES = ("chardev", "blockdev")


def _name_missing(top: str, manifest: Manifest, as_root: bool) -> None:
    """Raise naming a path of *manifest* missing under *top* (the walk counted fewer)."""
    for entry in manifest:
        parts = entry.path.split("/")
        if len(parts) < 2 or parts[0] != "data" or (entry.type in _DEVICES and not as_root):
            continue
        if not os.path.lexists(os.path.join(top, *parts[1:])):
            raise ArchiveCorrupt(
                "missing from the restored tree", archive=manifest.archive, member=entry.path
            )
    raise ArchiveCorrupt(  # not reached: the walk counted fewer paths than the manifest lists
        "a path is missing from the restored tree", archive=manifest.archive
    )


def _differs(st: os.stat_result, entry: Entry, name: str, dirfd: int) -> str | None:
    """What of a restored path differs from its manifest entry, if anything."""
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "other")
    want = "file" if entry.type == "hardlink" else entry.type
    if kind != want:
        return f"restored as a {kind}, the manifest says {entry.type}"
    if entry.type == "file" and st.st_size != entry.size:
        return f"restored with {st.st_size} bytes, the manifest says {entry.size}"
    if kind == "symlink":
        if os.readlink(name, dir_fd=dirfd) != entry.target:
            return "link target differs from the manifest"
        return None
    if kind in ("chardev", "blockdev") and st.st_rdev != entry.rdev:
        return "device number differs from the manifest"
    if entry.type != "hardlink" and stat.S_IMODE(st.st_mode) != stat.S_IMODE(entry.mode):
        return (
            f"mode {stat.S_IMODE(st.st_mode):o} differs from the manifest's "
            f"{stat.S_IMODE(entry.mode):o}"
        )
    return None
