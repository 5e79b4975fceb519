"""The tar reader on hand-made headers: what cellvault writes is read, anything else is refused.

Each archive is ``meta.json``, the blocks under test, ``manifest.json`` and
the end of the archive, compressed, with a sidecar that matches: only the
tar structure can be refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import zstandard

from cellvault import (
    ArchiveCorrupt,
    ArchiveId,
    ArchiveMeta,
    Entry,
    Manifest,
    Sidecar,
    UnsafeArchive,
)
from cellvault.extract import ArchiveStream, StagedTree, verify_archive
from tests.archive_helpers import (
    all_paths,
    dir_entry,
    file_entry,
    hardlink_entry,
    link_entry,
    member,
)

#: Every rule holds whoever decompresses: a thread of this process, or a forked child.
pytestmark = pytest.mark.usefixtures("who_decompresses")

IDENT = ArchiveId("crm", dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.UTC))
ARCHIVE = str(IDENT)
DATA = b"file data\n"


def blocks(info: tarfile.TarInfo, data: bytes | None = None) -> bytes:
    """A member as tarfile writes it in PAX format: its header block(s) and padded data."""
    out = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    if data:
        out += data + bytes(-len(data) % 512)
    return out


def header(
    name: bytes,
    *,
    kind: bytes = b"0",
    size: bytes | None = None,
    mode: bytes = b"0000644\0",
    prefix: bytes = b"",
    linkname: bytes = b"",
    checksum: bytes | None = None,
) -> bytes:
    """One ustar header block with raw fields; the checksum is right unless given."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = mode
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size if size is not None else b"%011o\0" % len(DATA)
    block[136:148] = b"14511111111\0"
    block[156:157] = kind
    block[157 : 157 + len(linkname)] = linkname
    block[257:265] = b"ustar\x0000"
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = checksum if checksum is not None else b"%06o\0 " % sum(block)
    return bytes(block)


def pax(*records: bytes) -> bytes:
    """A pax ``x`` header with these raw records (each ``b"<length> key=value\\n"``)."""
    payload = b"".join(records)
    head = header(b"././@PaxHeader", kind=b"x", size=b"%011o\0" % len(payload))
    return head + payload + bytes(-len(payload) % 512)


def record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


META = ArchiveMeta(id=IDENT, kind="full", backed_at=IDENT.when, host="t", version="0", codec="zstd")


def vouching(raw: bytes, files: int = 0) -> Sidecar:
    """A sidecar that vouches for exactly the stored bytes *raw*."""
    return Sidecar(
        meta=META,
        data_name=f"{ARCHIVE}.tar.zst",
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        files=files,
    )


def sealed(tar: bytes, files: int = 0) -> tuple[bytes, Sidecar]:
    """*tar* compressed, with a sidecar that vouches for exactly those bytes."""
    raw = zstandard.ZstdCompressor().compress(tar)
    return raw, vouching(raw, files)


def folder() -> bytes:
    """The member of the cell's folder, ``data/crm``, as most archives here begin."""
    return blocks(*member("data/crm", kind=tarfile.DIRTYPE, mode=0o755))


def archive_bytes(middle: bytes, entries: list | None = None) -> tuple[bytes, Sidecar, Manifest]:  # type: ignore[type-arg]
    manifest = Manifest(archive=ARCHIVE)
    for entry in entries if entries is not None else [dir_entry("data/crm")]:
        manifest.add(entry)
    tar = (
        blocks(*member("meta.json", META.to_json()))
        + middle
        + blocks(*member("manifest.json", manifest.to_json()))
        + bytes(1024)
    )
    raw, sidecar = sealed(tar, files=len(manifest))
    return raw, sidecar, manifest


def verify(middle: bytes, entries: list | None = None) -> int:  # type: ignore[type-arg]
    raw, sidecar, _ = archive_bytes(middle, entries)
    return verify_archive(io.BytesIO(raw), sidecar, "t")[2]


def test_what_tarfile_writes_is_read() -> None:
    long_dir = "data/crm/" + "d" * 150
    odd = "data/crm/caf\udce9"  # an undecodable name: pax with hdrcharset=BINARY
    dir_info, _ = member(long_dir, kind=tarfile.DIRTYPE, mode=0o750)
    link_info, _ = member("data/crm/l", kind=tarfile.SYMTYPE, mode=0o777, linkname="x" * 200)
    middle = (
        folder()
        + blocks(dir_info)
        + blocks(*member(long_dir + "/f", DATA))
        + blocks(*member(odd, DATA, mode=0o600))
        + blocks(link_info)
    )
    entries = [
        dir_entry("data/crm"),
        dir_entry(long_dir, mode=0o750),
        file_entry(long_dir + "/f", DATA, ARCHIVE),
        file_entry(odd, DATA, ARCHIVE, mode=0o600),
        link_entry("data/crm/l", "x" * 200),
    ]
    assert verify(middle, entries) == 5


def test_ustar_prefix_and_old_style_directories_are_read() -> None:
    middle = (
        header(b"crm/", kind=b"\0", prefix=b"data", size=b"0" * 11 + b"\0", mode=b"0000755\0")
        + header(b"f", prefix=b"data/crm")
        + padded(DATA)
    )
    assert verify(middle, [dir_entry("data/crm"), file_entry("data/crm/f", DATA, ARCHIVE)]) == 2


