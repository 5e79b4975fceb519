"""A streaming reader for the tar subset cellvault writes (ustar headers, pax ``x`` records).

tarfile's stream mode cost about 1 s per 6,000 members in header parsing
(frombuf, _proc_pax, nti) and copied its buffer at every header
(docs/performance.md, proposals 1 and 4). This reader parses only what
extraction and verification use: name, type, mode, size, link target, and the
pax path, linkpath and size records. Anything else malformed is a
:class:`TarFormatError`, which the archive reader reports as
:class:`~cellvault.ArchiveCorrupt` naming the archive.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import zlib
from typing import IO, Protocol

from ..errors import CellvaultError

__all__ = [
    "BLOCK",
    "DIRTYPE",
    "PREFETCH",
    "Prefetch",
    "Source",
    "TarFormatError",
    "TarMember",
    "TarReader",
    "type_name",
]

BLOCK = 1 << 20
#: Decompressed bytes fetched at a time: headers and small members are sliced from it.
READ_CHUNK = 256 << 10
#: Limits for what is read whole into memory, far above what cellvault writes.
PAX_MAX = 1 << 20
#: Largest member size accepted (a size field is at most 2**88 in base-256).
SIZE_MAX = 1 << 62
#: Decompressed chunks read ahead by the decompression thread (0: no thread), for
#: the archives no forked child decompresses (:mod:`cellvault.extract.inflate`).
#: Writer threads for the files were tried too: on 2 cores their GIL hand-offs
#: and concurrent creates in one directory cost more than they overlapped.
#: Writer processes, fed a batch of files at a time, do not
#: (:mod:`cellvault.extract.writer`).
PREFETCH = 8

_ZERO_BLOCK = bytes(512)
_OCTAL = b"01234567"
_adler32 = zlib.adler32
_SIGNED = struct.Struct("148b8x356b")

# Tar type flags.
_REGTYPE, _AREGTYPE, DIRTYPE, _SYMTYPE = b"0", b"\0", b"5", b"2"
_KINDS = {_REGTYPE: "file", _AREGTYPE: "file", DIRTYPE: "dir", _SYMTYPE: "symlink"}
_KINDS |= {b"1": "hardlink", b"3": "chardev", b"4": "blockdev", b"6": "fifo"}
_XATTR = b"SCHILY.xattr."
#: Types whose size field does not count data blocks.
_NO_DATA = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))
#: Extension headers cellvault never writes: GNU long names, global pax headers, sparse files.
_UNSUPPORTED = {b"g": "global pax", b"L": "GNU long name", b"K": "GNU long link"}
_UNSUPPORTED |= {b"S": "GNU old sparse", b"M": "GNU multi-volume", b"V": "GNU volume"}


class TarFormatError(CellvaultError):
    """The tar stream is malformed or ends early (reported as :class:`~cellvault.ArchiveCorrupt`)."""


class TarMember:
    """One member's header, as the reader parsed it (names not checked yet)."""

    __slots__ = ("linkname", "mode", "name", "rdev", "realsize", "size", "type", "xattrs")

    def __init__(self, name: str, type: bytes, mode: int, size: int, linkname: str) -> None:
        self.name = name
        self.type = type
        self.mode = mode
        self.size = size
        self.linkname = linkname
        #: A device's number (``os.makedev`` of the header's major and minor).
        self.rdev = 0
        #: For a sparse file (PAX sparse 1.0): its length; its data starts with the map.
        self.realsize: int | None = None
        #: ``SCHILY.xattr.*`` records: (name, value), in the header's order.
        self.xattrs: tuple[tuple[str, bytes], ...] = ()

    @property
    def kind(self) -> str | None:
        """``file``, ``dir``, ``symlink``, ``hardlink``, ``fifo``, ``chardev``, ``blockdev``.

        ``None`` for any other type.
        """
        return _KINDS.get(self.type)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Source:
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
        """Exactly *n* bytes, or :class:`TarFormatError` if the stream ends first."""
        data = self.take(n) if n else b""
        if len(data) == n:
            return data
        parts = [data]
        need = n - len(data)
        while need:
            data = self.take(need)
            if not data:
                raise TarFormatError("unexpected end of data")
            parts.append(data)
            need -= len(data)
        return b"".join(parts)

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self.take(min(n, BLOCK)))
            if not got:
                raise TarFormatError("unexpected end of data")
            n -= got


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 (GNU) when the high bit is set."""
    # As cellvault and GNU tar write it: octal digits up to the first NUL (what
    # follows it is not read); any other form below.
    digits = field.partition(b"\0")[0]
    if digits and not digits.strip(_OCTAL):
        return int(digits, 8)
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0x80:
            return value
        if field[0] == 0xFF:
            return value - (1 << (8 * (len(field) - 1)))
        raise TarFormatError("invalid number in a header")
    text = field.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise TarFormatError("invalid number in a header")
    return int(text, 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    # The checksum field counts as eight spaces; some writers summed signed bytes.
    # The sum of the bytes, from adler32's first half (1 + their sum, modulo 65521)
    # over each half of the block (at most 256 * 255 = 65280: no modulo taken):
    # a tenth of the time of sum() over 512 bytes.
    total = (_adler32(block[:256]) & 0xFFFF) + (_adler32(block[256:]) & 0xFFFF) - 2
    unsigned = total - sum(block[148:156]) + 256
    return stored == unsigned or stored == sum(_SIGNED.unpack(block)) + 256


def _pax_records(payload: bytes, records: dict[bytes, bytes]) -> None:
    """Parse ``"<length> <key>=<value>\\n"`` records into *records* (later ones win)."""
    pos, end = 0, len(payload)
    while pos < end and payload[pos] != 0:
        space = payload.find(b" ", pos, pos + 21)
        digits = payload[pos:space]
        if space < 0 or not digits.isdigit():
            raise TarFormatError("invalid pax header")
        stop = pos + int(digits)
        if stop > end or stop <= space + 2 or payload[stop - 1] != 0x0A:
            raise TarFormatError("invalid pax header")
        key, eq, value = payload[space + 1 : stop - 1].partition(b"=")
        if not eq or not key:
            raise TarFormatError("invalid pax header")
        records[key] = value
        pos = stop


def _pax_size(value: bytes) -> int:
    if not value.isdigit() or len(value) > 19:
        raise TarFormatError("invalid size in a pax header")
    return int(value)


class Prefetch:
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


class TarReader:
    """Iterate the headers of a tar stream; :attr:`left` bytes of data follow the last one."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.left = 0
        self.pad = 0
        #: The reader of the current member's data (set by the caller).
        self.data: object | None = None

    def next(self) -> TarMember | None:
        """The next member's header, or ``None`` at the end of the archive."""
        source = self.source
        self.data = None
        if self.left or self.pad:
            source.skip(self.left + self.pad)
            self.left = self.pad = 0
        pax: dict[bytes, bytes] = {}
        while True:
            block = self._header(pax)
            if block is None:
                return None
            kind = block[156:157]
            size = _number(block[124:136])
            if size < 0 or size > SIZE_MAX:
                raise TarFormatError(f"member size {size} out of range")
            if kind == b"x":
                if size > PAX_MAX:
                    raise TarFormatError(f"pax header of {size} bytes; too large")
                _pax_records(source.exact(size), pax)
                source.skip(-size % 512)
                continue
            if kind in _UNSUPPORTED:
                raise TarFormatError(f"{_UNSUPPORTED[kind]} header; cellvault does not write those")
            member = _member(block, kind, size, pax)
            if member.type not in _NO_DATA:
                self.left = member.size
                self.pad = -member.size % 512
            return member

    def _header(self, pax: dict[bytes, bytes]) -> bytes | None:
        """The next header block, checked; ``None`` at the end of the archive."""
        source = self.source
        block = source.take(512)
        if len(block) < 512:
            if not block:
                if pax:
                    raise TarFormatError("the archive ends after a pax header")
                return None  # ends on a header boundary: the caller sees what is missing
            block += source.exact(512 - len(block))
        if block == _ZERO_BLOCK:
            if pax:
                raise TarFormatError("the archive ends after a pax header")
            return None
        if not _checksum_ok(block):
            raise TarFormatError("bad header checksum")
        return block


