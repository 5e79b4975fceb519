"""The tar reader's field parsers, one rule at a time: numbers, pax records, checksums, reads.

``test_tarread.py`` reads whole archives; these give each parser the bytes of
one field or one record, so that a rule broken in one of them shows here by
name, with the exact value or message it should give.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import threading
import time

import pytest

from cellvault.extract import tarread
from cellvault.extract.tarread import Prefetch, Source, TarFormatError, TarReader


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"0000644\0", 0o644),
        (b"00000000012\0", 10),
        (b"   644 \0", 0o644),  # padded with spaces, as old writers did
        (b"12\x0034\0", 0o12),  # what follows the first NUL is not read
        (b"\0" * 8, 0),
        (b" " * 7 + b"\0", 0),
        (b"77777777777\0", 0o77777777777),
        (b"\x80" + (5).to_bytes(11, "big"), 5),  # base-256, positive
        (b"\x80" + (1 << 80).to_bytes(11, "big"), 1 << 80),
        (b"\xff" * 12, -1),  # base-256, negative (two's complement over the field)
        (b"\xff" + ((1 << 88) - 5).to_bytes(11, "big"), -5),
        (b"\xff" + ((1 << 56) - 3).to_bytes(7, "big"), -3),  # an 8-byte field
    ],
)
def test_a_numeric_field_is_octal_text_or_base_256(field: bytes, value: int) -> None:
    assert tarread._number(field) == value


@pytest.mark.parametrize(
    "field",
    [
        b"0000008\0",
        b"0000089\0",  # digits, but not octal ones
        b"0_12\0\0\0\0",  # what int() would read
        b"+000012\0",
        b"-000012\0",
        b"12 34\0",
        b"0x1f\0\0\0",
        b"\x81" + bytes(11),
        b"\xfe" + bytes(7),
    ],
)
def test_a_numeric_field_of_anything_else_is_refused(field: bytes) -> None:
    with pytest.raises(TarFormatError) as info:
        tarread._number(field)
    assert info.value.message == "invalid number in a header"


def test_a_text_field_ends_at_its_first_nul_and_keeps_undecodable_bytes() -> None:
    assert tarread._text(b"data/crm/f\0junk\0") == "data/crm/f"
    assert tarread._text(b"caf\xe9\0") == "caf\udce9"
    assert tarread._text(b"x" * 100) == "x" * 100


def _block(**fields: bytes) -> bytes:
    info = tarfile.TarInfo("data/crm/f")
    info.size = 3
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    for name, value in fields.items():
        start = {"name": 0, "chksum": 148}[name]
        block[start : start + len(value)] = value
    return bytes(block)


def test_a_header_checksum_is_the_unsigned_or_the_signed_sum_of_its_bytes() -> None:
    block = bytearray(_block())
    assert tarread._checksum_ok(bytes(block))
    # A name of bytes above 127: the unsigned sum and the signed one differ.
    block[0:10] = b"\xe9" * 10
    block[148:156] = b" " * 8
    unsigned = sum(block)
    signed = sum(struct.unpack("512b", bytes(block)))
    assert unsigned != signed
    for total in (unsigned, signed):
        block[148:156] = b"%06o\0 " % total
        assert tarread._checksum_ok(bytes(block))
    for wrong in (unsigned + 1, unsigned - 1, signed + 1, 0):
        block[148:156] = b"%06o\0 " % wrong
        assert not tarread._checksum_ok(bytes(block))
    # Every byte counts, in both halves of the block.
    good = _block()
    for at in (0, 255, 256, 511):
        changed = bytearray(good)
        changed[at] ^= 1
        assert not tarread._checksum_ok(bytes(changed))


def _records(payload: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    tarread._pax_records(payload, out)
    return out


def test_pax_records_are_read_in_order_later_ones_winning() -> None:
    assert _records(b"12 path=abc\n17 linkpath=../x\n") == {b"path": b"abc", b"linkpath": b"../x"}
    assert _records(b"10 path=a\n10 path=b\n") == {b"path": b"b"}
    # A value may hold "=" and newlines; the length says where it ends.
    assert _records(b"16 path=a=b\nc d\n") == {b"path": b"a=b\nc d"}
    assert _records(b"8 path=\n") == {b"path": b""}
    # Padding NULs end the records.
    assert _records(b"12 path=abc\n" + bytes(20)) == {b"path": b"abc"}
    assert _records(b"") == {}
    # A length written with leading zeros, up to twenty digits before the space.
    assert _records(b"00000000000000000025 k=v\n") == {b"k": b"v"}
    existing = {b"size": b"1"}
    tarread._pax_records(b"10 size=2\n", existing)
    assert existing == {b"size": b"2"}


@pytest.mark.parametrize(
    "payload",
    [
        b"000000000000000000026 k=v\n",  # no space within 21 bytes
        b"12path=abcd\n",  # no space after the length
        b" 12 path=abc\n",  # nothing before the space
        b"1x path=abc\n",
        b"13 path=abc\n",  # longer than the payload
        b"11 path=abc\n",  # does not end with a newline
        b"4 k\n",  # too short to hold a key
        b"3 =\n",
        b"12 pathabcd\n",  # no "="
        b"12 =abcdefg\n",  # an empty key
        b"12 path=abc\nx",  # a record that does not start with its length
    ],
)
def test_a_malformed_pax_record_is_refused(payload: bytes) -> None:
    with pytest.raises(TarFormatError) as info:
        _records(payload)
    assert info.value.message == "invalid pax header"


@pytest.mark.parametrize(("value", "size"), [(b"0", 0), (b"123", 123), (b"9" * 19, 10**19 - 1)])
def test_a_pax_size_is_decimal_digits(value: bytes, size: int) -> None:
    assert tarread._pax_size(value) == size


@pytest.mark.parametrize("value", [b"", b"-1", b"+1", b"1.5", b" 1", b"9" * 20, b"0x10"])
def test_a_pax_size_of_anything_else_is_refused(value: bytes) -> None:
    with pytest.raises(TarFormatError) as info:
        tarread._pax_size(value)
    assert info.value.message == "invalid size in a pax header"


def _member(pax: dict[bytes, bytes], kind: bytes = b"0") -> tarread.TarMember:
    return tarread._member(_block(), kind, 3, pax)


def test_pax_records_override_the_header_and_carry_xattrs_and_sparse_files() -> None:
    plain = _member({})
    assert (plain.name, plain.size, plain.linkname, plain.xattrs, plain.realsize) == (
        "data/crm/f",
        3,
        "",
        (),
        None,
    )
    member = _member(
        {
            b"path": b"data/crm/caf\xe9",
            b"linkpath": b"t\xff",
            b"size": b"7",
            b"SCHILY.xattr.user.b": b"2",
            b"SCHILY.xattr.user.a": b"\x00\xff",
            b"SCHILY.xattr.user.caf\xe9": b"not UTF-8 in its name",
            b"mtime": b"1.5",
        }
    )
    assert (member.name, member.linkname, member.size) == ("data/crm/caf\udce9", "t\udcff", 7)
    assert member.xattrs == (
        ("user.b", b"2"),
        ("user.a", b"\x00\xff"),
        ("user.caf\udce9", b"not UTF-8 in its name"),
    )
    sparse = _member(
        {
            b"GNU.sparse.major": b"1",
            b"GNU.sparse.minor": b"0",
            b"GNU.sparse.name": b"data/crm/s\xe9",
            b"GNU.sparse.realsize": b"1048576",
        }
    )
    assert (sparse.name, sparse.realsize) == ("data/crm/s\udce9", 1 << 20)
    assert _member({}, kind=b"\0").realsize is None


@pytest.mark.parametrize(
    ("pax", "kind", "why"),
    [
        ({b"size": str(tarread.SIZE_MAX + 1).encode()}, b"0", "member size 4611686018427387905 out of range"),
        ({b"GNU.sparse.offset": b"0"}, b"0", "GNU sparse format 0.x; cellvault reads format 1.0 only"),
        ({b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"1"}, b"0", "GNU sparse format other than 1.0"),
        ({b"GNU.sparse.major": b"0", b"GNU.sparse.minor": b"0"}, b"0", "GNU sparse format other than 1.0"),
        ({b"GNU.sparse.major": b"1"}, b"0", "GNU sparse format other than 1.0"),
        (
            {b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0", b"GNU.sparse.realsize": b"1"},
            b"0",
            "invalid sparse file header",
        ),
        (
            {b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0", b"GNU.sparse.name": b"x"},
            b"0",
            "invalid sparse file header",
        ),
        (
            {b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0", b"GNU.sparse.name": b"x",
             b"GNU.sparse.realsize": b"1"},
            b"5",
            "invalid sparse file header",
        ),
        (
            {b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0", b"GNU.sparse.name": b"x",
             b"GNU.sparse.realsize": b"-1"},
            b"0",
            "invalid size in a pax header",
        ),
    ],
)  # fmt: skip
def test_pax_records_cellvault_never_writes_are_refused(
    pax: dict[bytes, bytes], kind: bytes, why: str
) -> None:
    with pytest.raises(TarFormatError) as info:
        _member(pax, kind)
    assert info.value.message == why


def test_a_sparse_member_of_the_old_type_flag_is_read_too() -> None:
    pax = {
        b"GNU.sparse.major": b"1",
        b"GNU.sparse.minor": b"0",
        b"GNU.sparse.name": b"data/crm/s",
        b"GNU.sparse.realsize": b"9",
    }
    assert _member(pax, kind=b"\0").realsize == 9


class Pieces:
    """A stream that gives at most *step* bytes a read, and counts the reads."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.reads, self.asked = data, step, 0, []  # type: ignore[var-annotated]

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        self.asked.append(size)
        n = self.step if size < 0 else min(size, self.step)
        out, self.data = self.data[:n], self.data[n:]
        return out


