"""Reading one stored archive as a stream: its members checked, its digest compared.

Archives are read as streams (never seeked), each archive of a chain once. The
archive's sha256 is computed while it is read and compared with its sidecar
when the stream ends. :func:`verify_archive` reads an archive to its end and
checks every member against the archive's manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import marshal
import tempfile
import weakref
import zlib
from collections.abc import Iterator
from typing import IO, Any

import attrs
import zstandard

from ..archive import ArchiveMeta, Sidecar
from ..codec import HashingReader, codec_for
from ..crypt import opened
from ..errors import ArchiveCorrupt, UnsafeArchive
from ..fsmeta import sparse_map_parse
from ..manifest import Manifest
from ..spillmap import SeenNames, SpillMap
from .inflate import Inflate
from .names import checked_name
from .tarread import (
    BLOCK,
    DIRTYPE,
    PAX_MAX,
    PREFETCH,
    Prefetch,
    Source,
    TarFormatError,
    TarMember,
    TarReader,
    type_name,
)

__all__ = [
    "ArchiveStream",
    "MemberData",
    "MemberRecord",
    "check_members",
    "hash_zeros",
    "member_records",
    "sparse_regions",
    "verify_archive",
]

#: Bytes of ``manifest.json`` kept in memory before its spool goes to a temporary file.
MANIFEST_IN_MEMORY = 4 << 20
#: Limit for ``meta.json``, read whole into memory, far above what cellvault writes.
META_MAX = 1 << 20

_CODEC_ERRORS = (zstandard.ZstdError, EOFError, zlib.error, OSError)


@attrs.frozen
class MemberRecord:
    """What a verify saw of one member."""

    type: str
    size: int
    mode: int
    sha256: str | None = None
    target: str | None = None


def _record_text(rec: MemberRecord) -> bytes:
    return marshal.dumps((rec.type, rec.size, rec.mode, rec.sha256, rec.target))


def _record_of(raw: bytes) -> MemberRecord:
    return MemberRecord(*marshal.loads(raw))  # noqa: S302 - our own temporary file


def member_records() -> SpillMap[MemberRecord]:
    """An empty map of member name to :class:`MemberRecord` (spilled past a number of members)."""
    return SpillMap(_record_text, _record_of)


class MemberData:
    """The data of the current member; a damaged or truncated stream raises naming it."""

    __slots__ = ("name", "reader", "stream")

    def __init__(self, reader: TarReader, stream: ArchiveStream, name: str) -> None:
        self.reader = reader
        self.stream = stream
        self.name = name
        reader.data = self

    def _current(self) -> TarReader:
        if self.reader.data is not self:
            raise ValueError(f"the data of {self.name} was read after the next member")
        return self.reader

    def _damaged(self, exc: Exception) -> ArchiveCorrupt:
        why = str(exc) if isinstance(exc, TarFormatError) else f"{type(exc).__name__}: {exc}"
        return self.stream.corrupt(
            f"unreadable data ({why}); truncated or damaged", member=self.name
        )

    def read(self, size: int = -1) -> bytes:
        """Up to *size* bytes (at most 1 MiB at a time); ``b""`` at the member's end."""
        reader = self._current()
        if size < 0 or size > BLOCK:
            size = BLOCK
        size = min(size, reader.left)
        if not size:
            return b""
        try:
            data = reader.source.take(size)
        except _CODEC_ERRORS as exc:
            raise self._damaged(exc) from None
        if not data:
            raise self._damaged(TarFormatError("unexpected end of data"))
        reader.left -= len(data)
        return data

    def readall(self) -> bytes:
        """All of the member's remaining data."""
        reader = self._current()
        try:
            data = reader.source.exact(reader.left)
        except (TarFormatError, *_CODEC_ERRORS) as exc:
            raise self._damaged(exc) from None
        reader.left = 0
        return data