# Each case: the blocks between meta.json and manifest.json, the error type, and
# words of its message.
HOSTILE: dict[str, tuple[bytes, type[ArchiveCorrupt], str]] = {
    "pax path with ..": (
        pax(record(b"path", b"data/crm/../../../x")) + header(b"data/crm/ok") + padded(DATA),
        UnsafeArchive,
        "'..'",
    ),
    "pax path absolute": (
        pax(record(b"path", b"/etc/cron.d/x")) + header(b"data/crm/ok") + padded(DATA),
        UnsafeArchive,
        "absolute",
    ),
    "pax path with NUL": (
        pax(record(b"path", b"data/crm/a\0/../../x")) + header(b"data/crm/ok") + padded(DATA),
        UnsafeArchive,
        "absolute or empty",
    ),
    "ustar prefix absolute": (
        header(b"x", prefix=b"/etc/cron.d") + padded(DATA),
        UnsafeArchive,
        "absolute",
    ),
    "ustar prefix with ..": (
        header(b"x", prefix=b"data/crm/../..") + padded(DATA),
        UnsafeArchive,
        "'..'",
    ),
    "negative size (base-256)": (
        header(b"data/crm/f", size=b"\xff" * 12) + padded(DATA),
        ArchiveCorrupt,
        "out of range",
    ),
    "negative size (octal text)": (
        header(b"data/crm/f", size=b"-0000000012\0") + padded(DATA),
        ArchiveCorrupt,
        "invalid number",
    ),
    "huge size (base-256)": (
        header(b"data/crm/f", size=b"\x80" + b"\xff" * 11) + padded(DATA),
        ArchiveCorrupt,
        "out of range",
    ),
    "huge size (octal), data missing": (
        header(b"data/crm/f", size=b"77777777777\0") + padded(DATA),
        ArchiveCorrupt,
        "unexpected end of data",
    ),
    "huge pax size": (
        pax(record(b"size", b"9" * 40)) + header(b"data/crm/f") + padded(DATA),
        ArchiveCorrupt,
        "invalid size",
    ),
    "negative pax size": (
        pax(record(b"size", b"-1")) + header(b"data/crm/f") + padded(DATA),
        ArchiveCorrupt,
        "invalid size",
    ),
    "huge pax header": (
        header(b"././@PaxHeader", kind=b"x", size=b"77777777777\0"),
        ArchiveCorrupt,
        "too large",
    ),
    "octal digits 8 and 9": (
        header(b"data/crm/f", size=b"00000000019\0") + padded(DATA),
        ArchiveCorrupt,
        "invalid number",
    ),
    "bad checksum": (
        header(b"data/crm/f", checksum=b"000000\0 ") + padded(DATA),
        ArchiveCorrupt,
        "bad header checksum",
    ),
    "checksum not a number": (
        header(b"data/crm/f", checksum=b"zzzzzz\0 ") + padded(DATA),
        ArchiveCorrupt,
        "invalid number",
    ),
    "pax record length too long": (
        pax(b"99 path=data/crm/f\n") + header(b"data/crm/f") + padded(DATA),
        ArchiveCorrupt,
        "invalid pax header",
    ),
    "pax record length zero": (
        pax(b"0 path=data/crm/f\n") + header(b"data/crm/f") + padded(DATA),
        ArchiveCorrupt,
        "invalid pax header",
    ),
    "pax record without =": (
        pax(b"14 pathdata/f\n") + header(b"data/crm/f") + padded(DATA),
        ArchiveCorrupt,
        "invalid pax header",
    ),
    "pax record length not decimal": (
        pax(b"+18 path=data/f\n") + header(b"data/crm/f") + padded(DATA),
        ArchiveCorrupt,
        "invalid pax header",
    ),
    "global pax header": (
        header(b"pax_global_header", kind=b"g", size=b"%011o\0" % 18)
        + padded(b"18 path=/etc/pwn\n"),
        ArchiveCorrupt,
        "global pax",
    ),
    "GNU long name": (
        header(b"././@LongLink", kind=b"L", size=b"%011o\0" % 10) + padded(b"../../etc\0"),
        ArchiveCorrupt,
        "GNU long name",
    ),
    "hard link": (
        header(b"data/crm/h", kind=b"1", linkname=b"/etc/passwd"),
        UnsafeArchive,
        "hard link",
    ),
    "contiguous file": (header(b"data/crm/c", kind=b"7") + padded(DATA), UnsafeArchive, "type"),
    "header cut short": (header(b"data/crm/f")[:300], ArchiveCorrupt, "checksum"),
}


#: The whole of each case's message (its words above are a part of it).


def _unreadable(why: str) -> str:
    return f"unreadable at or after member meta.json ({why}); truncated or damaged"