def test_a_source_gives_exactly_what_is_asked_across_short_reads() -> None:
    data = bytes(range(256)) * 40
    source = Source(Pieces(data, 7), chunk=16)
    assert source.exact(0) == b""
    assert source.exact(5) == data[:5]
    assert source.exact(100) == data[5:105]
    source.skip(1000)
    assert source.exact(3) == data[1105:1108]
    rest = source.exact(len(data) - 1108)
    assert rest == data[1108:]
    assert source.take(1) == b""
    with pytest.raises(TarFormatError) as info:
        source.exact(1)
    assert info.value.message == "unexpected end of data"


def test_a_source_refuses_to_skip_past_the_end() -> None:
    source = Source(Pieces(bytes(100), 30), chunk=16)
    source.skip(100)
    with pytest.raises(TarFormatError) as info:
        source.skip(1)
    assert info.value.message == "unexpected end of data"
    source = Source(Pieces(bytes(100), 30), chunk=16)
    with pytest.raises(TarFormatError):
        source.skip(101)
    source = Source(Pieces(bytes(100), 30), chunk=16)
    source.skip(0)
    source.skip(-5)  # nothing to skip
    assert source.exact(100) == bytes(100)


def test_a_source_buffers_small_reads_and_passes_large_ones_through() -> None:
    raw = Pieces(bytes(range(200)) * 50, 10_000)
    source = Source(raw, chunk=64)
    assert source.take(10) == bytes(range(10))
    assert raw.asked == [64]
    assert source.take(100) == bytes(range(10, 64))  # what is left of the chunk, no more
    assert source.take(64) == bytes(range(64, 128))  # as large as a chunk: read directly
    assert raw.asked == [64, 64]
    assert source.take(tarread.BLOCK * 2) == (bytes(range(200)) * 50)[128:]
    assert raw.asked == [64, 64, tarread.BLOCK]


