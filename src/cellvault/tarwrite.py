"""Writing a tar stream: the headers of the members, as ``tarfile`` writes them in PAX format.

The packer writes tar headers itself: tarfile's TarFile.addfile copies each
TarInfo and builds a PAX header through dicts and several encodings, about half
of the Python calls of a backup (every member needs a PAX header, as mtimes have
nanoseconds). The bytes are exactly those of tarfile's PAX_FORMAT with
encoding utf-8 and errors surrogateescape (tests/test_tarwrite.py compares them).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["BLOCK", "GATHER", "ZEROS", "TarWriter", "file_header", "pax_mtime", "tar_header"]

#: Bytes copied at a time.
BLOCK = 1 << 20
#: Writes smaller than this are gathered until they add up to it (see TarWriter.write).
GATHER = 256 << 10

_RECORD = tarfile.RECORDSIZE
_MAGIC_TAIL = tarfile.POSIX_MAGIC + b"\0" * (32 + 32 + 8 + 8 + 155 + 12)
ZEROS = bytes(BLOCK)
_MAGIC_TAIL_SUM = sum(_MAGIC_TAIL)
_SPACES_SUM = 8 * ord(" ")


def _ustar(
    name: str,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    kind: bytes,
    link: str,
    rdev: int | None = None,
) -> bytes:
    """One ustar header block; the numbers must fit (the PAX header carries the rest)."""
    tail = _MAGIC_TAIL
    tail_sum = _MAGIC_TAIL_SUM
    if rdev is not None:
        # Device numbers: after the magic, the user and group names (32 bytes each).
        dev = b"%07o\0%07o\0" % (os.major(rdev) & 0o7777777, os.minor(rdev) & 0o7777777)
        tail = _MAGIC_TAIL[:72] + dev + _MAGIC_TAIL[88:]
        tail_sum = sum(tail)
    name_b = name.encode("ascii", "replace")[:100]
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    link_b = link.encode("ascii", "replace")[:100] if link else b""
    # The checksum counts its own field as eight spaces; the zeros of padding count nothing.
    chksum = sum(name_b) + sum(numbers) + _SPACES_SUM + kind[0] + sum(link_b) + tail_sum
    return b"".join(
        (
            name_b.ljust(100, b"\0"),
            numbers,
            b"%06o\0 " % chksum,
            kind,
            link_b.ljust(100, b"\0"),
            tail,
        )
    )


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    # The length prefix counts its own digits (tarfile's loop, same result).
    length = len(keyword) + len(value) + 3
    n = p = 0
    while True:
        n = length + len(str(p))
        if n == p:
            break
        p = n
    return b"%d %s=%s\n" % (p, keyword, value)


_PAX_HEADS: dict[int, bytes] = {}


def _pax_head(length: int) -> bytes:
    # Only the size differs between PAX headers: one block per payload length.
    head = _PAX_HEADS.get(length)
    if head is None:
        head = _ustar("././@PaxHeader", 0, 0, 0, length, 0, tarfile.XHDTYPE, "")
        _PAX_HEADS[length] = head
    return head


def tar_header(
    name: str,
    kind: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: float | str,
    link: str = "",
    *,
    extra: Sequence[tuple[str, bytes]] = (),
    rdev: int | None = None,
) -> bytes:
    """The header blocks of one member, as ``tarfile`` writes them in PAX_FORMAT.

    *mtime* is an int, or a float when it has a fraction (then the PAX header
    keeps it and the ustar field has it rounded), as in :class:`tarfile.TarInfo`.
    *extra* are further PAX records (``SCHILY.xattr.*``, ``GNU.sparse.*``),
    written after the others, values as they are; *rdev* is a device's number.
    """
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    pax: dict[str, str] | None = None
    if len(name) > 100 or not name.isascii():
        pax = {"path": name}
    if link and (len(link) > 100 or not link.isascii()):
        pax = pax or {}
        pax["linkpath"] = link
    numbers = [uid, gid, size, 0]
    for i, key, limit, val in (
        (0, "uid", 8**7, uid),
        (1, "gid", 8**7, gid),
        (2, "size", 8**11, size),
        (3, "mtime", 8**11, mtime),
    ):
        if isinstance(val, str):  # exact decimal seconds (see pax_mtime)
            whole = round(float(val))  # the ustar field rounds, as tarfile does
            numbers[i] = whole if 0 <= whole < limit else 0
            pax = pax or {}
            pax[key] = val
        elif isinstance(val, float):
            whole = round(val)
            numbers[i] = whole if 0 <= whole < limit else 0
            pax = pax or {}
            pax[key] = str(val)
        elif 0 <= val < limit:
            numbers[i] = val
        else:
            numbers[i] = 0
            pax = pax or {}
            pax[key] = str(val)
    header = _ustar(
        name, mode & 0o7777, numbers[0], numbers[1], numbers[2], numbers[3], kind, link, rdev
    )
    if pax is None and not extra:
        return header
    pax = pax or {}
    binary = False
    for value in pax.values():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            binary = True
            break
    # Undecodable names (surrogate escapes) go out as their original bytes.
    records = [b"21 hdrcharset=BINARY\n"] if binary else []
    errors = "surrogateescape" if binary else "strict"
    for key, value in pax.items():
        records.append(_pax_record(key.encode(), value.encode("utf-8", errors)))
    for key, raw in extra:
        records.append(_pax_record(key.encode("utf-8", "surrogateescape"), raw))
    payload = b"".join(records)
    return b"".join((_pax_head(len(payload)), payload, ZEROS[: -len(payload) % 512], header))


_REG = tarfile.REGTYPE
#: A regular file's ustar block after its checksum (type, no link name, magic and
#: the rest), and what it and the checksum's own field add to the checksum.
_FILE_TAIL = _REG + b"\0" * 100 + _MAGIC_TAIL
_FILE_SUM = _SPACES_SUM + _REG[0] + _MAGIC_TAIL_SUM
_UID_LIMIT = 8**7
_SIZE_LIMIT = 8**11


def file_header(name: str, mode: int, uid: int, gid: int, size: int, mtime_ns: int) -> bytes:
    """``tar_header(name, REGTYPE, mode, uid, gid, size, pax_mtime(mtime_ns))``, sooner.

    A regular file without extra records, as most of a backup's members are:
    when its name is short ASCII and its numbers fit the ustar fields, the
    only PAX record is the mtime's (when it has a fraction), written here
    without the general case's dict and loops; otherwise :func:`tar_header`.
    """
    seconds, ns = divmod(mtime_ns, 1_000_000_000)
    if not (
        len(name) <= 100
        and name.isascii()
        and 0 <= uid < _UID_LIMIT
        and 0 <= gid < _UID_LIMIT
        and 0 <= size < _SIZE_LIMIT
        and 0 <= seconds < _SIZE_LIMIT - 1
    ):
        return tar_header(name, _REG, mode, uid, gid, size, pax_mtime(mtime_ns))
    if ns:
        text = f"{seconds}.{ns:09d}".rstrip("0")
        mtime = round(float(text))  # the ustar field rounds, as tarfile does
    else:
        mtime = seconds
    # _ustar's block for a regular file without a link: the same bytes.
    name_b = name.encode("ascii")
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode & 0o7777, uid, gid, size, mtime)
    chksum = sum(name_b) + sum(numbers) + _FILE_SUM
    header = b"".join((name_b.ljust(100, b"\0"), numbers, b"%06o\0 " % chksum, _FILE_TAIL))
    if not ns:
        return header
    # "NN mtime=<text>\n": the length counts its own two digits (the text is at
    # most 21 characters).
    payload = b"%d mtime=%s\n" % (len(text) + 10, text.encode())
    return b"".join((_pax_head(len(payload)), payload, ZEROS[: 512 - len(payload)], header))


class TarWriter:
    """Writes a tar stream into *fileobj*: the part of tarfile.TarFile that packing uses.

    ``addfile`` and ``members`` are there for the dumpers (see
    :func:`cellvault.dumpers.archive_io.write_dumps`), which build TarInfo objects;
    the packer writes headers and data directly.
    """

    def __init__(self, fileobj: Any) -> None:
        self.fileobj = fileobj
        self.offset = 0
        #: Always empty: nothing is kept per member.
        self.members: list[tarfile.TarInfo] = []
        # Small writes gathered (up to GATHER bytes) into one write of *fileobj*:
        # a call into the compressor per header and per small file cost more
        # than the copy.
        self._parts: list[bytes] = []
        self._held = 0

    def write(self, data: bytes) -> None:
        n = len(data)
        self.offset += n
        if n >= GATHER:
            self.flush()
            self.fileobj.write(data)
            return
        self._parts.append(data)
        self._held += n
        if self._held >= GATHER:
            self.flush()

    def flush(self) -> None:
        """Pass what was gathered on to *fileobj*."""
        if self._parts:
            parts, self._parts, self._held = self._parts, [], 0
            self.fileobj.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def pad(self) -> None:
        """End a member's data with zeros to a whole block."""
        pad = -self.offset % 512
        if pad:
            self.write(ZEROS[:pad])

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: IO[bytes] | None = None) -> None:
        if tarinfo.uname or tarinfo.gname or tarinfo.pax_headers or tarinfo.isdev():
            # Fields tar_header does not write: tarfile's own header, same format.
            header = tarinfo.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        else:
            header = tar_header(
                tarinfo.name,
                tarinfo.type,
                tarinfo.mode,
                tarinfo.uid,
                tarinfo.gid,
                tarinfo.size,
                tarinfo.mtime,
                tarinfo.linkname,
            )
        self.write(header)
        if fileobj is None:
            return
        left = tarinfo.size
        while left > 0:
            want = min(BLOCK, left)
            block = fileobj.read(want)
            if len(block) < want:
                raise OSError("unexpected end of data")  # as tarfile.copyfileobj
            self.write(block)
            left -= want
        self.pad()

    def add_bytes(self, name: str, data: bytes, mtime: int) -> None:
        """A regular member (mode 0644, owner 0) holding *data*."""
        self.add_stream(name, io.BytesIO(data), len(data), mtime)

    def add_stream(self, name: str, data: IO[bytes], size: int, mtime: int) -> bool:
        """A regular member (mode 0644, owner 0) of *size* bytes read from *data*.

        Returns ``False`` if *data* ends early (the stream is then unusable).
        """
        self.write(tar_header(name, tarfile.REGTYPE, 0o644, 0, 0, size, mtime))
        left = size
        while left:
            block = data.read(min(BLOCK, left))
            if not block:
                return False
            self.write(block)
            left -= len(block)
        self.pad()
        return True

    def close(self) -> None:
        """End the archive (its end blocks, padded to a record) and flush it."""
        self.write(ZEROS[:1024])
        pad = -self.offset % _RECORD
        if pad:
            self.write(ZEROS[:pad])
        self.flush()


def pax_mtime(mtime_ns: int) -> int | str:
    """A member's mtime for :func:`tar_header`, from nanoseconds.

    Whole seconds are an int; otherwise the exact decimal text of the PAX
    ``mtime`` record (``1700000000.123456789``), so that stock tar restores
    the nanoseconds too (a float would round them).
    """
    seconds, ns = divmod(abs(mtime_ns), 1_000_000_000)
    if not ns:
        return mtime_ns // 1_000_000_000
    sign = "-" if mtime_ns < 0 else ""
    return f"{sign}{seconds}.{ns:09d}".rstrip("0")