HOSTILE_DETAIL = {
    "GNU long name": _unreadable("GNU long name header; cellvault does not write those"),
    "bad checksum": _unreadable("bad header checksum"),
    "checksum not a number": _unreadable("invalid number in a header"),
    "contiguous file": "member is a member of type b'7'; cellvault writes no such member",
    "global pax header": _unreadable("global pax header; cellvault does not write those"),
    "hard link": "hard link to '/etc/passwd', outside the cell's data; refused",
    "header cut short": _unreadable("bad header checksum"),
    "huge pax header": _unreadable("pax header of 8589934591 bytes; too large"),
    "huge pax size": _unreadable("invalid size in a pax header"),
    "huge size (base-256)": _unreadable("member size 309485009821345068724781055 out of range"),
    "huge size (octal), data missing": "unreadable data (unexpected end of data); truncated or damaged",
    "negative pax size": _unreadable("invalid size in a pax header"),
    "negative size (base-256)": _unreadable("member size -1 out of range"),
    "negative size (octal text)": _unreadable("invalid number in a header"),
    "octal digits 8 and 9": _unreadable("invalid number in a header"),
    "pax path absolute": "member name '/etc/cron.d/x' is absolute or empty; refused",
    "pax path with ..": "member name 'data/crm/../../../x' has '..', '.' or empty components; refused",
    "pax path with NUL": "member name 'data/crm/a\\x00/../../x' is absolute or empty; refused",
    "pax record length not decimal": _unreadable("invalid pax header"),
    "pax record length too long": _unreadable("invalid pax header"),
    "pax record length zero": _unreadable("invalid pax header"),
    "pax record without =": _unreadable("invalid pax header"),
    "ustar prefix absolute": "member name '/etc/cron.d/x' is absolute or empty; refused",
    "ustar prefix with ..": "member name 'data/crm/../../x' has '..', '.' or empty components; refused",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_or_malformed_headers_are_refused(case: str, tmp_path: Path) -> None:
    middle, error, words = HOSTILE[case]
    entries = [dir_entry("data/crm"), file_entry("data/crm/f", DATA, ARCHIVE)]
    with pytest.raises(error) as info:
        verify(middle, entries)
    assert words in info.value.message
    assert info.value.detail == HOSTILE_DETAIL[case]
    assert info.value.archive == ARCHIVE

    # A restore refuses it the same way, and writes nothing outside its staging folder.
    raw, sidecar, manifest = archive_bytes(middle, entries)
    staging = tmp_path / "staging"
    tree = StagedTree(staging=staging, manifest=manifest, archive=ARCHIVE)
    tree.prepare()
    with pytest.raises(error):
        tree.take(ArchiveStream(io.BytesIO(raw), sidecar, "t"))
    assert all(p.startswith(str(staging)) for p in all_paths(tmp_path))


def test_archive_ending_after_a_pax_header_is_refused() -> None:
    for end in (b"", bytes(1024)):
        tar = blocks(*member("meta.json", META.to_json())) + pax(record(b"path", b"x")) + end
        raw, sidecar = sealed(tar)
        with pytest.raises(ArchiveCorrupt) as info:
            verify_archive(io.BytesIO(raw), sidecar, "t")
        assert info.value.detail == _unreadable("the archive ends after a pax header")


def test_manifest_json_must_be_a_file() -> None:
    info, _ = member("manifest.json", kind=tarfile.DIRTYPE)
    with pytest.raises(ArchiveCorrupt) as refused:
        verify(blocks(info))
    assert (refused.value.detail, refused.value.member) == (
        "manifest.json is not a file",
        "manifest.json",
    )


def test_oversized_meta_json_is_refused() -> None:
    tar = blocks(*member("meta.json", META.to_json() + b" " * (2 << 20))) + bytes(1024)
    raw, sidecar = sealed(tar)
    with pytest.raises(ArchiveCorrupt, match="too large"):
        verify_archive(io.BytesIO(raw), sidecar, "t")


_META = json.loads(META.to_json())


@pytest.mark.parametrize(
    ("meta_json", "why"),
    [
        (b"{", "meta.json is not JSON"),
        (b"[" * 100_000, "meta.json is not JSON"),
        (b"[1]", "meta.json has no backed_at"),
        (b'{"id": "x"}', "meta.json has no backed_at"),
        (
            b'{"backed_at": 1, "id": 5, "kind": "full"}',
            "meta.json is unusable (TypeError: id is a number, not a string)",
        ),
        (
            json.dumps(_META | {"backed_at": 1}).encode(),
            "meta.json is unusable (TypeError: backed_at is a number, not a string)",
        ),
        (
            json.dumps(_META | {"backed_at": "yesterday"}).encode(),
            "meta.json is unusable (ValueError: Invalid isoformat string: 'yesterday')",
        ),
        (
            json.dumps(_META | {"chain": ["x"]}).encode(),
            "meta.json is unusable (names archive 'x', which is not an older archive of cell crm)",
        ),
        (
            json.dumps(_META | {"id": "cell_crm_20210304_050608"}).encode(),
            "meta.json names archive cell_crm_20210304_050608",
        ),
        (b" " * ((1 << 20) + 1), "meta.json has 1048577 bytes; too large"),
    ],
    ids=[
        "cut",
        "deep",
        "list",
        "no-time",
        "numbers",
        "time-number",
        "bad-time",
        "bad-chain",
        "other",
        "huge",
    ],
)
def test_unusable_meta_json_is_corrupt(meta_json: bytes, why: str) -> None:
    tar = blocks(*member("meta.json", meta_json)) + bytes(1024)
    raw, sidecar = sealed(tar)
    with pytest.raises(ArchiveCorrupt) as info:
        verify_archive(io.BytesIO(raw), sidecar, "t")
    assert (info.value.detail, info.value.member, info.value.target) == (why, "meta.json", "t")
    assert info.value.archive == ARCHIVE  # the archive read, not the one meta.json names


@pytest.mark.parametrize(
    ("manifest_json", "why"),
    [
        (
            b'{"archive": "a", "entries": [1, 2]}',
            "manifest is unusable (TypeError: an entry is a number, not an object)",
        ),
        (b"[" * 100_000, "manifest is unusable (RecursionError)"),
        (b'{"entries": []}', None),
        (
            b'{"format": 1, "archive": "%s", "entries": [{"path": "data/crm/f", "type": "file",'
            b' "mode": 420, "mtime_ns": 1, "size": 0, "sha256": "%s",'
            b' "archive": "cell_crm_20991231_020000"}]}' % (ARCHIVE.encode(), b"0" * 64),
            "manifest is unusable (names archive 'cell_crm_20991231_020000', which is not an "
            "older archive of cell crm)",
        ),
    ],
    ids=["numbers", "deep", "no-archive", "newer-holder"],
)
def test_unusable_manifest_json_is_corrupt(manifest_json: bytes, why: str | None) -> None:
    tar = (
        blocks(*member("meta.json", META.to_json()))
        + blocks(*member("manifest.json", manifest_json))
        + bytes(1024)
    )
    raw, sidecar = sealed(tar)
    if why is not None:
        with pytest.raises(ArchiveCorrupt) as info:
            verify_archive(io.BytesIO(raw), sidecar, "t")
        assert (info.value.detail, info.value.member, info.value.target) == (
            why,
            "manifest.json",
            "t",
        )
        return
    with pytest.raises(ArchiveCorrupt, match="manifest"):
        verify_archive(io.BytesIO(raw), sidecar, "t")


def test_reading_a_member_after_the_next_one_is_an_error() -> None:
    raw, sidecar, _ = archive_bytes(
        folder() + blocks(*member("data/crm/f", DATA)) + blocks(*member("data/crm/g", DATA)),
        [
            dir_entry("data/crm"),
            file_entry("data/crm/f", DATA, ARCHIVE),
            file_entry("data/crm/g", DATA, ARCHIVE),
        ],
    )
    stream = ArchiveStream(io.BytesIO(raw), sidecar, "t")
    files = [(name, data) for _, name, data in stream.members() if data is not None]
    assert [name for name, _ in files] == ["data/crm/f", "data/crm/g"]
    with pytest.raises(ValueError, match="after the next member"):
        files[0][1].read()


def test_members_past_the_spill_size_are_checked_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    # An archive of many members keeps what verify saw of them in a temporary file.
    monkeypatch.setattr("cellvault.spillmap.SPILL_AT", 2)
    names = [f"data/crm/{n}" for n in "abcd"]
    middle = folder()
    middle += b"".join(blocks(*member(name, DATA)) for name in names)
    middle += blocks(*member("data/crm/l", kind=tarfile.SYMTYPE, mode=0o777, linkname="a"))
    entries = [dir_entry("data/crm"), *(file_entry(n, DATA, ARCHIVE) for n in names)]
    assert verify(middle, [*entries, link_entry("data/crm/l", "a")]) == 6
    with pytest.raises(ArchiveCorrupt) as info:
        verify(middle, [*entries, link_entry("data/crm/l", "b")])
    assert (info.value.detail, info.value.member) == (
        "link target does not match the manifest",
        "data/crm/l",
    )


def test_a_pax_size_has_at_most_19_digits() -> None:
    entries = [dir_entry("data/crm"), file_entry("data/crm/f", DATA, ARCHIVE)]
    cell_dir = folder()
    nineteen = pax(record(b"size", b"%019d" % len(DATA))) + header(b"data/crm/f") + padded(DATA)
    assert verify(cell_dir + nineteen, entries) == 2
    twenty = pax(record(b"size", b"%020d" % len(DATA))) + header(b"data/crm/f") + padded(DATA)
    with pytest.raises(ArchiveCorrupt) as info:
        verify(cell_dir + twenty, entries)
    assert info.value.detail == (
        "unreadable at or after member data/crm (invalid size in a pax header); "
        "truncated or damaged"
    )


def test_a_device_members_number_and_a_members_xattrs_are_read() -> None:
    dev, _ = member("data/crm/null", kind=tarfile.CHRTYPE, mode=0o666)
    dev.devmajor, dev.devminor = 1, 3
    disk, _ = member("data/crm/sda", kind=tarfile.BLKTYPE, mode=0o660)
    disk.devmajor, disk.devminor = 8, 0
    records = pax(
        record(b"SCHILY.xattr.user.b", b"2"),
        record(b"SCHILY.xattr.user.a", b"\xff\x00"),
        record(b"comment", b"not an attribute"),
    )
    middle = blocks(dev) + blocks(disk) + records + header(b"data/crm/f") + padded(DATA)
    raw, sidecar, _ = archive_bytes(middle)
    stream = ArchiveStream(io.BytesIO(raw), sidecar, "t")
    got = {name: (m.kind, m.rdev, m.xattrs) for m, name, _ in stream.members()}
    assert got == {
        "data/crm/null": ("chardev", os.makedev(1, 3), ()),
        "data/crm/sda": ("blockdev", os.makedev(8, 0), ()),
        "data/crm/f": ("file", 0, (("user.b", b"2"), ("user.a", b"\xff\x00"))),
    }


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (b"g", "global pax"),
        (b"L", "GNU long name"),
        (b"K", "GNU long link"),
        (b"S", "GNU old sparse"),
        (b"M", "GNU multi-volume"),
        (b"V", "GNU volume"),
    ],
)
def test_extension_headers_cellvault_never_writes_are_named(kind: bytes, what: str) -> None:
    middle = header(b"x", kind=kind, size=b"%011o\0" % 512) + bytes(512)
    with pytest.raises(ArchiveCorrupt) as info:
        verify(middle)
    assert info.value.detail == (
        f"unreadable at or after member meta.json ({what} header; cellvault does not write "
        "those); "
        "truncated or damaged"
    )


