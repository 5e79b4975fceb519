"""Reading archives back: verify them, and extract them safely into a staging tree.

Archives are read as streams (never seeked), each archive of a chain once. The
archive's sha256 is computed while it is read and compared with its sidecar
when the stream ends. The tar stream is parsed by a small reader for the
subset cellvault writes (ustar headers and pax ``x`` records); the input is
untrusted, so every malformed or truncated header is :class:`ArchiveCorrupt`.
Member names and link targets are checked before anything is written:
absolute paths, ``..``, hard links, devices and links that escape the
destination are refused with :class:`UnsafeArchive`. Files are created with
``O_EXCL | O_NOFOLLOW`` under directories this module made, so nothing is ever
written through a link.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import stat
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

import attrs
import zstandard

from .archive import ArchiveMeta, Sidecar
from .codec import HashingReader, codec_for
from .errors import ArchiveCorrupt, UnsafeArchive
from .manifest import Entry, Manifest

__all__ = [
    "ArchiveStream",
    "MemberRecord",
    "StagedTree",
    "TarMember",
    "safe_member_path",
    "verify_archive",
]

BLOCK = 1 << 20
#: Decompressed bytes fetched at a time: headers and small members are sliced from it.
READ_CHUNK = 256 << 10
#: Limits for what is read whole into memory, far above what cellvault writes.
PAX_MAX = 1 << 20
META_MAX = 1 << 20
#: Largest member size accepted (a size field is at most 2**88 in base-256).
SIZE_MAX = 1 << 62
#: Decompressed chunks read ahead by the decompression thread (0: no thread).
#: Writer threads for the files were tried too: on 2 cores their GIL hand-offs
#: and concurrent creates in one directory cost more than they overlapped.
PREFETCH = 8

_CODEC_ERRORS = (zstandard.ZstdError, EOFError, zlib.error, OSError)
_ZERO_BLOCK = bytes(512)
_SIGNED = struct.Struct("148b8x356b")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Tar type flags.
_REGTYPE, _AREGTYPE, _DIRTYPE, _SYMTYPE = b"0", b"\0", b"5", b"2"
_KINDS = {_REGTYPE: "file", _AREGTYPE: "file", _DIRTYPE: "dir", _SYMTYPE: "symlink"}
#: Types whose size field does not count data blocks.
_NO_DATA = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))
#: Extension headers cellvault never writes: GNU long names, global pax headers, sparse files.
_UNSUPPORTED = {b"g": "global pax", b"L": "GNU long name", b"K": "GNU long link"}
_UNSUPPORTED |= {b"S": "GNU sparse", b"M": "GNU multi-volume", b"V": "GNU volume"}


@attrs.frozen
class MemberRecord:
    """What a verify saw of one member."""

    type: str
    size: int
    mode: int
    sha256: str | None = None
    target: str | None = None


def _checked_name(name: str, archive: str) -> str:
    """Check an archive member name and return it without a trailing slash."""
    if not name or name[0] == "/" or "\0" in name:
        raise UnsafeArchive(
            f"member name {name!r} is absolute or empty; refused", archive=archive, member=name
        )
    norm = name.rstrip("/")
    parts = norm.split("/")
    if "" in parts or "." in parts or ".." in parts:
        raise UnsafeArchive(
            f"member name {name!r} has '..', '.' or empty components; refused",
            archive=archive,
            member=name,
        )
    return norm


def safe_member_path(name: str, *, archive: str) -> PurePosixPath:
    """Check an archive member name; raise :class:`UnsafeArchive` for a hostile one."""
    return PurePosixPath(*_checked_name(name, archive).split("/"))


def _check_link(
    entry_path: PurePosixPath,
    target: str,
    *,
    archive: str,
    allow_external: bool,
    links: Mapping[str, str] | None = None,
) -> None:
    """Refuse a link that resolves outside its cell root.

    The target is resolved below ``data/<root>/`` component by component;
    *links* (path -> target of the archive's other symbolic links) are
    followed on the way, so ``a -> d/up/..`` with ``d/up -> ..`` is caught too.
    """
    if allow_external:
        return

    def refuse(why: str) -> UnsafeArchive:
        return UnsafeArchive(
            f"symbolic link to {target!r} {why}; refused",
            archive=archive,
            member=entry_path.as_posix(),
            hint="restore with allow_external_links (--allow-external-links) "
            "if the archive is trusted",
        )

    if target.startswith("/"):
        raise refuse("points to an absolute path, outside the destination")
    links = links or {}
    # Resolve lexically below the cell root: data/<root>/...
    root_depth = 2
    base = list(entry_path.parts[:-1])
    todo = list(reversed(target.split("/")))
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if len(base) <= root_depth:
                raise refuse("points outside the destination")
            base.pop()
            continue
        base.append(part)
        via = links.get("/".join(base))
        if via is None:
            continue
        hops += 1
        if hops > 40:
            return  # a loop: the kernel refuses to resolve it (ELOOP), it leads nowhere
        if via.startswith("/"):
            through = "/".join(base)
            raise refuse(f"leads through the link {through} to an absolute path, outside")
        base.pop()
        todo.extend(reversed(via.split("/")))


# -- the tar reader ---------------------------------------------------------------
#
# tarfile's stream mode cost about 1 s per 6,000 members in header parsing
# (frombuf, _proc_pax, nti) and copied its buffer at every header
# (docs/performance.md, proposals 1 and 4). This reader parses only what
# extraction and verification use: name, type, mode, size, link target, and the
# pax path, linkpath and size records. Anything else malformed is _BadTar.


class _BadTar(Exception):
    """The tar stream is malformed or ends early; reported as :class:`ArchiveCorrupt`."""


class TarMember:
    """One member's header, as the reader parsed it (names not checked yet)."""

    __slots__ = ("linkname", "mode", "name", "size", "type")

    def __init__(self, name: str, type: bytes, mode: int, size: int, linkname: str) -> None:
        self.name = name
        self.type = type
        self.mode = mode
        self.size = size
        self.linkname = linkname

    @property
    def kind(self) -> str | None:
        """``file``, ``dir`` or ``symlink``; ``None`` for any other type."""
        return _KINDS.get(self.type)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Source:
    """Buffered reads of the decompressed stream; large reads bypass the buffer."""

    def __init__(self, raw: _Readable, chunk: int = READ_CHUNK) -> None:
        self.raw = raw
        self.chunk = chunk
        self.buf = b""
        self.pos = 0

    def take(self, n: int) -> bytes:
        """Between 1 and *n* bytes (*n* > 0); ``b""`` only at the end of the stream."""
        buf, pos = self.buf, self.pos
        avail = len(buf) - pos
        if not avail:
            if n >= self.chunk:
                return self.raw.read(min(n, BLOCK))
            buf = self.buf = self.raw.read(self.chunk)
            pos = self.pos = 0
            avail = len(buf)
            if not avail:
                return b""
        if avail <= n:
            self.buf, self.pos = b"", 0
            return buf if pos == 0 else buf[pos:]
        self.pos = pos + n
        return buf[pos : pos + n]

    def exact(self, n: int) -> bytes:
        """Exactly *n* bytes, or :class:`_BadTar` if the stream ends first."""
        data = self.take(n) if n else b""
        if len(data) == n:
            return data
        parts = [data]
        need = n - len(data)
        while need:
            data = self.take(need)
            if not data:
                raise _BadTar("unexpected end of data")
            parts.append(data)
            need -= len(data)
        return b"".join(parts)

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self.take(min(n, BLOCK)))
            if not got:
                raise _BadTar("unexpected end of data")
            n -= got


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 (GNU) when the high bit is set."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0x80:
            return value
        if field[0] == 0xFF:
            return value - (1 << (8 * (len(field) - 1)))
        raise _BadTar("invalid number in a header")
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise _BadTar("invalid number in a header")
    return int(text, 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    # The checksum field counts as eight spaces; some writers summed signed bytes.
    unsigned = sum(block) - sum(block[148:156]) + 256
    return stored == unsigned or stored == sum(_SIGNED.unpack(block)) + 256


def _pax_records(payload: bytes, records: dict[bytes, bytes]) -> None:
    """Parse ``"<length> <key>=<value>\\n"`` records into *records* (later ones win)."""
    pos, end = 0, len(payload)
    while pos < end and payload[pos] != 0:
        space = payload.find(b" ", pos, pos + 21)
        digits = payload[pos:space]
        if space < 0 or not digits.isdigit():
            raise _BadTar("invalid pax header")
        stop = pos + int(digits)
        if stop > end or stop <= space + 2 or payload[stop - 1] != 0x0A:
            raise _BadTar("invalid pax header")
        key, eq, value = payload[space + 1 : stop - 1].partition(b"=")
        if not eq or not key:
            raise _BadTar("invalid pax header")
        records[key] = value
        pos = stop


def _pax_size(value: bytes) -> int:
    if not value.isdigit() or len(value) > 19:
        raise _BadTar("invalid size in a pax header")
    return int(value)


class _Prefetch:
    """Decompress on a thread of its own, :data:`PREFETCH` chunks ahead of the parser.

    zstd (and zlib, on large buffers) release the GIL, so decompression overlaps
    with parsing, hashing and writing. The thread's errors are raised by
    :meth:`read`, in stream order; :meth:`close` stops and joins the thread.
    """

    def __init__(self, raw: IO[bytes], chunk: int = READ_CHUNK, depth: int = PREFETCH) -> None:
        self._raw = raw
        self._chunk = chunk
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._left = b""
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="cellvault-decompress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        item: bytes | BaseException
        try:
            while not self._stop.is_set():
                item = self._raw.read(self._chunk)
                self._put(item)
                if not item:
                    return
        except BaseException as exc:  # noqa: BLE001 - raised by read(), on the reading thread
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1) -> bytes:
        if not self._left:
            if self._ended:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if not item:
                self._ended = True
                return b""
            self._left = item
        data = self._left
        if 0 <= size < len(data):
            data, self._left = data[:size], data[size:]
        else:
            self._left = b""
        return data

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _TarReader:
    """Iterate the headers of a tar stream; :attr:`left` bytes of data follow the last one."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.left = 0
        self.pad = 0
        #: The reader of the current member's data (set by the caller).
        self.data: _MemberData | None = None

    def next(self) -> TarMember | None:
        """The next member's header, or ``None`` at the end of the archive."""
        source = self.source
        self.data = None
        if self.left or self.pad:
            source.skip(self.left + self.pad)
            self.left = self.pad = 0
        pax: dict[bytes, bytes] = {}
        while True:
            block = source.take(512)
            if len(block) < 512:
                if not block:
                    if pax:
                        raise _BadTar("the archive ends after a pax header")
                    return None  # ends on a header boundary: the caller sees what is missing
                block += source.exact(512 - len(block))
            if block == _ZERO_BLOCK:
                if pax:
                    raise _BadTar("the archive ends after a pax header")
                return None
            if not _checksum_ok(block):
                raise _BadTar("bad header checksum")
            kind = block[156:157]
            size = _number(block[124:136])
            if size < 0 or size > SIZE_MAX:
                raise _BadTar(f"member size {size} out of range")
            if kind == b"x":
                if size > PAX_MAX:
                    raise _BadTar(f"pax header of {size} bytes; too large")
                _pax_records(source.exact(size), pax)
                source.skip(-size % 512)
                continue
            if kind in _UNSUPPORTED:
                raise _BadTar(f"{_UNSUPPORTED[kind]} header; cellvault does not write those")
            name = _text(block[0:100])
            if block[257:263] == b"ustar\0":
                prefix = _text(block[345:500])
                if prefix:
                    name = f"{prefix}/{name}"
            linkname = _text(block[157:257])
            if pax:
                if b"path" in pax:
                    name = pax[b"path"].decode("utf-8", "surrogateescape")
                if b"linkpath" in pax:
                    linkname = pax[b"linkpath"].decode("utf-8", "surrogateescape")
                if b"size" in pax:
                    size = _pax_size(pax[b"size"])
                    if size > SIZE_MAX:
                        raise _BadTar(f"member size {size} out of range")
            if kind == _AREGTYPE and name.endswith("/"):
                kind = _DIRTYPE  # the old V7 way of writing a directory
            if kind == _DIRTYPE:
                name = name.rstrip("/")  # as tarfile reports it: errors name "data/crm/conf"
            member = TarMember(name, kind, _number(block[100:108]), size, linkname)
            if kind not in _NO_DATA:
                self.left = size
                self.pad = -size % 512
            return member


