"""Damaged sparse members (PAX sparse 1.0): verify and restore refuse them, naming the member.

A sparse member's data is its map (``<count>\\n`` then an offset and a length a
line each, padded to 512 bytes), then its data regions back to back. Each case
here damages one part; the sidecar matches the bytes, so only the member's
structure can give it away.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cellvault import ArchiveCorrupt
from cellvault.extract import ArchiveStream, StagedTree
from tests.archive_helpers import dir_entry, file_entry, member

from .test_tarread import ARCHIVE, archive_bytes, blocks, header, padded, pax, record, verify

NAME = "data/crm/s"
#: The file: 600 bytes, data at 100..149 and 400..419, zeros elsewhere.
CONTENT = bytes(100) + b"a" * 50 + bytes(250) + b"b" * 20 + bytes(180)


def sparse_member(
    data: bytes, *, realsize: int = len(CONTENT), name: bytes = NAME.encode()
) -> bytes:
    """A sparse member whose stored data (map and regions) is *data*."""
    records = pax(
        record(b"GNU.sparse.major", b"1"),
        record(b"GNU.sparse.minor", b"0"),
        record(b"GNU.sparse.name", name),
        record(b"GNU.sparse.realsize", b"%d" % realsize),
    )
    head = header(b"data/crm/GNUSparseFile.0/s", size=b"%011o\0" % len(data))
    folder = blocks(*member("data/crm", kind=tarfile.DIRTYPE, mode=0o755))
    return folder + records + head + padded(data)


def sparse_map(*regions: tuple[int, int]) -> bytes:
    text = b"%d\n" % len(regions) + b"".join(b"%d\n%d\n" % r for r in regions)
    return padded(text)


GOOD = sparse_map((100, 50), (400, 20)) + b"a" * 50 + b"b" * 20

# Each case: the member's stored data, and the message the member is refused with.
DAMAGED: dict[str, tuple[bytes, str]] = {
    "map not numbers": (b"x\n" + GOOD[2:], "invalid sparse map; damaged"),
    "map cut before its end": (b"2\n100\n50\n", "the sparse map ends early; damaged"),
    "map whole, its padding cut": (b"1\n100\n50\n", "the sparse map ends early; damaged"),
    "a region cut short": (GOOD[:-5], "sparse data ends early; damaged"),
    "data after the regions": (GOOD + b"extra", "data after the sparse map's regions; damaged"),
    "region beyond the file": (
        sparse_map((100, 50), (590, 20)) + b"a" * 70,
        "sparse map regions out of order or beyond the file's size; damaged",
    ),
}


def entries() -> list:  # type: ignore[type-arg]
    return [dir_entry("data/crm"), file_entry(NAME, CONTENT, ARCHIVE)]


def restore(middle: bytes, tmp_path: Path) -> Path:
    raw, sidecar, manifest = archive_bytes(middle, entries())
    staging = tmp_path / "staging"
    tree = StagedTree(staging=staging, manifest=manifest, archive=ARCHIVE)
    tree.prepare()
    tree.take(ArchiveStream(io.BytesIO(raw), sidecar, "t"))
    tree.finish()
    return staging / "crm"


def test_a_sparse_member_is_read_with_its_holes(tmp_path: Path) -> None:
    assert verify(sparse_member(GOOD), entries()) == 2
    restored = restore(sparse_member(GOOD), tmp_path) / "s"
    assert restored.read_bytes() == CONTENT


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_sparse_member_is_refused_naming_it(case: str, tmp_path: Path) -> None:
    data, message = DAMAGED[case]
    middle = sparse_member(data)
    with pytest.raises(ArchiveCorrupt) as verified:
        verify(middle, entries())
    with pytest.raises(ArchiveCorrupt) as restored:
        restore(middle, tmp_path)
    for info in (verified, restored):
        assert info.value.detail == message
        assert (info.value.archive, info.value.member) == (ARCHIVE, NAME)


def test_a_region_larger_than_a_read_is_written_piece_by_piece(tmp_path: Path) -> None:
    region = bytes(range(256)) * 6144  # 1.5 MiB: read in two pieces
    content = bytes(4096) + region + bytes(8192)
    data = sparse_map((4096, len(region))) + region
    manifest_entries = [dir_entry("data/crm"), file_entry(NAME, content, ARCHIVE)]
    middle = sparse_member(data, realsize=len(content))
    assert verify(middle, manifest_entries) == 2
    raw, sidecar, manifest = archive_bytes(middle, manifest_entries)
    tree = StagedTree(staging=tmp_path / "staging", manifest=manifest, archive=ARCHIVE)
    tree.prepare()
    tree.take(ArchiveStream(io.BytesIO(raw), sidecar, "t"))
    tree.finish()
    assert (tmp_path / "staging" / "crm" / "s").read_bytes() == content


def test_a_sparse_map_is_read_up_to_a_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The map is read while it is not whole (512 bytes, 512, then twice what is read),
    # and no further once more than PAX_MAX bytes of it are read (lowered here to 1 KiB).
    monkeypatch.setattr("cellvault.extract.stream.PAX_MAX", 1024)
    # 38 regions of one byte each, 30 bytes a region: a map of 1,143 bytes, read in three.
    regions = [(2 * i, 1) for i in range(38)]
    text = b"38\n" + b"".join(b"%014d\n%014d\n" % r for r in regions)
    assert 1024 < len(text) <= 1536
    content = b"a\0" * 38
    data = padded(text) + b"a" * 38
    entry = file_entry(NAME, content, ARCHIVE)
    assert verify(sparse_member(data, realsize=76), [dir_entry("data/crm"), entry]) == 2
    # 52 regions: 1,563 bytes, a fourth read; refused.
    regions = [(2 * i, 1) for i in range(52)]
    text = b"52\n" + b"".join(b"%014d\n%014d\n" % r for r in regions)
    with pytest.raises(ArchiveCorrupt) as info:
        verify(sparse_member(padded(text) + b"a" * 52, realsize=104), entries())
    assert info.value.detail == "the sparse map ends early; damaged"


def test_a_long_sparse_map_is_parsed_a_few_times_not_once_a_block(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # 20,000 regions: a map of about 165 KiB. Parsed again from its start after each read
    # of 512 bytes, it took minutes of CPU near its 1 MiB limit (a hostile archive's cost
    # before its digest is checked); read twice as much each time, a dozen parses.
    from cellvault.extract import stream

    calls = []
    real = stream.sparse_map_parse

    def counted(head: bytes, realsize: int) -> object:
        calls.append(len(head))
        return real(head, realsize)

    monkeypatch.setattr(stream, "sparse_map_parse", counted)
    regions = [(10 * i, 1) for i in range(20_000)]
    content = b"".join(b"a" + bytes(9) for _ in regions)
    data = sparse_map(*regions) + b"a" * len(regions)
    assert len(data) > 180_000
    entry = file_entry(NAME, content, ARCHIVE)
    middle = sparse_member(data, realsize=len(content))
    assert verify(middle, [dir_entry("data/crm"), entry]) == 2
    assert 2 < len(calls) <= 12, calls
    calls.clear()
    raw, sidecar, manifest = archive_bytes(middle, [dir_entry("data/crm"), entry])
    tree = StagedTree(staging=tmp_path / "staging", manifest=manifest, archive=ARCHIVE)
    tree.prepare()
    tree.take(ArchiveStream(io.BytesIO(raw), sidecar, "t"))
    tree.finish()
    assert (tmp_path / "staging" / "crm" / "s").read_bytes() == content
    assert 2 < len(calls) <= 12, calls


def test_a_one_byte_hole_is_hashed(tmp_path: Path) -> None:
    content = b"a" * 10 + bytes(1)
    data = sparse_map((0, 10)) + b"a" * 10
    manifest_entries = [dir_entry("data/crm"), file_entry(NAME, content, ARCHIVE)]
    assert verify(sparse_member(data, realsize=11), manifest_entries) == 2


def test_a_sparse_member_of_another_size_than_the_manifests_is_refused(tmp_path: Path) -> None:
    longer = len(CONTENT) + 512
    with pytest.raises(ArchiveCorrupt) as info:
        restore(sparse_member(GOOD, realsize=longer), tmp_path)
    assert info.value.detail == f"sparse file of {longer} bytes, the manifest says {len(CONTENT)}"
    assert info.value.member == NAME