@pytest.mark.parametrize(
    ("records", "why"),
    [
        ([(b"GNU.sparse.offset", b"0")], "GNU sparse format 0.x; cellvault reads format 1.0 only"),
        (
            [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"1")],
            "GNU sparse format other than 1.0",
        ),
        (
            [(b"GNU.sparse.major", b"0"), (b"GNU.sparse.minor", b"0")],
            "GNU sparse format other than 1.0",
        ),
        (
            [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")],
            "invalid sparse file header",
        ),
        (
            [
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", b"data/crm/f"),
            ],
            "invalid sparse file header",
        ),
        (
            [
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.realsize", b"10"),
            ],
            "invalid sparse file header",
        ),
    ],
    ids=["0.x", "1.1", "0.0", "no name or size", "no size", "no name"],
)
def test_sparse_headers_other_than_pax_1_0_are_refused(
    records: list[tuple[bytes, bytes]], why: str
) -> None:
    middle = pax(*(record(k, v) for k, v in records)) + header(b"data/crm/f") + padded(DATA)
    with pytest.raises(ArchiveCorrupt) as info:
        verify(middle)
    assert info.value.detail == (
        f"unreadable at or after member meta.json ({why}); truncated or damaged"
    )


def test_a_sparse_directory_is_refused() -> None:
    records = [
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", b"data/crm/d"),
        (b"GNU.sparse.realsize", b"10"),
    ]
    middle = pax(*(record(k, v) for k, v in records)) + header(b"data/crm/d", kind=b"5")
    with pytest.raises(ArchiveCorrupt, match="invalid sparse file header"):
        verify(middle)