class ArchiveStream:
    """Iterate the members of one stored archive, checking its digest at the end."""

    def __init__(self, raw: IO[bytes], sidecar: Sidecar, target: str) -> None:
        self.sidecar = sidecar
        self.target = target
        self.archive = str(sidecar.id)
        self._hashing = HashingReader(raw)
        #: What is decompressed: the stored bytes, or their plaintext when sealed.
        self._plain = opened(self._hashing, sidecar)
        self._reader = codec_for(sidecar.data_name).reader(self._plain)
        self.current: str | None = None
        self.meta: ArchiveMeta | None = None
        #: ``manifest.json``'s bytes once read (a spooled temporary file), and their sha256.
        self.manifest_raw: IO[bytes] | None = None
        self.manifest_sha256: str | None = None
        self._manifest: Manifest | None = None
        self._prefetch: Prefetch | Inflate | None = None
        #: Set when the stream ended but its sha256 or size differs from the sidecar: why.
        self.digest_mismatch: str | None = None

    def close(self, *, keep_plain: bool = False) -> None:
        """Stop the decompression thread, and the decryption one unless *keep_plain* (idempotent)."""
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None
        if not keep_plain and self._plain is not self._hashing:
            self._plain.close()

    def _spool_manifest(self, data: MemberData) -> None:
        """Keep ``manifest.json`` in a temporary file (in memory while it is small)."""
        spooled = tempfile.SpooledTemporaryFile(MANIFEST_IN_MEMORY)  # noqa: SIM115 - kept
        digest = hashlib.sha256()
        while block := data.read(BLOCK):
            digest.update(block)
            spooled.write(block)
        spooled.seek(0)
        # Read after the stream is closed (checked against the planned manifest),
        # so it lives as long as this object, and is closed with it.
        weakref.finalize(self, spooled.close)
        self.manifest_raw = spooled
        self.manifest_sha256 = digest.hexdigest()

    def corrupt(self, message: str, member: str | None = None) -> ArchiveCorrupt:
        return ArchiveCorrupt(
            message,
            archive=self.archive,
            member=member,
            target=self.target,
            hint="the stored copy is damaged; verify other targets and restore from a good one",
        )

    def members(self, *, once: bool = True) -> Iterator[tuple[TarMember, str, MemberData | None]]:
        """Yield each data member with its checked name and, for files, its data.

        ``meta.json`` and ``manifest.json`` are consumed here (see :attr:`meta`
        and :attr:`manifest_raw`). A file's data can be read until the next
        member is asked for.

        *once*: a name that appears twice is refused (kept in a
        :class:`~cellvault.spillmap.SeenNames`). A restore passes ``False``:
        it creates each file it takes with ``O_EXCL``, which refuses a repeat
        as well, and takes nothing else from the stream; the names then cost
        it nothing (a tenth of its staging at 200,000 files).
        """
        self._prefetch = Inflate.start(self._plain, self.sidecar.data_name, self.sidecar.size)
        if self._prefetch is None and PREFETCH:
            self._prefetch = Prefetch(self._reader)
        source = Source(self._prefetch or self._reader)
        try:
            yield from self._read_members(TarReader(source), SeenNames() if once else None)
            if self.meta is None:
                raise self.corrupt("the archive is empty (no meta.json)")
            if self.manifest_raw is None:
                raise self.corrupt(
                    "manifest.json is missing: the archive is truncated", member=self.current
                )
            self.current = None
            # The rest (the tar's zero records) is decompressed too, so that the
            # thread reaches the end; damage there shows as a digest mismatch.
            with contextlib.suppress(*_CODEC_ERRORS):
                while source.take(BLOCK):
                    pass
            self.close(keep_plain=True)  # before reading the raw stream from this thread
            self._plain.drain()
        except (TarFormatError, *_CODEC_ERRORS) as exc:
            where = f"at or after member {self.current}" if self.current else "at its start"
            why = str(exc) if isinstance(exc, TarFormatError) else f"{type(exc).__name__}: {exc}"
            raise self.corrupt(f"unreadable {where} ({why}); truncated or damaged") from None
        finally:
            # Also when the caller stops early or fails: no thread outlives the stream.
            self.close()
        if (
            self._hashing.count != self.sidecar.size
            or self._hashing.hexdigest() != self.sidecar.sha256
        ):
            self.digest_mismatch = (
                f"sha256 {self._hashing.hexdigest()[:16]}… over {self._hashing.count} bytes does not match "
                f"the sidecar ({self.sidecar.sha256[:16]}… over {self.sidecar.size} bytes)"
            )
            raise self.corrupt(self.digest_mismatch)

    def _read_members(
        self, reader: TarReader, seen: SeenNames | None
    ) -> Iterator[tuple[TarMember, str, MemberData | None]]:
        """The members up to ``manifest.json``: ``meta.json`` first, the data after it."""
        first = True
        while (member := reader.next()) is not None:
            self.current = member.name
            name = checked_name(member.name, self.archive)
            if seen is not None and (twice := seen.add(name)) is not None:
                raise UnsafeArchive(
                    "member appears twice; refused", archive=self.archive, member=twice
                )
            kind = member.kind
            if first:
                first = False
                if name != "meta.json" or kind != "file":
                    raise self.corrupt("meta.json is not the first member", member=name)
                self.meta = self._meta(member, MemberData(reader, self, name))
                continue
            if name == "manifest.json":
                if kind != "file":
                    raise self.corrupt("manifest.json is not a file", member=name)
                if self.manifest_raw is not None:
                    raise self.corrupt("a member follows manifest.json", member=name)
                self._spool_manifest(MemberData(reader, self, name))
                continue
            self._check_data_member(member, name)
            yield member, name, MemberData(reader, self, name) if kind == "file" else None
        if seen is not None:
            if (twice := seen.finish()) is not None:
                raise UnsafeArchive(
                    "member appears twice; refused", archive=self.archive, member=twice
                )
            seen.close()

    def _check_data_member(self, member: TarMember, name: str) -> None:
        """A member of the cell's data (or dumps): a file, directory or link below them."""
        if self.manifest_raw is not None:
            raise self.corrupt("a member follows manifest.json", member=name)
        kind = member.kind
        if kind is None:
            raise UnsafeArchive(
                f"member is a {type_name(member.type)}; cellvault writes no such member",
                archive=self.archive,
                member=name,
            )
        top, slash, _ = name.partition("/")
        if not slash or top not in ("data", "dumps"):
            raise UnsafeArchive(
                "member lies outside data/ and dumps/", archive=self.archive, member=name
            )
        if top == "dumps" and kind not in ("file", "dir"):
            raise UnsafeArchive(
                f"a {kind} under dumps/; refused", archive=self.archive, member=name
            )
        if kind == "hardlink":
            target = member.linkname.rstrip("/")
            parts = target.split("/")
            if target != member.linkname or "" in parts or "." in parts or ".." in parts:
                target = ""
            if not target.startswith("data/") or target == name or "\0" in target:
                raise UnsafeArchive(
                    f"hard link to {member.linkname!r}, outside the cell's data; refused",
                    archive=self.archive,
                    member=name,
                )

    def _meta(self, member: TarMember, data: MemberData) -> ArchiveMeta:
        if member.size > META_MAX:
            raise self.corrupt(f"meta.json has {member.size} bytes; too large", member="meta.json")
        try:
            parsed = json.loads(data.readall())
        except (ValueError, RecursionError):
            raise self.corrupt("meta.json is not JSON", member="meta.json") from None
        if not isinstance(parsed, dict) or "backed_at" not in parsed:
            raise self.corrupt("meta.json has no backed_at", member="meta.json")
        try:
            meta = ArchiveMeta.from_dict(parsed)
        except ArchiveCorrupt as exc:
            # It names the archive the damaged meta.json claims to be: name the one read.
            raise self.corrupt(exc.detail, member="meta.json") from None
        if meta.id != self.sidecar.id:
            raise self.corrupt(f"meta.json names archive {meta.id}", member="meta.json")
        return meta

    def manifest(self) -> Manifest:
        """The manifest read from the end of the stream (after :meth:`members` is exhausted).

        Parsed once, on the first call.
        """
        assert self.manifest_raw is not None
        if self._manifest is None:
            try:
                self.manifest_raw.seek(0)
                self._manifest = Manifest.read(self.manifest_raw, archive=self.archive)
            except ArchiveCorrupt as exc:
                # What the parser found wrong, said of this archive on this target.
                raise self.corrupt(exc.detail, member="manifest.json") from None
            except (AttributeError, RecursionError, TypeError) as exc:
                # from_json names bad keys and values; entries that are not even
                # JSON objects, or nesting too deep to parse, end up here.
                raise self.corrupt(
                    f"manifest is unusable ({type(exc).__name__})", member="manifest.json"
                ) from None
        return self._manifest


