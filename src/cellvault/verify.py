"""Verify levels: ``quick``, ``read``, ``full`` and ``drill``, and what each compares.

* **quick** reads no archive data: the sidecar is committed, the data and
  manifest objects exist, the data object has the size the sidecar records
  and, where the store reports a checksum of its own on a HEAD request (OSS's
  CRC-64, an S3 single-part ETag), that checksum matches the one recorded at
  backup time; the chain of an incremental is committed on the same target.
  It proves the stored object is the one that was written, not that every
  byte still reads back: that is ``full``.
* **read** reads every stored byte once and unpacks nothing to disk: the
  sha256 and size against the sidecar, the stream decompresses to its end
  (zstd's content checksum and gzip's CRC-32 prove the decompressed bytes are
  the ones that were compressed), ``meta.json`` is first and has
  ``backed_at``, the tar stream ends with its end-of-archive blocks, the
  manifest copy parses and names the archive, and the chain is committed. It is
  the manual's check after every backup ("the archive unpacks, ``meta.json``
  has ``backed_at``") at the cost of one decompression: the default after a
  backup (``BACKUP_VERIFY_LEVEL``).
* **full** reads every archive back and checks every member against the
  manifest (see :func:`cellvault.extract.verify_archive`), and the chain.
* **drill** restores the newest archive of a cell from one target into a
  scratch directory, compares the tree with the manifest, runs the
  ``cellvault_health_check`` hooks and measures how long it took (the RTO).

This module holds the pieces the :class:`~cellvault.Vault` combines.
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
from pathlib import Path, PurePosixPath

import zstandard

from .archive import ArchiveId, ArchiveMeta, Sidecar
from .codec import HashingReader, codec_for
from .errors import ArchiveCorrupt
from .manifest import Manifest
from .targets.base import Target

__all__ = ["LEVELS", "compare_tree", "content_checksums", "quick_check", "read_check"]

#: The verify levels, cheapest first.
LEVELS: tuple[str, ...] = ("quick", "read", "full", "drill")

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


def quick_check(target: Target, sidecar: Sidecar, committed: set[ArchiveId]) -> tuple[str, ...]:
    """Check a committed archive on *target* without reading its data.

    *committed* are the archive ids committed on the target (for the chain).
    Returns what was compared (``size``, and each checksum kind); raises
    :class:`ArchiveCorrupt` naming the archive and target otherwise.
    """
    ident = str(sidecar.id)
    key = f"{sidecar.id.cell}/{sidecar.data_name}"
    try:
        with target.guard(f"stat archive {ident}", missing_ok=True):
            found = target.retrying(target.stat, key)
    except FileNotFoundError:
        raise ArchiveCorrupt(
            "data is missing although the sidecar exists",
            archive=ident,
            target=target.name,
            hint="restore from another target; the next backup stores a new copy",
        ) from None
    if found.size != sidecar.size:
        raise ArchiveCorrupt(
            f"stored data is {found.size} bytes, the sidecar says {sidecar.size} "
            "(truncated or replaced)",
            archive=ident,
            target=target.name,
            hint="restore from another target; run 'cellvault verify --level full' to read it back",
        )
    checks = ["size"]
    for kind, value in sorted(found.checksums.items()):
        recorded = sidecar.checksums.get(kind)
        if recorded is None:
            continue
        if recorded.lower() != value.lower():
            raise ArchiveCorrupt(
                f"the store's {kind} of the data is {value}, the sidecar recorded {recorded} "
                "(the object was replaced or damaged)",
                archive=ident,
                target=target.name,
                hint="restore from another target; run 'cellvault verify --level full' to read it back",
            )
        checks.append(kind)
    try:
        with target.guard(f"stat manifest of {ident}", missing_ok=True):
            target.retrying(target.stat, target.manifest_key(sidecar.id))
    except FileNotFoundError:
        raise ArchiveCorrupt(
            "manifest copy is missing", archive=ident, target=target.name
        ) from None
    for holder in sidecar.meta.chain:
        if holder not in committed:
            raise ArchiveCorrupt(
                f"its chain needs archive {holder}, which is not committed on this target",
                archive=ident,
                target=target.name,
                hint="restore from another target, or take a full backup",
            )
    return tuple(checks)


def read_check(
    target: Target,
    sidecar: Sidecar,
    committed: set[ArchiveId],
    *,
    manifest_copy: bytes | None = None,
    manifest: Manifest | None = None,
) -> tuple[str, ...]:
    """Read a committed archive on *target* once, to its end, without unpacking it.

    Checks that the stored bytes have the sidecar's size and sha256; that they
    decompress to the end (the codec's own checksum of the content, written
    by cellvault 0.1.0: zstd's XXH64, gzip's CRC-32); that ``meta.json``
    is the first member, names this archive and has ``backed_at``; that the
    tar stream ends with its end-of-archive blocks; that the manifest copy
    decompresses, parses and names this archive (and, with *manifest_copy*,
    the compressed bytes just written, is byte for byte that, and *manifest*,
    what they hold, need not be parsed again); and that the chain of an
    incremental is committed (*committed*). Returns what was
    compared; raises :class:`ArchiveCorrupt` naming the archive and target.
    """
    ident = str(sidecar.id)

    def corrupt(message: str, member: str | None = None) -> ArchiveCorrupt:
        return ArchiveCorrupt(
            message,
            archive=ident,
            member=member,
            target=target.name,
            hint="the stored copy is damaged; verify other targets and restore from a good one",
        )

    frames = _ZstdFrames() if codec_for(sidecar.data_name).name == "zstd" else None
    with target.open_archive(sidecar) as raw:
        hashing = HashingReader(raw, see=frames.feed if frames is not None else None)
        head = bytearray()
        tail = b""
        with target.guard(f"read archive {ident}"):
            try:
                for block in _decompressed(sidecar.data_name, hashing, frames):
                    if len(head) < _HEAD:
                        head += block[: _HEAD - len(head)]
                    tail = (tail + block[-_TAR_END:])[-_TAR_END:]
            except (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, EOFError) as exc:
                raise corrupt(f"data does not decompress ({exc})") from None
    if hashing.count != sidecar.size:
        raise corrupt(f"stored data is {hashing.count} bytes, the sidecar says {sidecar.size}")
    if hashing.digest.hexdigest() != sidecar.sha256:
        raise corrupt("sha256 of the stored data differs from the sidecar")
    if len(tail) < _TAR_END or tail.count(0) != _TAR_END:
        raise corrupt("the tar stream has no end-of-archive blocks (truncated)")
    _check_meta(bytes(head), sidecar, corrupt)
    try:
        with target.guard(f"read manifest of {ident}", missing_ok=True):
            stored = target.retrying(target.read_bytes, target.manifest_key(sidecar.id))
    except FileNotFoundError:
        raise corrupt("manifest copy is missing") from None
    if manifest_copy is not None and stored != manifest_copy:
        raise corrupt("the stored manifest copy differs from the one written")
    if manifest is None or manifest_copy is None:
        manifest = target.parse_manifest(sidecar, stored)
    needed = {str(a) for a in sidecar.meta.chain} | manifest.holders()
    for holder in sorted(needed - {ident}):
        if ArchiveId.parse(holder) not in committed:
            raise ArchiveCorrupt(
                f"its chain needs archive {holder}, which is not committed on this target",
                archive=ident,
                target=target.name,
                hint="restore from another target, or take a full backup",
            )
    return ("size", "sha256", "decompress", "meta.json", "manifest", "chain")


def _decompressed(
    data_name: str, raw: HashingReader, frames: _ZstdFrames | None
) -> Iterator[bytes]:
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


class _ZstdFrames:
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


def _check_meta(
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
        detail = exc.message.partition(": ")[2] or "meta.json is unusable"
        raise corrupt(detail, "meta.json") from None
    if meta.id != sidecar.id:
        raise corrupt(f"meta.json names archive {meta.id}", "meta.json")


def compare_tree(root: Path, manifest: Manifest) -> int:
    """Compare a restored tree under *root* with *manifest*; return the paths compared.

    Every ``data/<root name>/...`` entry must be at ``root/<root name>/...``
    with its type, mode, size (files) and link target (links), and nothing
    else may be there. Contents were hashed as they were written.
    """
    expected: dict[str, str] = {}
    for entry in manifest:
        parts = PurePosixPath(entry.path).parts
        if len(parts) < 2 or parts[0] != "data":
            continue
        rel = "/".join(parts[1:])
        expected[rel] = entry.path
        dest = root.joinpath(*parts[1:])
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            raise ArchiveCorrupt(
                "missing from the restored tree", archive=manifest.archive, member=entry.path
            ) from None
        kind = (
            "symlink"
            if stat.S_ISLNK(st.st_mode)
            else "dir"
            if stat.S_ISDIR(st.st_mode)
            else "file"
            if stat.S_ISREG(st.st_mode)
            else "other"
        )
        problem = None
        if kind != entry.type:
            problem = f"restored as a {kind}, the manifest says {entry.type}"
        elif kind == "file" and st.st_size != entry.size:
            problem = f"restored with {st.st_size} bytes, the manifest says {entry.size}"
        elif kind == "symlink" and os.readlink(dest) != entry.target:
            problem = "link target differs from the manifest"
        elif kind != "symlink" and stat.S_IMODE(st.st_mode) != stat.S_IMODE(entry.mode):
            problem = (
                f"mode {stat.S_IMODE(st.st_mode):o} differs from the manifest's "
                f"{stat.S_IMODE(entry.mode):o}"
            )
        if problem:
            raise ArchiveCorrupt(problem, archive=manifest.archive, member=entry.path)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in expected:
                raise ArchiveCorrupt(
                    "the restored tree holds a path the manifest does not list",
                    archive=manifest.archive,
                    member=f"data/{rel}",
                )
    return len(expected)