class _MemberData:
    """The data of the current member; a damaged or truncated stream raises naming it."""

    __slots__ = ("name", "reader", "stream")

    def __init__(self, reader: _TarReader, stream: ArchiveStream, name: str) -> None:
        self.reader = reader
        self.stream = stream
        self.name = name
        reader.data = self

    def _current(self) -> _TarReader:
        if self.reader.data is not self:
            raise ValueError(f"the data of {self.name} was read after the next member")
        return self.reader

    def _damaged(self, exc: Exception) -> ArchiveCorrupt:
        why = str(exc) if isinstance(exc, _BadTar) else f"{type(exc).__name__}: {exc}"
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
            raise self._damaged(_BadTar("unexpected end of data"))
        reader.left -= len(data)
        return data

    def readall(self) -> bytes:
        """All of the member's remaining data."""
        reader = self._current()
        try:
            data = reader.source.exact(reader.left)
        except (_BadTar, *_CODEC_ERRORS) as exc:
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
        self._reader = codec_for(sidecar.data_name).reader(self._hashing)  # type: ignore[arg-type]
        self.current: str | None = None
        self.meta: ArchiveMeta | None = None
        self.manifest_raw: bytes | None = None
        self._manifest: Manifest | None = None
        self._prefetch: _Prefetch | None = None
        #: Set when the stream ended but its sha256 or size differs from the sidecar: why.
        self.digest_mismatch: str | None = None

    def close(self) -> None:
        """Stop the decompression thread, if one runs (idempotent)."""
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

    def corrupt(self, message: str, member: str | None = None) -> ArchiveCorrupt:
        return ArchiveCorrupt(
            message,
            archive=self.archive,
            member=member,
            target=self.target,
            hint="the stored copy is damaged; verify other targets and restore from a good one",
        )

    def members(self) -> Iterator[tuple[TarMember, str, _MemberData | None]]:
        """Yield each data member with its checked name and, for files, its data.

        ``meta.json`` and ``manifest.json`` are consumed here (see :attr:`meta`
        and :attr:`manifest_raw`). A file's data can be read until the next
        member is asked for.
        """
        if PREFETCH:
            self._prefetch = _Prefetch(self._reader)
        source = _Source(self._prefetch or self._reader)
        reader = _TarReader(source)
        try:
            seen: set[str] = set()
            first = True
            while (member := reader.next()) is not None:
                self.current = member.name
                name = _checked_name(member.name, self.archive)
                if name in seen:
                    raise UnsafeArchive(
                        "member appears twice; refused", archive=self.archive, member=name
                    )
                seen.add(name)
                kind = member.kind
                if first:
                    first = False
                    if name != "meta.json" or kind != "file":
                        raise self.corrupt("meta.json is not the first member", member=name)
                    self.meta = self._meta(member, _MemberData(reader, self, name))
                    continue
                if name == "manifest.json":
                    if kind != "file":
                        raise self.corrupt("manifest.json is not a file", member=name)
                    self.manifest_raw = _MemberData(reader, self, name).readall()
                    continue
                if self.manifest_raw is not None:
                    raise self.corrupt("a member follows manifest.json", member=name)
                if kind is None:
                    raise UnsafeArchive(
                        f"member is a {_tar_kind(member.type)}; only files, directories and symbolic links are allowed",
                        archive=self.archive,
                        member=name,
                    )
                top, slash, _ = name.partition("/")
                if not slash or top not in ("data", "dumps"):
                    raise UnsafeArchive(
                        "member lies outside data/ and dumps/", archive=self.archive, member=name
                    )
                yield member, name, _MemberData(reader, self, name) if kind == "file" else None
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
            self.close()  # before reading the raw stream from this thread
            self._hashing.drain()
        except (_BadTar, *_CODEC_ERRORS) as exc:
            where = f"at or after member {self.current}" if self.current else "at its start"
            why = str(exc) if isinstance(exc, _BadTar) else f"{type(exc).__name__}: {exc}"
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

    def _meta(self, member: TarMember, data: _MemberData) -> ArchiveMeta:
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
            detail = exc.message.partition(": ")[2] or exc.message
            raise self.corrupt(detail, member="meta.json") from None
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # from_dict names the usual problems; a value of an odd JSON type may slip past it.
            raise self.corrupt(
                f"meta.json is unusable ({type(exc).__name__}: {exc})", member="meta.json"
            ) from None
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
                self._manifest = Manifest.from_json(self.manifest_raw, archive=self.archive)
            except (AttributeError, RecursionError, TypeError) as exc:
                # from_json names bad keys and values; entries that are not even
                # JSON objects, or nesting too deep to parse, end up here.
                raise self.corrupt(
                    f"manifest is unusable ({type(exc).__name__})", member="manifest.json"
                ) from None
        return self._manifest