def sparse_regions(data: MemberData, realsize: int) -> Iterator[tuple[int, bytes]]:
    """The data regions of a sparse member (PAX sparse 1.0): (offset, bytes), in order.

    Each region comes in pieces of at most :data:`BLOCK` bytes. A map that is
    malformed, or data that ends before the map's regions do, is
    :class:`ArchiveCorrupt` naming the member.
    """
    stream = data.stream
    head = b""
    while True:
        try:
            parsed = sparse_map_parse(head, realsize)
        except ValueError as exc:
            raise stream.corrupt(f"{exc}; damaged", member=data.name) from None
        if parsed is not None:
            break
        if len(head) > PAX_MAX:
            raise stream.corrupt("the sparse map ends early; damaged", member=data.name)
        # Twice as much each time (the map is parsed from its start again): a map of n
        # bytes costs about 2n of parsing, not n * n / 512. Never past PAX_MAX + 512.
        more = data.read(min(max(512, len(head)), PAX_MAX + 512 - len(head)))
        if not more:
            raise stream.corrupt("the sparse map ends early; damaged", member=data.name)
        head += more
    regions, used = parsed
    while len(head) < used:
        more = data.read(used - len(head))
        if not more:
            raise stream.corrupt("the sparse map ends early; damaged", member=data.name)
        head += more
    rest = head[used:]
    for offset, length in regions:
        pos = offset
        while length:
            if not rest:
                rest = data.read(min(length, BLOCK))
                if not rest:
                    raise stream.corrupt("sparse data ends early; damaged", member=data.name)
            piece, rest = rest[:length], rest[length:]
            yield pos, piece
            pos += len(piece)
            length -= len(piece)
    if rest or data.read(1):
        raise stream.corrupt("data after the sparse map's regions; damaged", member=data.name)