def test_number_fields() -> None:
    # A size of NULs only is 0 (an empty file); a first byte with the high bit set
    # is base-256 only as 0x80 (positive) or 0xff (negative).
    cell_dir = folder()
    entries = [dir_entry("data/crm"), file_entry("data/crm/e", b"", ARCHIVE)]
    assert verify(cell_dir + header(b"data/crm/e", size=bytes(12)), entries) == 2
    with pytest.raises(ArchiveCorrupt) as info:
        verify(cell_dir + header(b"data/crm/e", size=b"\x81" + bytes(11)), entries)
    assert info.value.detail == (
        "unreadable at or after member data/crm (invalid number in a header); truncated or damaged"
    )


def test_a_checksum_of_signed_bytes_is_accepted() -> None:
    # Some writers summed the header's bytes as signed chars: bytes over 0x7f count negative.
    block = bytearray(header("data/crm/é".encode(), size=b"%011o\0" % len(DATA)))
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in block)
    block[148:156] = b"%06o\0 " % signed
    entries = [dir_entry("data/crm"), file_entry("data/crm/é", DATA, ARCHIVE)]
    cell_dir = folder()
    assert verify(cell_dir + bytes(block) + padded(DATA), entries) == 2


def test_a_member_the_manifest_does_not_list_or_lists_as_another_kind_is_named() -> None:
    cell_dir = folder()
    extra = blocks(*member("data/crm/x", DATA))
    with pytest.raises(ArchiveCorrupt) as info:
        verify(cell_dir + extra, [dir_entry("data/crm")])
    assert (info.value.detail, info.value.member) == ("member is not in the manifest", "data/crm/x")
    as_dir = blocks(*member("data/crm/x", kind=tarfile.DIRTYPE, mode=0o644))
    with pytest.raises(ArchiveCorrupt) as info:
        verify(cell_dir + as_dir, [dir_entry("data/crm"), file_entry("data/crm/x", DATA, ARCHIVE)])
    assert (info.value.detail, info.value.member) == (
        "member is a dir, the manifest says file",
        "data/crm/x",
    )
    older = "cell_crm_20210101_000000"
    with pytest.raises(ArchiveCorrupt) as info:
        verify(cell_dir + extra, [dir_entry("data/crm"), file_entry("data/crm/x", DATA, older)])
    assert (info.value.detail, info.value.member) == (
        f"manifest says archive {older} holds it",
        "data/crm/x",
    )


_FOLDER = dir_entry("data/crm")
_OLDER = "cell_crm_20210101_020000"