def _member(block: bytes, kind: bytes, size: int, pax: dict[bytes, bytes]) -> TarMember:
    """The member a header block describes, with what its pax records override."""
    name = block[0:100].partition(b"\0")[0].decode("utf-8", "surrogateescape")
    # A field that starts with a NUL is empty (most prefixes and link names).
    if block[345] and block[257:263] == b"ustar\0":
        prefix = _text(block[345:500])
        if prefix:
            name = f"{prefix}/{name}"
    linkname = _text(block[157:257]) if block[157] else ""
    if pax:
        if b"path" in pax:
            name = pax[b"path"].decode("utf-8", "surrogateescape")
        if b"linkpath" in pax:
            linkname = pax[b"linkpath"].decode("utf-8", "surrogateescape")
        if b"size" in pax:
            size = _pax_size(pax[b"size"])
            if size > SIZE_MAX:
                raise TarFormatError(f"member size {size} out of range")
    if kind == _AREGTYPE and name.endswith("/"):
        kind = DIRTYPE  # the old V7 way of writing a directory
    if kind == DIRTYPE:
        name = name.rstrip("/")  # as tarfile reports it: errors name "data/crm/conf"
    member = TarMember(name, kind, _number(block[100:108]), size, linkname)
    if kind in (b"3", b"4"):
        member.rdev = os.makedev(_number(block[329:337]), _number(block[337:345]))
    if pax:
        _extensions(member, pax)
    return member


def _extensions(member: TarMember, pax: dict[bytes, bytes]) -> None:
    """Extended attributes and the sparse format's records."""
    xattrs = [
        (key[len(_XATTR) :].decode("utf-8", "surrogateescape"), value)
        for key, value in pax.items()
        if key.startswith(_XATTR)
    ]
    if xattrs:
        member.xattrs = tuple(xattrs)
    major = pax.get(b"GNU.sparse.major")
    if major is None:
        if any(key.startswith(b"GNU.sparse.") for key in pax):
            raise TarFormatError("GNU sparse format 0.x; cellvault reads format 1.0 only")
        return
    if major != b"1" or pax.get(b"GNU.sparse.minor") != b"0":
        raise TarFormatError("GNU sparse format other than 1.0")
    name, realsize = pax.get(b"GNU.sparse.name"), pax.get(b"GNU.sparse.realsize")
    if name is None or realsize is None or member.type not in (_REGTYPE, _AREGTYPE):
        raise TarFormatError("invalid sparse file header")
    member.name = name.decode("utf-8", "surrogateescape")
    member.realsize = _pax_size(realsize)


def type_name(kind: bytes) -> str:
    """What a member of an unsupported tar type is, for messages."""
    if kind == b"1":
        return "hard link"
    if kind in (b"3", b"4"):
        return "device"
    if kind == b"6":
        return "named pipe"
    return f"member of type {kind!r}"