def hash_zeros(digest: Any, n: int) -> None:
    """Feed *n* zero bytes (a hole) to *digest*."""
    zeros = bytes(min(n, BLOCK))
    while n > 0:
        step = min(n, BLOCK)
        digest.update(zeros[:step] if step < len(zeros) else zeros)
        n -= step


def verify_archive(
    raw: IO[bytes], sidecar: Sidecar, target: str
) -> tuple[ArchiveMeta, Manifest, int]:
    """Read a stored archive to its end and check it against its sidecar and manifest.

    Checks: the sha256 and size match the sidecar; ``meta.json`` is first and
    has ``backed_at``; every member is safe, listed in the manifest and
    matches it (type, size, sha256, mode, link target); every path the
    manifest says this archive holds is present. Returns the meta, the
    manifest and the number of members.
    """
    stream = ArchiveStream(raw, sidecar, target)
    seen = member_records()
    sha256 = hashlib.sha256
    try:
        try:
            for member, name, data in stream.members():
                if data is not None:
                    digest = sha256()
                    size = member.size
                    if member.realsize is not None:
                        size = member.realsize
                        pos = 0
                        for offset, block in sparse_regions(data, size):
                            hash_zeros(digest, offset - pos)
                            digest.update(block)
                            pos = offset + len(block)
                        hash_zeros(digest, size - pos)
                    else:
                        while block := data.read(BLOCK):
                            digest.update(block)
                    seen[name] = MemberRecord("file", size, member.mode, digest.hexdigest())
                elif member.type == DIRTYPE:
                    seen[name] = MemberRecord("dir", 0, member.mode)
                else:
                    kind = member.kind or "?"
                    link = member.linkname if kind in ("symlink", "hardlink") else None
                    seen[name] = MemberRecord(kind, 0, member.mode, target=link)
        finally:
            stream.close()
    except ArchiveCorrupt:
        if not stream.digest_mismatch or stream.manifest_raw is None:
            raise
        # The whole stream read but does not hash right: name the damaged member if the
        # archive's own manifest can tell which one it is.
        try:
            check_members(stream, stream.manifest(), seen)
        except ArchiveCorrupt as damaged:
            where = ArchiveCorrupt(
                "", archive=damaged.archive, member=damaged.member, target=damaged.target
            ).message
            detail = damaged.message.removeprefix(where)
            raise stream.corrupt(
                f"{detail}; {stream.digest_mismatch}", member=damaged.member
            ) from None
        raise
    assert stream.meta is not None
    manifest = stream.manifest()
    check_members(stream, manifest, seen)
    return stream.meta, manifest, len(seen)


def check_members(
    stream: ArchiveStream,
    manifest: Manifest,
    seen: SpillMap[MemberRecord] | dict[str, MemberRecord],
) -> None:
    """Compare what a stream held with its manifest; raise :class:`ArchiveCorrupt` on a difference."""
    for name, rec in seen.items():
        entry = manifest.get(name)
        if entry is None:
            raise stream.corrupt("member is not in the manifest", member=name)
        if entry.type != rec.type:
            raise stream.corrupt(
                f"member is a {rec.type}, the manifest says {entry.type}", member=name
            )
        if rec.type == "file":
            if entry.archive != stream.archive:
                raise stream.corrupt(f"manifest says archive {entry.archive} holds it", member=name)
            if rec.size != entry.size or rec.sha256 != entry.sha256:
                raise stream.corrupt(
                    "content does not match the manifest (sha256 differs)", member=name
                )
        if rec.type in ("symlink", "hardlink") and rec.target != entry.target:
            raise stream.corrupt("link target does not match the manifest", member=name)
        if rec.mode != entry.mode:
            raise stream.corrupt(
                f"mode {rec.mode:o} does not match the manifest ({entry.mode:o})", member=name
            )
    for entry in manifest:
        held_here = entry.type != "file" or entry.archive == stream.archive
        if held_here and entry.path not in seen:
            raise stream.corrupt(
                "listed in the manifest but missing from the archive", member=entry.path
            )