# Each case: the members after data/crm, the manifest's entries after it, and what is refused.
MISMATCHES: dict[str, tuple[list[tuple[str, dict]], list[Entry], tuple[str, str] | None]] = {  # type: ignore[type-arg]
    "content differs": (
        [("data/crm/f", {"data": b"other data"})],
        [file_entry("data/crm/f", DATA, ARCHIVE)],
        ("content does not match the manifest (sha256 differs)", "data/crm/f"),
    ),
    "hard link elsewhere": (
        [
            ("data/crm/f", {"data": DATA}),
            ("data/crm/h", {"kind": tarfile.LNKTYPE, "linkname": "data/crm/f"}),
        ],
        [
            file_entry("data/crm/f", DATA, ARCHIVE),
            file_entry("data/crm/g", DATA, _OLDER),
            hardlink_entry("data/crm/h", "data/crm/g"),
        ],
        ("link target does not match the manifest", "data/crm/h"),
    ),
    "mode differs": (
        [("data/crm/f", {"data": DATA, "mode": 0o600})],
        [file_entry("data/crm/f", DATA, ARCHIVE)],
        ("mode 600 does not match the manifest (644)", "data/crm/f"),
    ),
    "a file held here is missing": (
        [],
        [file_entry("data/crm/f", DATA, ARCHIVE)],
        ("listed in the manifest but missing from the archive", "data/crm/f"),
    ),
    "a folder is missing": (
        [],
        [dir_entry("data/crm/sub")],
        ("listed in the manifest but missing from the archive", "data/crm/sub"),
    ),
    "a file an older archive holds is not here, rightly": (
        [],
        [file_entry("data/crm/f", DATA, _OLDER)],
        None,
    ),
    "a file here that an older archive should hold": (
        [("data/crm/f", {"data": DATA})],
        [file_entry("data/crm/f", DATA, _OLDER)],
        (f"manifest says archive {_OLDER} holds it", "data/crm/f"),
    ),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_each_difference_from_the_manifest_is_named_with_its_member(case: str) -> None:
    members, entries, refused = MISMATCHES[case]
    middle = folder()
    for name, kwargs in members:
        middle += blocks(*member(name, **kwargs))
    if refused is None:
        assert verify(middle, [_FOLDER, *entries]) == 1 + len(members)
        return
    with pytest.raises(ArchiveCorrupt) as info:
        verify(middle, [_FOLDER, *entries])
    assert (info.value.detail, info.value.member, info.value.target) == (*refused, "t")
    assert info.value.hint == (
        "the stored copy is damaged; verify other targets and restore from a good one"
    )


def test_a_member_cut_short_or_undecodable_is_named_with_why() -> None:
    """The tar's own failure in its words; the codec's with its type, the member named."""
    big = b"".join(b"line %06d of the log\n" % i for i in range(40000))
    middle = folder()
    middle += blocks(*member("data/crm/big", big))
    raw, _, _ = archive_bytes(middle, [_FOLDER, file_entry("data/crm/big", big, ARCHIVE)])

    def refused(stored: bytes) -> ArchiveCorrupt:
        with pytest.raises(ArchiveCorrupt) as info:
            verify_archive(io.BytesIO(stored), vouching(stored, files=2), "t")
        return info.value

    cut = refused(raw[: len(raw) // 2])
    assert (cut.detail, cut.member) == (
        "unreadable data (unexpected end of data); truncated or damaged",
        "data/crm/big",
    )
    # A byte flipped early in the compressed stream: some flips fail zstd inside the member.
    codec = []
    for pos in range(6, 200, 3):
        damaged = refused(raw[:pos] + bytes([raw[pos] ^ 0xFF]) + raw[pos + 1 :])
        if damaged.member == "data/crm/big" and "Zstd" in damaged.detail:
            codec.append(damaged.detail)
    assert codec
    assert all(
        d.startswith("unreadable data (ZstdError: ") and d.endswith("); truncated or damaged")
        for d in codec
    ), codec


def test_a_digest_that_does_not_match_names_the_member_the_manifest_tells() -> None:
    """The sidecar vouches for other bytes: the member whose content differs is named with it."""
    entries = [_FOLDER, file_entry("data/crm/f", DATA, ARCHIVE)]
    cell_dir = folder()
    _, good, _ = archive_bytes(cell_dir + blocks(*member("data/crm/f", DATA)), entries)
    other = DATA.upper()
    raw, _, _ = archive_bytes(cell_dir + blocks(*member("data/crm/f", other)), entries)
    mismatch = (
        f"sha256 {hashlib.sha256(raw).hexdigest()[:16]}… over {len(raw)} bytes does not match "
        f"the sidecar ({good.sha256[:16]}… over {good.size} bytes)"
    )
    with pytest.raises(ArchiveCorrupt) as info:
        verify_archive(io.BytesIO(raw), good, "t")
    assert (info.value.detail, info.value.member, info.value.target) == (
        f"content does not match the manifest (sha256 differs); {mismatch}",
        "data/crm/f",
        "t",
    )
    # Nothing the manifest can tell (the members are as it lists them): the mismatch alone.
    raw, _, _ = archive_bytes(cell_dir + blocks(*member("data/crm/f", DATA, mode=0o644)), entries)
    forged = attrs.evolve(good, sha256="0" * 64)
    with pytest.raises(ArchiveCorrupt) as info:
        verify_archive(io.BytesIO(raw), forged, "t")
    assert (info.value.member, info.value.target) == (None, "t")
    assert info.value.detail == (
        f"sha256 {hashlib.sha256(raw).hexdigest()[:16]}… over {len(raw)} bytes does not match "
        f"the sidecar ({'0' * 16}… over {good.size} bytes)"
    )


# Each case: a member after data/crm, and why the stream refuses it (before the manifest is read).
HOSTILE_MEMBERS: dict[str, tuple[tuple[str, dict], str]] = {  # type: ignore[type-arg]
    "outside data/": (("etc/passwd", {"data": DATA}), "member lies outside data/ and dumps/"),
    "a bare name": (("data", {"kind": tarfile.DIRTYPE}), "member lies outside data/ and dumps/"),
    "a link under dumps/": (
        ("dumps/pg/l", {"kind": tarfile.SYMTYPE, "linkname": "x"}),
        "a symlink under dumps/; refused",
    ),
    "a FIFO under dumps/": (
        ("dumps/pg/p", {"kind": tarfile.FIFOTYPE}),
        "a fifo under dumps/; refused",
    ),
    "a contiguous file": (
        ("data/crm/c", {"kind": tarfile.CONTTYPE}),
        "member is a member of type b'7'; cellvault writes no such member",
    ),
    **{
        f"a hard link to {target!r}": (
            ("data/crm/h", {"kind": tarfile.LNKTYPE, "linkname": target}),
            f"hard link to {target!r}, outside the cell's data; refused",
        )
        for target in [
            "/etc/passwd",
            "data/crm/../../etc/passwd",
            "data/./crm/f",
            "data//crm/f",
            "data/crm/f/",
            "dumps/pg/db.sql",
            "data/crm/h",
        ]
    },
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMBERS))
def test_a_hostile_member_is_refused_naming_it(case: str) -> None:
    (name, kwargs), why = HOSTILE_MEMBERS[case]
    middle = folder()
    middle += blocks(*member("data/crm/f", DATA)) + blocks(*member(name, **kwargs))
    entries = [_FOLDER, file_entry("data/crm/f", DATA, ARCHIVE)]
    with pytest.raises(UnsafeArchive) as info:
        verify(middle, entries)
    assert (info.value.detail, info.value.member, info.value.archive) == (why, name, ARCHIVE)


def test_a_member_after_the_manifest_is_refused_naming_it() -> None:
    manifest = Manifest(archive=ARCHIVE)
    manifest.add(_FOLDER)
    tar = (
        blocks(*member("meta.json", META.to_json()))
        + folder()
        + blocks(*member("manifest.json", manifest.to_json()))
        + blocks(*member("data/crm/late", DATA))
        + bytes(1024)
    )
    raw, sidecar = sealed(tar, files=1)
    with pytest.raises(ArchiveCorrupt) as info:
        verify_archive(io.BytesIO(raw), sidecar, "t")
    assert (info.value.detail, info.value.member, info.value.target) == (
        "a member follows manifest.json",
        "data/crm/late",
        "t",
    )


def test_a_hard_link_whose_pax_target_holds_a_nul_is_refused() -> None:
    """A ustar field ends at its first NUL; a pax linkpath can carry one."""
    middle = folder()
    middle += blocks(*member("data/crm/f", DATA))
    middle += pax(record(b"linkpath", b"data/crm/f\0x")) + header(
        b"data/crm/h", kind=b"1", size=b"%011o\0" % 0
    )
    with pytest.raises(UnsafeArchive) as info:
        verify(middle, [_FOLDER, file_entry("data/crm/f", DATA, ARCHIVE)])
    assert (info.value.detail, info.value.member) == (
        "hard link to 'data/crm/f\\x00x', outside the cell's data; refused",
        "data/crm/h",
    )


def test_a_hard_link_to_a_file_whose_name_ends_in_a_space_is_read() -> None:
    odd = "data/crm/f "  # a name of its own, not "data/crm/f" with its end trimmed
    middle = folder()
    middle += blocks(*member(odd, DATA))
    middle += blocks(*member("data/crm/h", kind=tarfile.LNKTYPE, linkname=odd))
    entries = [_FOLDER, file_entry(odd, DATA, ARCHIVE), hardlink_entry("data/crm/h", odd)]
    assert verify(middle, entries) == 3


# Each case: the whole tar, and what both a verify and a restore's stream refuse it with.
INCOMPLETE: dict[str, tuple[bytes, str, str | None]] = {
    "nothing": (b"", "the archive is empty (no meta.json)", None),
    "only the end": (bytes(1024), "the archive is empty (no meta.json)", None),
    "a folder first": (folder() + bytes(1024), "meta.json is not the first member", "data/crm"),
    "meta.json a folder": (
        blocks(*member("meta.json", kind=tarfile.DIRTYPE)) + bytes(1024),
        "meta.json is not the first member",
        "meta.json",
    ),
    "no manifest": (
        blocks(*member("meta.json", META.to_json())) + folder() + bytes(1024),
        "manifest.json is missing: the archive is truncated",
        "data/crm",
    ),
    "no manifest and no end": (
        blocks(*member("meta.json", META.to_json())) + folder(),
        "manifest.json is missing: the archive is truncated",
        "data/crm",
    ),
    "meta.json alone": (
        blocks(*member("meta.json", META.to_json())) + bytes(1024),
        "manifest.json is missing: the archive is truncated",
        "meta.json",
    ),
}


@pytest.mark.parametrize("case", sorted(INCOMPLETE))
@pytest.mark.parametrize("reader", ["verify", "stream"])
def test_an_archive_without_its_first_or_last_member_is_refused_naming_where(
    case: str, reader: str
) -> None:
    tar, why, where = INCOMPLETE[case]
    raw, sidecar = sealed(tar)
    with pytest.raises(ArchiveCorrupt) as info:
        if reader == "verify":
            verify_archive(io.BytesIO(raw), sidecar, "t")
        else:
            list(ArchiveStream(io.BytesIO(raw), sidecar, "t").members())
    assert (info.value.detail, info.value.member, info.value.target) == (why, where, "t")
    assert info.value.archive == ARCHIVE


def test_bytes_that_are_not_the_codecs_are_unreadable_at_the_start() -> None:
    raw = b"not zstd at all" * 10
    with pytest.raises(ArchiveCorrupt) as info:
        verify_archive(io.BytesIO(raw), vouching(raw), "t")
    assert info.value.detail == (
        "unreadable at its start (ZstdError: zstd decompress error: Unknown frame descriptor); "
        "truncated or damaged"
    )
    assert info.value.member is None


def decompressing_threads() -> list[threading.Thread]:
    """The threads that decompress, or feed the child that does, alive now (a stream's own)."""
    names = ("cellvault-decompress", "cellvault-inflate-feed")
    return [t for t in threading.enumerate() if t.name in names]


def test_a_stream_read_to_its_end_leaves_no_thread_and_no_current_member(
    who_decompresses: str, forked_children: Callable[[], list[int]]
) -> None:
    entries = [dir_entry("data/crm"), file_entry("data/crm/f", DATA, ARCHIVE)]
    raw, sidecar, manifest = archive_bytes(folder() + blocks(*member("data/crm/f", DATA)), entries)
    stream = ArchiveStream(io.BytesIO(raw), sidecar, "t")
    names = []
    for _, name, data in stream.members():
        assert stream.current == name
        names.append((name, data.readall() if data is not None else None))
    assert names == [("data/crm", None), ("data/crm/f", DATA)]
    assert stream.current is None
    assert stream.meta == META
    assert stream.digest_mismatch is None
    assert stream.manifest().same_as(manifest)
    assert decompressing_threads() == []
    assert forked_children() == []
    # Stopped early by its reader: the thread, or the child, waiting to hand over
    # more, is stopped too.
    big = bytes(16 << 20)  # more than the thread reads ahead, or the pipes hold
    entries = [dir_entry("data/crm"), file_entry("data/crm/f", big, ARCHIVE)]
    raw, sidecar, _ = archive_bytes(folder() + blocks(*member("data/crm/f", big)), entries)
    stream = ArchiveStream(io.BytesIO(raw), sidecar, "t")
    members = stream.members()
    next(members)
    if who_decompresses == "thread":
        assert [t.name for t in decompressing_threads()] == ["cellvault-decompress"]
    else:
        assert len(forked_children()) == 1
    members.close()
    assert decompressing_threads() == []
    assert forked_children() == []


@pytest.mark.parametrize(
    ("manifest_json", "why"),
    [
        (
            b'{"archive": "a", "entries": [1, 2]}',
            "manifest is unusable (TypeError: an entry is a number, not an object)",
        ),
        (
            b'{"format": 1, "archive": "%s", "entries": [{"path": "data/crm/f", "type": "file",'
            b' "mode": "x", "mtime_ns": 1, "size": 0}]}' % ARCHIVE.encode(),
            "manifest is unusable (mode 'x' is not one a manifest records (0 to 0o7777))",
        ),
    ],
    ids=["numbers", "bad-mode"],
)
def test_a_streams_own_manifest_that_does_not_parse_is_named_on_its_target(
    manifest_json: bytes, why: str
) -> None:
    """What a restore compares with the planned manifest: refused as the parser says, said of this copy."""
    tar = (
        blocks(*member("meta.json", META.to_json()))
        + blocks(*member("manifest.json", manifest_json))
        + bytes(1024)
    )
    raw, sidecar = sealed(tar)
    stream = ArchiveStream(io.BytesIO(raw), sidecar, "t")
    assert list(stream.members()) == []
    with pytest.raises(ArchiveCorrupt) as info:
        stream.manifest()
    assert (info.value.detail, info.value.member, info.value.target, info.value.archive) == (
        why,
        "manifest.json",
        "t",
        ARCHIVE,
    )


def test_a_small_member_cut_short_is_named_when_verified_or_restored(tmp_path: Path) -> None:
    """A file read whole (up to 256 KiB): the tar ends inside its data."""
    tar = (
        blocks(*member("meta.json", META.to_json()))
        + folder()
        + header(b"data/crm/f", size=b"%011o\0" % 1000)
        + b"x" * 100
    )
    raw, sidecar = sealed(tar)
    manifest = Manifest(archive=ARCHIVE)
    for entry in (dir_entry("data/crm"), file_entry("data/crm/f", b"x" * 1000, ARCHIVE)):
        manifest.add(entry)
    tree = StagedTree(staging=tmp_path / "staging", manifest=manifest, archive=ARCHIVE)
    tree.prepare()
    with pytest.raises(ArchiveCorrupt) as restored:
        tree.take(ArchiveStream(io.BytesIO(raw), sidecar, "t"))
    with pytest.raises(ArchiveCorrupt) as verified:
        verify_archive(io.BytesIO(raw), sidecar, "t")
    for info in (restored, verified):
        assert (info.value.detail, info.value.member, info.value.target) == (
            "unreadable data (unexpected end of data); truncated or damaged",
            "data/crm/f",
            "t",
        )


def test_a_meta_json_of_exactly_its_limit_is_read() -> None:
    from cellvault.extract.stream import META_MAX

    body = META.to_json()
    padded_meta = body + b" " * (META_MAX - len(body))  # whitespace after the object: valid JSON
    tar = (
        blocks(*member("meta.json", padded_meta))
        + blocks(*member("manifest.json", Manifest(archive=ARCHIVE).to_json()))
        + bytes(1024)
    )
    raw, sidecar = sealed(tar)
    stream = ArchiveStream(io.BytesIO(raw), sidecar, "t")
    assert list(stream.members()) == []
    assert stream.meta == META
    raw, sidecar = sealed(blocks(*member("meta.json", padded_meta + b" ")) + bytes(1024))
    with pytest.raises(ArchiveCorrupt) as info:
        list(ArchiveStream(io.BytesIO(raw), sidecar, "t").members())
    assert info.value.detail == f"meta.json has {META_MAX + 1} bytes; too large"


@pytest.mark.parametrize("spill_at", [None, 2], ids=["in memory", "past the spill point"])
def test_a_member_that_appears_twice_is_refused_naming_it(
    spill_at: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In memory the repeat is seen at once; past the spill point, in the last batch, at the end."""
    if spill_at is not None:
        monkeypatch.setattr("cellvault.spillmap.SPILL_AT", spill_at)
    names = [f"data/crm/{n}" for n in "abcd"]
    # a is in the first batch kept (meta.json, data/crm, a), its repeat in the last.
    middle = folder() + b"".join(blocks(*member(n, DATA)) for n in [*names, "data/crm/a"])
    entries = [dir_entry("data/crm"), *(file_entry(n, DATA, ARCHIVE) for n in names)]
    with pytest.raises(UnsafeArchive) as info:
        verify(middle, entries)
    assert (info.value.detail, info.value.member, info.value.archive) == (
        "member appears twice; refused",
        "data/crm/a",
        ARCHIVE,
    )


def test_a_second_manifest_json_is_refused_as_a_member_after_it() -> None:
    """The archive's manifest is the one read last: a second copy would replace the first."""
    text = Manifest(archive=ARCHIVE).to_json()
    tar = (
        blocks(*member("meta.json", META.to_json()))
        + blocks(*member("manifest.json", text))
        + blocks(*member("manifest.json", text))
        + bytes(1024)
    )
    raw, sidecar = sealed(tar)
    # Names kept (a verify): a repeat; not kept (a restore): a member after it.
    with pytest.raises(UnsafeArchive) as repeat:
        list(ArchiveStream(io.BytesIO(raw), sidecar, "t").members())
    assert (repeat.value.detail, repeat.value.member) == (
        "member appears twice; refused",
        "manifest.json",
    )
    with pytest.raises(ArchiveCorrupt) as after:
        list(ArchiveStream(io.BytesIO(raw), sidecar, "t").members(once=False))
    assert (after.value.detail, after.value.member) == (
        "a member follows manifest.json",
        "manifest.json",
    )


@pytest.mark.parametrize("name", ["meta.json", "manifest.json"])
def test_meta_or_manifest_json_cut_short_is_named(name: str) -> None:
    first = b"" if name == "meta.json" else blocks(*member("meta.json", META.to_json()))
    tar = first + header(name.encode(), size=b"%011o\0" % 5000) + b"{" * 100
    raw, sidecar = sealed(tar)
    with pytest.raises(ArchiveCorrupt) as info:
        list(ArchiveStream(io.BytesIO(raw), sidecar, "t").members())
    assert (info.value.detail, info.value.member) == (
        "unreadable data (unexpected end of data); truncated or damaged",
        name,
    )
