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
    assert (info.value.detail, info.value.member) == ("the sparse map ends early; damaged", NAME)


@pytest.mark.parametrize(("length", "read"), [(1536, True), (1537, False)])
def test_a_sparse_map_of_up_to_its_limit_and_a_block_is_read_and_no_longer(
    monkeypatch: pytest.MonkeyPatch, length: int, read: bool
) -> None:
    """PAX_MAX (here 1 KiB) and the block the map may end in: 1,536 bytes read, 1,537 not."""
    monkeypatch.setattr("cellvault.extract.stream.PAX_MAX", 1024)
    regions = [(2 * i, 1) for i in range(51)]  # 3 + 51 * 30 = 1,533 bytes at 14 digits
    first = b"%0*d\n%014d\n" % (14 + length - 1533, 0, 1)
    text = b"51\n" + first + b"".join(b"%014d\n%014d\n" % r for r in regions[1:])
    assert len(text) == length
    data = padded(text) + b"a" * 51
    middle = sparse_member(data, realsize=102)
    if read:
        assert verify(middle, [dir_entry("data/crm"), file_entry(NAME, b"a\0" * 51, ARCHIVE)]) == 2
        return
    with pytest.raises(ArchiveCorrupt) as info:
        verify(middle, entries())
    assert (info.value.detail, info.value.member) == ("the sparse map ends early; damaged", NAME)


class Trickle:
    """A sparse member's data read back at most *step* bytes at a time, as a stream may give it."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.name = data, step, NAME
        self.stream = self

    def corrupt(self, message: str, member: str | None = None) -> ArchiveCorrupt:
        return ArchiveCorrupt(message, archive=ARCHIVE, member=member, target="t")

    def read(self, size: int = -1) -> bytes:
        size = self.step if size < 0 else min(size, self.step)
        piece, self.data = self.data[:size], self.data[size:]
        return piece


@pytest.mark.parametrize("step", [1, 7, 100, 511, 513, 1 << 20])
def test_a_sparse_member_read_in_short_pieces_gives_the_same_regions(step: int) -> None:
    from cellvault.extract.stream import sparse_regions

    # A map longer than a block (its padding read in pieces too), then its regions.
    regions = [(10 * i, 3) for i in range(100)]
    data = sparse_map(*regions) + b"abc" * 100
    assert len(sparse_map(*regions)) == 1024
    got = list(sparse_regions(Trickle(data, step), 1000))  # type: ignore[arg-type]
    joined: dict[int, bytes] = {}
    for offset, piece in got:
        start = next((o for o in joined if o + len(joined[o]) == offset), offset)
        joined[start] = joined.get(start, b"") + piece
    assert joined == {10 * i: b"abc" for i in range(100)}
    for damaged, message in [
        (data + b"x", "data after the sparse map's regions; damaged"),
        (data[:-1], "sparse data ends early; damaged"),
        (sparse_map(*regions)[:1000], "the sparse map ends early; damaged"),
    ]:
        with pytest.raises(ArchiveCorrupt) as info:
            list(sparse_regions(Trickle(damaged, step), 1000))  # type: ignore[arg-type]
        assert (info.value.detail, info.value.member) == (message, NAME)


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


def test_each_byte_of_a_sparse_file_s_regions_is_counted_once(tmp_path: Path) -> None:
    raw, sidecar, manifest = archive_bytes(sparse_member(GOOD), entries())
    counted: list[int] = []
    tree = StagedTree(
        staging=tmp_path / "staging", manifest=manifest, archive=ARCHIVE, on_bytes=counted.append
    )
    tree.prepare()
    tree.take(ArchiveStream(io.BytesIO(raw), sidecar, "t"))
    tree.finish()
    assert counted == [50, 20]  # the data of the two regions, not the holes
    assert (tree.files, tree.bytes) == (1, len(CONTENT))