def _tar_kind(kind: bytes) -> str:
    if kind == b"1":
        return "hard link"
    if kind in (b"3", b"4"):
        return "device"
    if kind == b"6":
        return "named pipe"
    return f"member of type {kind!r}"


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
    seen: dict[str, MemberRecord] = {}
    sha256 = hashlib.sha256
    try:
        try:
            for member, name, data in stream.members():
                if data is not None:
                    digest = sha256()
                    while block := data.read(BLOCK):
                        digest.update(block)
                    seen[name] = MemberRecord("file", member.size, member.mode, digest.hexdigest())
                elif member.type == _DIRTYPE:
                    seen[name] = MemberRecord("dir", 0, member.mode)
                else:
                    seen[name] = MemberRecord("symlink", 0, member.mode, target=member.linkname)
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


def check_members(stream: ArchiveStream, manifest: Manifest, seen: dict[str, MemberRecord]) -> None:
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
        if rec.type == "symlink" and rec.target != entry.target:
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


# -- writing the staged tree ------------------------------------------------------


def _set_attributes(fd: int, entry: Entry, as_root: bool) -> None:
    """Owner, mode and times through the open file, right after its data."""
    if as_root:
        with contextlib.suppress(OSError):
            os.fchown(fd, entry.uid, entry.gid)
    # After chown, which clears the set-user-ID and set-group-ID bits; the data
    # is written already, so a read-only mode is harmless.
    os.fchmod(fd, entry.mode)
    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