def _tar(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_reader_skips_the_data_and_padding_left_unread() -> None:
    tar = _tar(("a", b"x" * 700), ("b", b"yz"), ("c", b""))
    reader = TarReader(Source(io.BytesIO(tar)))
    a = reader.next()
    assert a is not None and (a.name, a.size, reader.left, reader.pad) == ("a", 700, 700, 324)
    reader.source.exact(10)
    reader.left -= 10  # read in part, as MemberData does
    b = reader.next()
    assert b is not None and (b.name, b.size, reader.left, reader.pad) == ("b", 2, 2, 510)
    assert reader.source.exact(2) == b"yz"
    reader.left = 0
    c = reader.next()
    assert c is not None and (c.name, reader.left, reader.pad) == ("c", 0, 0)
    assert reader.next() is None


def test_prefetch_hands_over_the_stream_in_order_then_stops_its_thread() -> None:
    data = bytes(range(256)) * 1000
    prefetch = Prefetch(io.BytesIO(data), chunk=1000, depth=2)
    got = [prefetch.read(300), prefetch.read(), prefetch.read(5000)]
    assert got[0] == data[:300]
    assert got[1] == data[300:1000]  # the rest of the chunk
    assert got[2] == data[1000:2000]  # never more than a chunk
    rest = b""
    while block := prefetch.read():
        rest += block
    assert got[0] + got[1] + got[2] + rest == data
    assert prefetch.read() == b""  # and again, once ended
    prefetch.close()
    assert not prefetch._thread.is_alive()
    assert prefetch._thread.daemon
    assert prefetch._thread.name == "cellvault-decompress"


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls == 1:
            return b"first"
        raise OSError("disk on fire")


def test_prefetch_raises_the_threads_error_in_stream_order_once() -> None:
    prefetch = Prefetch(Failing(), chunk=10)  # type: ignore[arg-type]
    assert prefetch.read() == b"first"
    with pytest.raises(OSError, match="disk on fire"):
        prefetch.read()
    assert prefetch.read() == b""
    prefetch.close()


def test_prefetch_closed_early_stops_a_thread_waiting_on_a_full_queue() -> None:
    prefetch = Prefetch(io.BytesIO(bytes(100_000)), chunk=10, depth=1)
    assert prefetch.read(3) == bytes(3)
    while not prefetch._queue.full():
        time.sleep(0.01)
    time.sleep(0.2)  # the thread is now waiting to hand over the chunk after
    done = threading.Event()

    def close() -> None:
        prefetch.close()
        done.set()

    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    assert done.wait(10), "close() did not stop the thread"
    assert not prefetch._thread.is_alive()


def test_member_data_is_read_at_most_a_block_at_a_time_and_never_past_its_end() -> None:
    from cellvault.extract import ArchiveStream
    from tests.archive_helpers import dir_entry, file_entry, member

    from .test_tarread import ARCHIVE, archive_bytes, blocks, folder

    big = bytes(range(256)) * ((3 * tarread.BLOCK + 5) // 256) + b"tail!"
    entries = [dir_entry("data/crm"), file_entry("data/crm/f", big, ARCHIVE)]
    raw, sidecar, _ = archive_bytes(folder() + blocks(*member("data/crm/f", big)), entries)
    stream = ArchiveStream(io.BytesIO(raw), sidecar, "t")
    for _, _name, data in stream.members():
        if data is None:
            continue
        got = [
            data.read(0),
            data.read(5),
            data.read(),
            data.read(-1),
            data.read(10 * tarread.BLOCK),
        ]
        assert got[0] == b""
        assert 0 < len(got[1]) <= 5
        assert all(0 < len(g) <= tarread.BLOCK for g in got[2:])
        rest = b""
        while block := data.read(tarread.BLOCK):
            rest += block
        assert b"".join(got) + rest == big
        assert data.read() == b"" and data.read(7) == b""


def _ustar(**fields: bytes) -> bytes:
    """A ustar header block with each field given in full (no NUL where a field is full)."""
    offsets = {
        "name": (0, 100),
        "mode": (100, 8),
        "uid": (108, 8),
        "gid": (116, 8),
        "size": (124, 12),
        "mtime": (136, 12),
        "type": (156, 1),
        "linkname": (157, 100),
        "major": (329, 8),
        "minor": (337, 8),
        "prefix": (345, 155),
        "pad": (500, 12),
    }
    block = bytearray(512)
    block[257:265] = b"ustar\x0000"
    for name, (start, length) in offsets.items():
        numeric = name in ("mode", "uid", "gid", "size", "mtime", "major", "minor")
        value = fields.get(name, b"0" * (length - 1) + b"\0" if numeric else b"")
        assert len(value) <= length, name
        block[start : start + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_every_header_field_is_read_whole_and_no_further() -> None:
    block = _ustar(
        name=b"n" * 99 + b"N",
        mode=b"12345670",
        linkname=b"l" * 99 + b"L",
        major=b"01000000",
        minor=b"02000000",
        prefix=b"data/" + b"p" * 150,
        pad=b"padding!",
        type=b"3",
    )
    assert tarread._checksum_ok(block)
    member = tarread._member(block, b"3", 0, {})
    assert member.name == "data/" + "p" * 150 + "/" + "n" * 99 + "N"
    assert member.linkname == "l" * 99 + "L"
    assert member.mode == 0o12345670
    assert member.rdev == os.makedev(0o1000000, 0o2000000)
    block = _ustar(type=b"4", major=b"10000000", minor=b"30000000", prefix=b"data")
    assert tarread._member(block, b"4", 0, {}).rdev == os.makedev(0o10000000, 0o30000000)


def test_a_folder_loses_only_its_trailing_slashes() -> None:
    for name, kind in (
        (b"data/crm/BOX/", b"5"),
        (b"data/crm/BOX//", b"5"),
        (b"data/crm/BOX/", b"\0"),
    ):
        member = tarread._member(_ustar(name=name), kind, 0, {})
        assert (member.name, member.type) == ("data/crm/BOX", b"5")
    # A file's name is kept as it is (a trailing slash there is refused when checked).
    assert tarread._member(_ustar(name=b"data/crm/fX"), b"0", 0, {}).name == "data/crm/fX"


def test_a_pax_size_of_exactly_the_largest_is_read() -> None:
    member = tarread._member(_ustar(), b"0", 0, {b"size": str(tarread.SIZE_MAX).encode()})
    assert member.size == tarread.SIZE_MAX


def test_more_numeric_fields() -> None:
    # Negative base-256 whose second byte is not 0xff: the first byte alone says negative.
    assert tarread._number(b"\xff" + (1 << 87).to_bytes(11, "big")) == -(1 << 87)
    with pytest.raises(TarFormatError) as info:
        tarread._number(b"00X0644\0")
    assert info.value.message == "invalid number in a header"


def test_checksums_of_every_width_and_every_byte_are_read() -> None:
    # A header whose sum needs six octal digits, the first not 0.
    block = bytearray(_ustar(name=b"\xe9" * 100, linkname=b"\xe9" * 100, type=b"0"))
    assert int(bytes(block[148:154]), 8) >= 0o100000
    assert tarread._checksum_ok(bytes(block))
    # The checksum written as eight digits, with neither NUL nor space (the type flag next).
    total = int(bytes(block[148:154]), 8)
    block[148:156] = b"%08o" % total
    assert tarread._checksum_ok(bytes(block))
    # Bytes at the edge of the two halves summed (256: the linkname's last byte).
    block = bytearray(_ustar(linkname=b"l" * 100))
    assert block[255] and block[256]
    assert tarread._checksum_ok(bytes(block))


def test_a_member_of_the_largest_size_and_a_pax_header_of_the_largest_are_read() -> None:
    size = tarread.SIZE_MAX
    head = _ustar(name=b"data/crm/huge", size=b"\x80" + size.to_bytes(11, "big"), type=b"0")
    member = TarReader(Source(io.BytesIO(head))).next()
    assert member is not None and member.size == size
    body = b" comment=\n"
    filler = tarread.PAX_MAX - len(body) - len(str(tarread.PAX_MAX))
    payload = str(tarread.PAX_MAX).encode() + b" comment=" + b"x" * filler + b"\n"
    assert len(payload) == tarread.PAX_MAX
    pax_head = _ustar(name=b"pax", size=b"%011o\0" % len(payload), type=b"x")
    tar = pax_head + payload + bytes(-len(payload) % 512) + _ustar(name=b"data/crm/f", type=b"0")
    member = TarReader(Source(io.BytesIO(tar))).next()
    assert member is not None and member.name == "data/crm/f"


def test_headers_are_read_whole_across_short_reads() -> None:
    tar = _tar(("a", b"x" * 700), ("b", b"yz"), ("c", b""))
    for step in (7, 100, 511, 513):
        reader = TarReader(Source(Pieces(tar, step), chunk=64))
        names = []
        while (member := reader.next()) is not None:
            names.append((member.name, member.size))
        assert names == [("a", 700), ("b", 2), ("c", 0)], step


def test_a_source_gives_the_rest_of_its_buffer_from_where_it_is() -> None:
    source = Source(io.BytesIO(b"abcdef"), chunk=64)
    assert source.take(1) == b"a"
    assert source.take(10) == b"bcdef"  # the rest, from the second byte
    assert source.take(10) == b""


def test_prefetch_gives_nothing_for_a_read_of_nothing() -> None:
    prefetch = Prefetch(io.BytesIO(b"abcdef"), chunk=4)
    assert prefetch.read(0) == b""
    assert prefetch.read(2) == b"ab"
    assert prefetch.read(0) == b""
    assert prefetch.read() == b"cd"
    prefetch.close()


def test_prefetch_keeps_every_chunk_for_a_reader_slower_than_it() -> None:
    """The queue stays full longer than one wait to hand over: the chunk is offered again, not lost."""
    data = bytes(range(50))
    prefetch = Prefetch(io.BytesIO(data), chunk=10, depth=1)
    got = b""
    while block := prefetch.read():
        got += block
        time.sleep(0.15)  # three of the thread's waits
    prefetch.close()
    assert got == data