@attrs.define
class StagedTree:
    """Build a cell's tree from its manifest and archives, in a staging directory.

    *staging* receives ``<root name>/...`` for each ``data/<root name>`` of the
    manifest. With *dumps*, the ``dumps/`` tree (database dumps) is extracted
    and checked there too (``dumps/<dumper>/...`` lands in ``<dumps>/<dumper>/...``);
    without, it is skipped. Call :meth:`prepare`, then :meth:`take` once per
    archive of the chain (any order), then :meth:`finish`.

    Each file gets its owner, mode and times as soon as its data is written;
    :meth:`finish` creates the links and sets the directories.
    """

    staging: Path
    manifest: Manifest
    archive: str
    allow_external_links: bool = False
    on_bytes: Callable[[int], None] | None = None
    dumps: Path | None = None
    _pending: dict[str, Entry] = attrs.field(init=False, factory=dict)
    _dirs: set[str] = attrs.field(init=False, factory=set)
    #: Manifest path -> where it goes (``None``: a dump that is not wanted), checked once.
    _dests: dict[str, str | None] = attrs.field(init=False, factory=dict)
    files: int = attrs.field(init=False, default=0)
    bytes: int = attrs.field(init=False, default=0)

    def _dest(self, path: str) -> str | None:
        """Where a manifest path goes; ``None`` for a dump when dumps are not wanted."""
        try:
            return self._dests[path]
        except KeyError:
            pass
        norm = _checked_name(path, self.archive)
        top, slash, _ = norm.partition("/")
        dest: str | None
        if top == "dumps":
            dest = None if self.dumps is None else os.fspath(self.dumps) + norm[5:]
        elif top != "data" or not slash:
            raise UnsafeArchive(
                "manifest path lies outside data/", archive=self.archive, member=path
            )
        else:
            dest = os.fspath(self.staging) + norm[4:]
        self._dests[path] = dest
        return dest

    def prepare(self) -> None:
        """Check every manifest path and create the directories."""
        self.staging.mkdir(parents=True, exist_ok=True)
        self._dirs.add(os.fspath(self.staging))
        links = {e.path: e.target or "" for e in self.manifest if e.type == "symlink"}
        not_dirs = {e.path for e in self.manifest if e.type != "dir"}
        dumps_name = None
        if self.dumps is not None and self.dumps.parent == self.staging:
            dumps_name = self.dumps.name
        for entry in self.manifest:
            dest = self._dest(entry.path)
            if dest is None:
                continue
            norm = _checked_name(entry.path, self.archive)
            parts = norm.split("/")
            if parts[0] == "dumps":
                if entry.type == "symlink":
                    raise UnsafeArchive(
                        "a symbolic link under dumps/; refused",
                        archive=self.archive,
                        member=entry.path,
                    )
            elif len(parts) == 2 and parts[1] == dumps_name:
                raise UnsafeArchive(
                    "a cell path has the name of the dumps folder; refused",
                    archive=self.archive,
                    member=entry.path,
                )
            above = norm
            while (cut := above.rfind("/")) > 0:
                above = above[:cut]
                if above in not_dirs:
                    self._refuse_under(parts, entry)
            if entry.type == "symlink":
                assert entry.target is not None
                _check_link(
                    PurePosixPath(entry.path),
                    entry.target,
                    archive=self.archive,
                    allow_external=self.allow_external_links,
                    links=links,
                )
            elif entry.type == "dir":
                self._mkdir(dest)
            elif entry.type == "file":
                self._pending[entry.path] = entry

    def _refuse_under(self, parts: list[str], entry: Entry) -> None:
        # Name the outermost file or link the path lies under.
        for depth in range(1, len(parts)):
            above = self.manifest.get("/".join(parts[:depth]))
            if above is not None and above.type != "dir":
                kind = "symbolic link" if above.type == "symlink" else above.type
                raise UnsafeArchive(
                    f"path lies under the {kind} {above.path}; refused",
                    archive=self.archive,
                    member=entry.path,
                )

    def holders(self) -> set[str]:
        """The archives that still have to be read."""
        return {e.archive for e in self._pending.values() if e.archive}

    def _mkdir(self, path: str) -> None:
        if path in self._dirs:
            return
        parent = os.path.dirname(path)
        if parent and parent != path:
            self._mkdir(parent)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise UnsafeArchive(
                    "a directory path is taken by a file or link",
                    archive=self.archive,
                    member=path,
                ) from None
        self._dirs.add(path)

    def take(self, stream: ArchiveStream) -> None:
        """Extract from *stream* the files the manifest says it holds, checking each."""
        try:
            self._take(stream, os.geteuid() == 0)
        finally:
            stream.close()
        # The selected archive's own manifest must be the one we planned with.
        if stream.archive == self.archive and (
            stream.manifest_raw is None or stream.manifest().entries != self.manifest.entries
        ):
            raise stream.corrupt(
                "manifest.json differs from the stored manifest copy", member="manifest.json"
            )

    def _take(self, stream: ArchiveStream, as_root: bool) -> None:
        holder = stream.archive
        pending = self._pending
        for _member, name, data in stream.members():
            if data is None:
                continue
            entry = pending.get(name)
            if entry is None or entry.archive != holder:
                continue
            dest = self._dest(name)
            assert dest is not None  # only wanted paths are pending
            self._mkdir(os.path.dirname(dest))
            size = self._write(dest, data, entry, stream, as_root)
            del pending[name]
            self.files += 1
            self.bytes += size

    def _write(
        self, dest: str, data: _MemberData, entry: Entry, stream: ArchiveStream, as_root: bool
    ) -> int:
        digest = hashlib.sha256()
        size = 0
        fd = os.open(dest, _CREATE, 0o600)
        try:
            while block := data.read(BLOCK):
                digest.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
                size += len(block)
                if self.on_bytes is not None:
                    self.on_bytes(len(block))
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise stream.corrupt(
                    "content does not match the manifest (sha256 differs)", member=data.name
                )
            _set_attributes(fd, entry, as_root)
        finally:
            os.close(fd)
        return size

    def finish(self) -> None:
        """Create links, then set the directories' modes, owners and times (deepest first)."""
        if self._pending:
            missing = sorted(self._pending)[0]
            entry = self._pending[missing]
            raise ArchiveCorrupt(
                f"{len(self._pending)} file(s) were not found in the archives that should hold them",
                archive=entry.archive or self.archive,
                member=missing,
            )
        as_root = os.geteuid() == 0
        dirs: list[tuple[str, Entry]] = []
        for entry in self.manifest:
            dest = self._dest(entry.path)
            if dest is None:
                continue
            if entry.type == "symlink":
                assert entry.target is not None
                self._mkdir(os.path.dirname(dest))
                os.symlink(entry.target, dest)
                if as_root:
                    with contextlib.suppress(OSError):
                        os.lchown(dest, entry.uid, entry.gid)
                os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            elif entry.type == "dir":
                dirs.append((dest, entry))
        for dest, entry in sorted(dirs, key=lambda d: d[0].count("/"), reverse=True):
            if as_root:
                with contextlib.suppress(OSError):
                    os.chown(dest, entry.uid, entry.gid, follow_symlinks=False)
            os.chmod(dest, entry.mode)
            os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
