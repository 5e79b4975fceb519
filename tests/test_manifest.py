"""The manifest: every path of a cell at the instant of an archive."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import marshal
import os
import signal
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cellvault import ArchiveCorrupt, Entry, Manifest, manifest_text
from cellvault.manifest import ENTRY_TYPES, InOrder, ManifestWriter, Row, RowsInOrder
from cellvault.trust import MAX_COUNT, MAX_MODE

from .archive_helpers import archive_files, make_vault, read_members
from .helpers import children

ARCHIVE = "cell_crm_20250101_020000"

#: Every rule of reading a manifest holds wherever its entries are parsed.
pytestmark = pytest.mark.usefixtures("manifest_parser")


def sample() -> Manifest:
    m = Manifest(archive=ARCHIVE)
    m.add(Entry("data/crm", "dir", 0o755, 1_000_000_001))
    m.add(
        Entry(
            "data/crm/a.txt",
            "file",
            0o600,
            1_700_000_000_123456789,
            size=3,
            sha256=hashlib.sha256(b"abc").hexdigest(),
            uid=1000,
            gid=1000,
            inode=42,
            dev=7,
            ctime_ns=5,
            archive=ARCHIVE,
        )
    )
    m.add(
        Entry(
            "data/crm/old.bin",
            "file",
            0o644,
            1,
            size=10,
            sha256="0" * 64,
            archive="cell_crm_20241231_020000",
        )
    )
    m.add(Entry("data/crm/link", "symlink", 0o777, 2, target="a.txt"))
    return m


def test_manifest_json_round_trip() -> None:
    m = sample()
    back = Manifest.from_json(m.to_json())
    assert back.archive == ARCHIVE
    assert back.entries == m.entries
    assert list(back.entries) == list(m.entries)  # order kept


def test_manifest_json_shape() -> None:
    body = json.loads(sample().to_json())
    assert body["format"] == 1
    assert body["archive"] == ARCHIVE
    by_path = {e["path"]: e for e in body["entries"]}
    f = by_path["data/crm/a.txt"]
    assert f["type"] == "file"
    assert (f["size"], f["mode"], f["mtime_ns"]) == (3, 0o600, 1_700_000_000_123456789)
    assert f["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert f["archive"] == ARCHIVE
    assert by_path["data/crm/link"]["target"] == "a.txt"
    assert "sha256" not in by_path["data/crm"]
    assert "target" not in by_path["data/crm/a.txt"]


def test_manifest_queries() -> None:
    m = sample()
    assert len(m) == 4
    assert "data/crm/a.txt" in m
    assert "data/crm/missing" not in m
    assert m.get("data/crm/link") is not None
    assert m.get("nope") is None
    assert [e.path for e in m.files()] == ["data/crm/a.txt", "data/crm/old.bin"]
    assert m.holders() == {ARCHIVE, "cell_crm_20241231_020000"}
    assert m.total_size == 13
    # Adding a path again replaces it.
    m.add(Entry("data/crm/a.txt", "file", 0o600, 1, size=1, sha256="1" * 64, archive=ARCHIVE))
    assert len(m) == 4
    assert m.total_size == 11


def test_entry_type_is_validated() -> None:
    with pytest.raises(ValueError):
        Entry("data/crm/x", "socket", 0o644, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'"text"',
        b'{"entries": []}',
        b'{"archive": "x"}',
        b'{"archive": "x", "entries": [{"path": "data/crm/a"}]}',
        b'{"archive": "x", "entries": [{"path": "a", "type": "socket", "mode": 1, "mtime_ns": 1}]}',
        b'{"archive": "x", "entries": [{"path": 5, "type": "file", "mode": 1, "mtime_ns": 1}]}',
        b'{"archive": "x", "entries": [{"path": "a", "type": "file", "mode": "r", "mtime_ns": 1}]}',
        b'{"archive": "x", "entries": ["data/crm/a"]}',
        b'{"archive": "x", "entries": [{"path": "a", "type": "symlink", "mode": 1, "mtime_ns": 1,'
        b' "target": ["x"]}]}',
    ],
)
def test_unusable_manifest_is_archive_corrupt(raw: bytes) -> None:
    with pytest.raises(ArchiveCorrupt) as info:
        Manifest.from_json(raw, archive=ARCHIVE)
    assert info.value.archive == ARCHIVE
    assert info.value.member == "manifest.json"
    assert "manifest is unusable" in str(info.value)


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", ".."))


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    path = "data/crm/" + "/".join(draw(st.lists(names, min_size=1, max_size=4)))
    kind = draw(st.sampled_from(ENTRY_TYPES))
    common = dict(
        mode=draw(st.integers(0, 0o7777)),
        mtime_ns=draw(st.integers(-(2**62), 2**62)),
        uid=draw(st.integers(0, 2**32 - 1)),
        gid=draw(st.integers(0, 2**32 - 1)),
        xattrs=tuple(sorted(draw(st.dictionaries(names, names, max_size=2)).items())),
    )
    if kind == "file":
        return Entry(
            path,
            "file",
            size=draw(st.integers(0, 2**50)),
            sha256=draw(st.binary(min_size=32, max_size=32)).hex(),
            inode=draw(st.integers(0, 2**63)),
            dev=draw(st.integers(0, 2**63)),
            ctime_ns=draw(st.integers(0, 2**62)),
            archive=ARCHIVE,
            **common,  # type: ignore[arg-type]
        )
    if kind in ("symlink", "hardlink"):
        return Entry(path, kind, target=draw(names), **common)  # type: ignore[arg-type]
    if kind in ("chardev", "blockdev"):
        return Entry(path, kind, rdev=draw(st.integers(0, 2**32)), **common)  # type: ignore[arg-type]
    return Entry(path, kind, **common)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(st.lists(entries(), max_size=20))
def test_manifest_round_trip_property(items: list[Entry]) -> None:
    m = Manifest(archive=ARCHIVE)
    for item in items:
        m.add(item)
    raw = m.to_json()
    raw.decode("ascii")  # JSON escapes every non-ASCII name
    assert Manifest.from_json(raw).entries == m.entries


def dumps_whole(m: Manifest) -> bytes:
    """The manifest as format v1 was first written: one json.dumps of the whole body."""
    body = {"format": 1, "archive": m.archive, "entries": [e.to_dict() for e in m]}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


@settings(max_examples=60, deadline=None)
@given(st.lists(entries(), max_size=20), st.sampled_from([ARCHIVE, 'odd "name" é']))
def test_manifest_json_is_byte_for_byte_json_dumps(items: list[Entry], archive: str) -> None:
    # Written entry by entry now; the bytes must not change (manifest copies are
    # compared with the archive's, and older readers parse them).
    m = Manifest(archive=archive)
    for item in items:
        m.add(item)
    assert m.to_json() == dumps_whole(m)


def test_manifest_json_odd_values_match_json_dumps() -> None:
    m = sample()
    m.add(Entry("data/crm/" + os.fsdecode(b"\xff\xfe") + '"\\\n\u2028数', "dir", 0, -5))
    m.add(Entry("data/crm/nolink", "symlink", 0o777, 0, target=None))
    m.add(Entry("data/crm/unhashed", "file", 0o644, 0, sha256=None, archive=None))
    assert m.to_json() == dumps_whole(m)
    assert Manifest(archive=ARCHIVE).to_json() == dumps_whole(Manifest(archive=ARCHIVE))


def test_write_json_in_chunks_is_to_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cellvault.manifest

    monkeypatch.setattr(cellvault.manifest, "JSON_CHUNK", 3)
    m = Manifest(archive=ARCHIVE)
    for i in range(10):  # three full chunks and a part
        m.add(Entry(f"data/crm/f{i}", "file", 0o644, i, size=i, sha256="a" * 64, archive=ARCHIVE))
    with open(tmp_path / "m.json", "w+b") as f:
        size = m.write_json(f)
        f.seek(0)
        raw = f.read()
    assert size == len(raw)
    assert raw == dumps_whole(m)
    assert Manifest.from_json(raw).entries == m.entries


@settings(max_examples=40, deadline=None)
@given(st.lists(entries(), max_size=20, unique_by=lambda e: e.path), st.integers(1, 4))
def test_manifest_writer_writes_what_write_json_writes(items: list[Entry], chunk: int) -> None:
    # A backup writes its manifest as the walk goes (never held): the same bytes,
    # in chunks of any size, with the count and the holding archives kept.
    import io

    import cellvault.manifest

    m = Manifest(archive=ARCHIVE)
    out = io.BytesIO()
    saved = cellvault.manifest.JSON_CHUNK
    cellvault.manifest.JSON_CHUNK = chunk
    try:
        writer = ManifestWriter(ARCHIVE, out)
        for item in items:
            m.add(item)
            writer.add(item)
        size = writer.close()
    finally:
        cellvault.manifest.JSON_CHUNK = saved
    assert out.getvalue() == m.to_json()
    assert size == len(out.getvalue())
    assert len(writer) == len(m)
    assert writer.holders() == m.holders()


def test_a_manifest_naming_its_holders_has_no_entries() -> None:
    named = Manifest.naming(ARCHIVE, {ARCHIVE, "cell_crm_20241231_020000"})
    assert named.holders() == {ARCHIVE, "cell_crm_20241231_020000"}
    assert len(named) == 0
    assert named.archive == ARCHIVE


def test_manifest_of_a_backup_describes_every_path(tmp_path: Path) -> None:
    src = tmp_path / "crm"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (src / "sub" / "deep" / "empty").write_bytes(b"")
    (src / "sub" / "deep" / "empty").chmod(0o600)
    (src / "link").symlink_to("sub/b.bin")
    os.utime(src / "a.txt", ns=(1_600_000_000_123456789, 1_600_000_000_123456789))
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert report.ok, report.cells[0].error

    (data,) = archive_files(tmp_path / "backup")
    members = read_members(data)
    body = json.loads(members[-1][1] or b"")
    by_path = {e["path"]: e for e in body["entries"]}
    assert body["archive"] == report.cells[0].archive
    assert set(by_path) == {
        "data/crm",
        "data/crm/a.txt",
        "data/crm/link",
        "data/crm/sub",
        "data/crm/sub/b.bin",
        "data/crm/sub/deep",
        "data/crm/sub/deep/empty",
    }
    for rel in ("a.txt", "sub/b.bin", "sub/deep/empty"):
        entry = by_path[f"data/crm/{rel}"]
        st_ = (src / rel).stat()
        assert entry["type"] == "file"
        assert entry["size"] == st_.st_size
        assert entry["mtime_ns"] == st_.st_mtime_ns
        assert entry["mode"] == st_.st_mode & 0o7777
        assert entry["sha256"] == hashlib.sha256((src / rel).read_bytes()).hexdigest()
        assert entry["archive"] == report.cells[0].archive
    assert by_path["data/crm/a.txt"]["mtime_ns"] == 1_600_000_000_123456789
    assert by_path["data/crm/sub/deep/empty"]["mode"] == 0o600
    assert by_path["data/crm/link"] == {
        "path": "data/crm/link",
        "type": "symlink",
        "mode": 0o777,
        "mtime_ns": (src / "link").lstat().st_mtime_ns,
        "uid": (src / "link").lstat().st_uid,
        "gid": (src / "link").lstat().st_gid,
        "target": "sub/b.bin",
    }
    assert by_path["data/crm/sub"]["type"] == "dir"

    # The copy stored beside the archive is the same manifest.
    copy = data.parent / f"{report.cells[0].archive}.manifest.json.zst"
    raw = zstandard.ZstdDecompressor().stream_reader(copy.read_bytes()).read()
    assert Manifest.from_json(raw).entries == Manifest.from_json(members[-1][1] or b"").entries
    # And the vault's target reads it back.
    sidecar = vault.targets[0].sidecar(vault.targets[0].archive_ids("crm")[-1])
    assert vault.targets[0].manifest(sidecar).entries == Manifest.from_json(raw).entries


@pytest.mark.parametrize("spill_at", [100_000, 3])
def test_brief_and_has_under_read_spilled_and_held_manifests_alike(
    monkeypatch: pytest.MonkeyPatch, spill_at: int
) -> None:
    monkeypatch.setattr("cellvault.spillmap.SPILL_AT", spill_at)
    manifest = Manifest(archive="cell_crm_20250101_000000")
    manifest.add(Entry("data/crm", "dir", 0o755, 1))
    for i in range(5):
        manifest.add(
            Entry(f"data/crm/f{i}", "file", 0o644, 1, size=i, sha256="0" * 64, archive="a1")
        )
    manifest.add(Entry("data/crm/l", "symlink", 0o777, 1, target="/etc/hostname"))
    assert manifest.entries.spilled is (spill_at == 3)
    assert list(manifest.brief()) == [
        ("data/crm", "dir", None),
        *((f"data/crm/f{i}", "file", "a1") for i in range(5)),
        ("data/crm/l", "symlink", None),
    ]
    assert manifest.has_under("data") is True
    assert manifest.has_under("dumps") is False
    manifest.add(Entry("dumps/pg/db.sql", "file", 0o600, 1, size=1, sha256="1" * 64, archive="a1"))
    assert manifest.has_under("dumps") is True
    assert manifest.has_under("dump") is False


# -- each kind of entry, selections, comparisons, lookups in order -----------------------------


def every_kind() -> list[Entry]:
    """One entry of each type, with the fields each type records (and some xattrs)."""
    return [
        Entry("data/crm", "dir", 0o755, 1, xattrs=(("user.a", "MQ=="), ("user.b", ""))),
        Entry("data/crm/f", "file", 0o644, 2, size=5, sha256="a" * 64, archive=ARCHIVE, inode=9),
        Entry("data/crm/h", "hardlink", 0o644, 3, target="data/crm/f"),
        Entry("data/crm/s", "symlink", 0o777, 4, target="/etc/hostname"),
        Entry("data/crm/p", "fifo", 0o600, 5),
        Entry("data/crm/c", "chardev", 0o660, 6, rdev=os.makedev(1, 3)),
        Entry("data/crm/b", "blockdev", 0o660, 7, rdev=os.makedev(8, 1)),
    ]


def test_each_kind_of_entry_records_its_own_fields() -> None:
    by_path = {e.path: e.to_dict() for e in every_kind()}
    common = {"mode", "mtime_ns", "uid", "gid", "path", "type"}
    assert set(by_path["data/crm"]) == common | {"xattrs"}
    assert by_path["data/crm"]["xattrs"] == {"user.a": "MQ==", "user.b": ""}
    assert set(by_path["data/crm/f"]) == common | {
        "size", "sha256", "archive", "inode", "dev", "ctime_ns"
    }  # fmt: skip
    assert by_path["data/crm/h"]["target"] == "data/crm/f"
    assert set(by_path["data/crm/h"]) == set(by_path["data/crm/s"]) == common | {"target"}
    assert set(by_path["data/crm/p"]) == common
    assert by_path["data/crm/c"]["rdev"] == os.makedev(1, 3)
    assert by_path["data/crm/b"]["rdev"] == os.makedev(8, 1)
    for entry in every_kind():
        # The text written directly is json.dumps of the dict, and reads back as the entry.
        assert entry.to_json() == json.dumps(entry.to_dict(), separators=(",", ":"))
        assert Entry.from_dict(json.loads(entry.to_json())) == entry
    m = Manifest(archive=ARCHIVE)
    for entry in every_kind():
        m.add(entry)
    assert m.to_json() == dumps_whole(m)
    assert list(Manifest.from_json(m.to_json(), archive=ARCHIVE)) == every_kind()


@pytest.mark.parametrize("key", ["path", "sha256", "target", "archive"])
def test_an_entry_string_of_another_type_is_named_in_the_error(key: str) -> None:
    entry = {"path": "data/crm/f", "type": "file", "mode": 0o644, "mtime_ns": 1, key: 7}
    raw = json.dumps({"format": 1, "archive": ARCHIVE, "entries": [entry]}).encode()
    with pytest.raises(ArchiveCorrupt) as info:
        Manifest.from_json(raw, archive=ARCHIVE)
    assert info.value.detail == (
        f"manifest is unusable (TypeError: {key} of an entry is a number, not a string)"
    )


def test_a_manifest_read_without_its_id_says_so_when_unusable() -> None:
    with pytest.raises(ArchiveCorrupt) as info:
        Manifest.from_json(b"[]")
    assert info.value.archive == "?"
    with pytest.raises(ArchiveCorrupt) as info:
        Manifest.read(io.BytesIO(b"[]"))
    assert info.value.archive == "?"


def test_a_holder_newer_than_the_manifest_or_of_another_cell_is_refused() -> None:
    for holder in ("cell_crm_20250102_020000", "cell_web_20241231_020000", "nonsense"):
        m = Manifest(archive=ARCHIVE)
        m.add(Entry("data/crm/f", "file", 0o644, 1, sha256="a" * 64, archive=holder))
        with pytest.raises(ArchiveCorrupt) as info:
            Manifest.from_json(m.to_json(), archive=ARCHIVE)
        assert info.value.archive == ARCHIVE
        assert info.value.member == "manifest.json"
        assert info.value.detail.startswith(f"manifest is unusable (names archive {holder!r}")
        # Read without its id (a tool, a test), nothing is compared.
        assert Manifest.from_json(m.to_json()).holders() == {holder}


@pytest.mark.parametrize("spill_at", [100_000, 3])
def test_select_and_get_in_held_and_spilled_manifests(
    monkeypatch: pytest.MonkeyPatch, spill_at: int
) -> None:
    monkeypatch.setattr("cellvault.spillmap.SPILL_AT", spill_at)
    m = Manifest(archive=ARCHIVE)
    for entry in every_kind():
        m.add(entry)
    read = Manifest.from_json(m.to_json(), archive=ARCHIVE)
    for manifest in (m, read):
        assert manifest.entries.spilled is (spill_at == 3)
        assert list(manifest.select("file")) == [every_kind()[1]]
        assert list(manifest.files()) == [every_kind()[1]]
        assert [e.path for e in manifest.select("symlink", "fifo", "dir")] == [
            "data/crm",
            "data/crm/s",
            "data/crm/p",
        ]
        assert list(manifest.select()) == []
        assert list(manifest.select("chardev", "blockdev")) == every_kind()[5:]
        assert manifest.get("data/crm/c") == every_kind()[5]
        assert manifest.get("data/crm/nothing") is None
        assert manifest.holders() == {ARCHIVE}
        assert manifest.total_size == 5


def test_same_as_compares_the_text_read_or_else_the_entries() -> None:
    m = sample()
    raw = m.to_json()
    a, b = Manifest.from_json(raw), Manifest.from_json(raw)
    assert a.digest == b.digest == hashlib.sha256(raw).hexdigest()
    assert a.same_as(b) and a.same_as(m) and m.same_as(a) and m.same_as(sample())
    other = sample()
    other.add(Entry("data/crm/new", "dir", 0o755, 1))
    assert not m.same_as(other) and not other.same_as(m)
    assert not a.same_as(other) and not other.same_as(a)
    c = Manifest.from_json(other.to_json())
    assert c.digest != a.digest
    assert not a.same_as(c) and not c.same_as(a)
    # The same entries written with other spacing: another text, the same entries.
    spaced = Manifest.from_json(json.dumps(json.loads(raw), indent=1).encode())
    assert spaced.digest != a.digest and spaced.same_as(a)
    # Read from the same text, it is the same manifest without comparing its entries.
    a.add(Entry("data/crm/added", "dir", 0o755, 1))
    assert a.same_as(b)
    assert not b.same_as(sample().__class__(archive=ARCHIVE))


class _Counted(Manifest):
    """A manifest that records the paths looked up in it (not read on in order)."""

    looked_up: list[str]

    def get(self, path: str) -> Entry | None:
        self.looked_up.append(path)
        return super().get(path)


def _as(kind: type, entry: Entry | None) -> object:
    """What a lookup of *kind* (InOrder, RowsInOrder) gives for *entry*."""
    if entry is None or kind is InOrder:
        return entry
    return Row(*attrs.astuple(entry, recurse=False))


@pytest.mark.parametrize("kind", [InOrder, RowsInOrder])
def test_in_order_reads_on_and_looks_up_only_what_it_passed_or_evicted(
    monkeypatch: pytest.MonkeyPatch, kind: type[InOrder] | type[RowsInOrder]
) -> None:
    monkeypatch.setattr(kind, "AHEAD", 3)
    m = _Counted(archive=ARCHIVE)
    m.looked_up = []
    files = [
        Entry(f"data/crm/f{i}", "file", 0o644, i, sha256="a" * 64, archive=ARCHIVE)
        for i in range(10)
    ]
    for entry in files[:5]:
        m.add(entry)
    m.add(Entry("data/crm/d", "dir", 0o755, 1))
    for entry in files[5:]:
        m.add(entry)
    lookup = kind(m)
    steps = [
        ("f2", []),  # read on: f0 and f1 passed over
        ("f0", []),  # passed over: kept
        ("f0", ["f0"]),  # taken once; reading on three more (f3 to f5) evicts f1
        ("f4", ["f0"]),
        ("f1", ["f0", "f1"]),  # evicted; f6 to f8 read on
        ("f9", ["f0", "f1"]),
        ("f7", ["f0", "f1"]),
        ("f3", ["f0", "f1", "f3"]),  # evicted, and the files are all read
        ("d", ["f0", "f1", "f3", "d"]),  # not a file: looked up
        ("nothing", ["f0", "f1", "f3", "d", "nothing"]),
    ]
    for name, looked_up in steps:
        want = _as(kind, m.entries.get(f"data/crm/{name}"))
        assert lookup.get(f"data/crm/{name}") == want, name
        assert m.looked_up == [f"data/crm/{n}" for n in looked_up], name


@pytest.mark.parametrize("kind", [InOrder, RowsInOrder])
def test_in_order_reads_no_further_than_ahead(
    monkeypatch: pytest.MonkeyPatch, kind: type[InOrder] | type[RowsInOrder]
) -> None:
    monkeypatch.setattr(kind, "AHEAD", 2)
    m = _Counted(archive=ARCHIVE)
    m.looked_up = []
    for i in range(6):
        m.add(Entry(f"data/crm/f{i}", "file", 0o644, i, sha256="a" * 64, archive=ARCHIVE))
    lookup = kind(m)

    def want(i: int) -> object:
        return _as(kind, m.entries[f"data/crm/f{i}"])

    assert lookup.get("data/crm/f2") == want(2)  # two read on: not found
    assert m.looked_up == ["data/crm/f2"]
    assert lookup.get("data/crm/f3") == want(3)  # f2 read on (f0 evicted), f3
    assert m.looked_up == ["data/crm/f2"]
    assert lookup.get("data/crm/f1") == want(1)
    assert m.looked_up == ["data/crm/f2"]
    assert lookup.get("data/crm/f0") == want(0)  # evicted when f2 was read
    assert m.looked_up == ["data/crm/f2", "data/crm/f0"]


class _Parts:
    """A sink that keeps each write apart."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        return len(data)


@pytest.mark.parametrize("count", [0, 2, 3, 6, 7])
def test_write_json_writes_a_chunk_of_entries_at_a_time(
    monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    import cellvault.manifest

    monkeypatch.setattr(cellvault.manifest, "JSON_CHUNK", 3)
    m = Manifest(archive=ARCHIVE)
    for i in range(count):
        m.add(Entry(f"data/crm/f{i}", "file", 0o644, i, sha256="a" * 64, archive=ARCHIVE))
    out = _Parts()
    assert m.write_json(out) == len(b"".join(out.parts))
    assert b"".join(out.parts) == dumps_whole(m)
    # The head, full chunks of three entries, what is left, the end.
    sizes = [part.count(b'{"path"') for part in out.parts[1:-1]]
    assert sizes == [3] * (count // 3) + ([count % 3] if count % 3 else [])
    assert out.parts[0] == b'{"format":1,"archive":"%s","entries":[' % ARCHIVE.encode()
    assert out.parts[-1] == b"]}\n"


def streamed(raw: bytes, monkeypatch: pytest.MonkeyPatch, chunk: int) -> Manifest:

    monkeypatch.setattr(manifest_text, "READ_CHUNK", chunk)
    return Manifest.read(io.BytesIO(raw), archive=ARCHIVE)


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
def test_a_manifest_reads_alike_in_chunks_of_any_size(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    m = sample()
    for i in range(200):  # past the 4 KiB read before the head is parsed
        m.add(Entry(f"data/crm/x{i:03d}", "dir", 0o755, i))
    raw = m.to_json()
    assert len(raw) > 3 * 4096
    read = streamed(raw, monkeypatch, chunk)
    assert read.archive == ARCHIVE
    assert list(read) == list(m)
    assert read.digest == hashlib.sha256(raw).hexdigest()
    # Written by hand: spaces anywhere, non-ASCII bytes (split across chunks), an
    # archive name with escapes, an empty list.
    body = json.loads(raw)
    body["entries"][0]["path"] = "data/crm/é€"
    spaced = json.dumps(body, indent=3, ensure_ascii=False).encode() + b"  \n\n"
    read = streamed(spaced, monkeypatch, chunk)
    assert read.get("data/crm/é€") is not None and len(read) == len(m)
    assert read.digest == hashlib.sha256(spaced).hexdigest()
    odd = b' { "format" : 1 , "archive" : "a\\"b\\u00e9" , "entries" : [ ] } '
    read = streamed(odd, monkeypatch, chunk)
    assert (read.archive, len(read)) == ('a"b\u00e9', 0)
    assert read.digest == hashlib.sha256(odd).hexdigest()
    # Laid out otherwise (keys in another order): read whole, the same manifest.
    other = json.dumps({"entries": body["entries"], "archive": ARCHIVE, "format": 1}).encode()
    read = streamed(other, monkeypatch, chunk)
    assert read.archive == ARCHIVE and len(read) == len(m)
    assert read.digest == hashlib.sha256(other).hexdigest()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b'{"format":1,"archive":"a","entries":[', "the manifest ends inside its list of entries"),
        (
            b'{"format":1,"archive":"a","entries":[  ',
            "the manifest ends inside its list of entries",
        ),
        (
            b'{"format":1,"archive":"a","entries":[{}',
            "the manifest ends inside its list of entries",
        ),
        (
            b'{"format":1,"archive":"a","entries":[{} {}]}',
            "expected ',' or ']' after an entry, found '{'",
        ),
        (
            b'{"format":1,"archive":"a","entries":[{};{}]}',
            "expected ',' or ']' after an entry, found ';'",
        ),
        (b'{"format":1,"archive":"a","entries":[]', "the manifest does not end after its entries"),
        (
            b'{"format":1,"archive":"a","entries":[]}}',
            "the manifest does not end after its entries",
        ),
        (
            b'{"format":1,"archive":"a","entries":[] ]}',
            "the manifest does not end after its entries",
        ),
        (
            b'{"format":1,"archive":"a","entries":[{}]}}',
            "the manifest does not end after its entries",
        ),
        (
            b'{"format":1,"archive":"a","entries":[{}] ]}',
            "the manifest does not end after its entries",
        ),
    ],
)
def test_a_streamed_manifest_that_does_not_end_as_one_says_why(
    monkeypatch: pytest.MonkeyPatch, text: bytes, why: str
) -> None:
    for chunk in (1, 1 << 20):
        with pytest.raises(ArchiveCorrupt) as info:
            streamed(text.replace(b"{}", b'{"path":"p","type":"dir","mode":1,"mtime_ns":1}'),
                     monkeypatch, chunk)  # fmt: skip
        assert info.value.detail == f"manifest is unusable (ValueError: {why})"
        assert info.value.member == "manifest.json"


@pytest.mark.parametrize(
    "text",
    [
        b'{"format":1,"archive":"a","entries":[,]}',
        b'{"format":1,"archive":"a","entries":[{"path":"p","type":"dir","mode":1,"mtime_ns":1},]}',
        b'{"format":1,"archive":"a","entries":[{"path":"p","type":"dir","mode":1,"mtime_ns":1},',
    ],
)
def test_a_streamed_manifest_with_a_missing_entry_is_refused(
    monkeypatch: pytest.MonkeyPatch, text: bytes
) -> None:
    for chunk in (1, 1 << 20):
        with pytest.raises(ArchiveCorrupt, match="manifest is unusable"):
            streamed(text, monkeypatch, chunk)


def test_entry_fields_left_out_take_their_defaults() -> None:
    entry = Entry.from_dict({"path": "data/crm/f", "type": "file", "mode": 0o644, "mtime_ns": 5})
    assert entry == Entry("data/crm/f", "file", 0o644, 5)
    assert (entry.size, entry.sha256, entry.target, entry.archive) == (0, None, None, None)
    assert (entry.uid, entry.gid, entry.inode, entry.dev, entry.ctime_ns, entry.rdev) == (0,) * 6
    assert entry.xattrs == ()
    full = {
        "path": "data/crm/f",
        "type": "file",
        "mode": 0o644,
        "mtime_ns": "5",  # whole numbers as JSON may spell them
        "size": 3.0,
        "uid": 1,
        "gid": 2,
        "inode": 3,
        "dev": 4,
        "ctime_ns": 6,
        "rdev": 7,
        "sha256": "a" * 64,
        "archive": ARCHIVE,
        "target": "t",
        "xattrs": {"user.b": "Yg==", "user.a": ""},
    }
    assert Entry.from_dict(full) == Entry(
        "data/crm/f", "file", 0o644, 5, size=3, sha256="a" * 64, target="t", uid=1, gid=2,
        inode=3, dev=4, ctime_ns=6, archive=ARCHIVE, rdev=7,
        xattrs=(("user.a", ""), ("user.b", "Yg==")),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"size": -1}, "size -1 is not a whole number >= 0"),
        ({"mode": 0o10000}, "mode 4096 is not one a manifest records (0 to 0o7777)"),
        ({"mode": True}, "mode True is not one a manifest records"),
        ({"xattrs": ["user.a"]}, "TypeError: xattrs of an entry is not an object of strings"),
        ({"xattrs": {"user.a": 1}}, "TypeError: xattrs of an entry is not an object of strings"),
        ({"xattrs": {"user.a": "x", "user.b": None}}, "xattrs of an entry is not an object"),
        ({"type": "socket"}, "'type' must be in"),
        ({"mtime_ns": None}, "TypeError: int() argument"),
    ],
)
def test_an_unusable_entry_says_why(change: dict[str, object], why: str) -> None:
    entry = {"path": "data/crm/f", "type": "file", "mode": 0o644, "mtime_ns": 1, **change}
    raw = json.dumps({"format": 1, "archive": ARCHIVE, "entries": [entry]}).encode()
    with pytest.raises(ArchiveCorrupt) as info:
        Manifest.from_json(raw, archive=ARCHIVE)
    assert info.value.detail.startswith("manifest is unusable (")
    assert why in info.value.detail
    assert (info.value.archive, info.value.member) == (ARCHIVE, "manifest.json")


def test_the_holders_of_a_read_manifest_are_shared_and_checked() -> None:
    older = "cell_crm_20241231_020000"
    m = Manifest(archive=ARCHIVE)
    for i in range(3):
        m.add(Entry(f"data/crm/f{i}", "file", 0o644, 1, sha256="a" * 64, archive=older))
    m.add(Entry("data/crm/g", "file", 0o644, 1, sha256="a" * 64, archive=ARCHIVE))
    m.add(Entry("data/crm/d", "dir", 0o755, 1))
    read = Manifest.from_json(m.to_json(), archive=ARCHIVE)
    assert read.holders() == {older, ARCHIVE}
    first, *others = (e.archive for e in read.files() if e.archive == older)
    assert all(other is first for other in others)  # one string for all
    # A manifest whose entries were set directly goes through them once.
    built = Manifest(archive=ARCHIVE, entries={e.path: e for e in m})
    assert built.holders() == {older, ARCHIVE}
    assert Manifest(archive=ARCHIVE).holders() == set()
    held = built.holders()
    held.add("x")
    assert built.holders() == {older, ARCHIVE}  # a copy


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"sha256": "a" * 64}, "the file 'data/crm/h' has no archive holding it"),
        ({"sha256": "a" * 64, "archive": ""}, "the file 'data/crm/h' has no archive holding it"),
        ({"archive": ARCHIVE}, "the file 'data/crm/h' has no sha256"),
    ],
)
def test_a_file_entry_without_its_archive_or_sha256_is_refused_when_read(
    fields: dict[str, str], detail: str
) -> None:
    """Else a restore would look for the file in no archive, and say so only at its end."""
    m = Manifest(archive=ARCHIVE)
    m.add(Entry("data/crm/g", "file", 0o644, 1, sha256="a" * 64, archive=ARCHIVE))
    m.add(Entry("data/crm/h", "file", 0o644, 1, **fields))  # type: ignore[arg-type]
    with pytest.raises(ArchiveCorrupt) as info:
        Manifest.from_json(m.to_json(), archive=ARCHIVE)
    assert info.value.detail == f"manifest is unusable ({detail})"


@pytest.mark.parametrize("count", [2, 3, 7])
def test_a_manifest_writer_writes_a_chunk_of_entries_at_a_time(
    monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    import cellvault.manifest

    monkeypatch.setattr(cellvault.manifest, "JSON_CHUNK", 3)
    out = _Parts()
    writer = ManifestWriter(ARCHIVE, out)  # type: ignore[arg-type]
    assert writer.archive == ARCHIVE
    m = Manifest(archive=ARCHIVE)
    for i in range(count):
        entry = Entry(f"data/crm/f{i}", "file", 0o644, i, sha256="a" * 64, archive=ARCHIVE)
        writer.add(entry)
        m.add(entry)
    # Entries that are not files name no holder, whatever their archive field says.
    for entry in (
        Entry("data/crm/h", "hardlink", 0o644, 1, target="data/crm/f0", archive="other"),
        Entry("data/crm/d", "dir", 0o755, 1, archive="other"),
    ):
        writer.add(entry)
        m.add(entry)
    assert writer.holders() == m.holders() == {ARCHIVE}
    assert writer.close() == len(b"".join(out.parts))
    assert b"".join(out.parts) == m.to_json()
    sizes = [part.count(b'{"path"') for part in out.parts[1:-1]]
    total = count + 2
    assert sizes == [3] * (total // 3) + ([total % 3] if total % 3 else [])


def test_an_entry_that_is_not_an_object_says_what_it_is() -> None:
    raw = json.dumps({"format": 1, "archive": ARCHIVE, "entries": [["data/crm/a"]]}).encode()
    with pytest.raises(ArchiveCorrupt) as info:
        Manifest.from_json(raw, archive=ARCHIVE)
    assert (
        info.value.detail == "manifest is unusable (TypeError: an entry is a list, not an object)"
    )


def test_a_manifest_cut_inside_a_character_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = sample().to_json()
    for chunk in (1, 1 << 20):
        with pytest.raises(ArchiveCorrupt, match="UnicodeDecodeError"):
            streamed(raw + b"\xc3", monkeypatch, chunk)  # the first byte of a two-byte character


@pytest.mark.parametrize("spill_at", [100_000, 1])
def test_entries_past_the_spill_read_as_from_dict_reads_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, spill_at: int
) -> None:
    """Past the spill, entries are checked and stored without an Entry: the same result."""
    caplog.set_level(logging.INFO, logger="cellvault")
    monkeypatch.setattr("cellvault.spillmap.SPILL_AT", spill_at)
    monkeypatch.setattr("cellvault.manifest.JSON_CHUNK", 3)  # stored three at a time
    older = "cell_crm_20241231_020000"
    base = {"type": "file", "mode": 0o644, "mtime_ns": 1, "sha256": "a" * 64, "size": 2}
    mine = {**base, "archive": ARCHIVE}
    items: list[dict[str, object]] = [
        {"path": "data/crm", "type": "dir", "mode": 0o755, "mtime_ns": 1},
        {"path": "data/crm/a", **base, "archive": older},
        {"path": "data/crm/b", **mine, "mtime_ns": "5", "size": 3.0, "uid": True},
        {"path": "data/crm/c", **mine, "xattrs": {"user.b": "Yg==", "user.a": ""}},
        {"path": "data/crm/l", "type": "symlink", "mode": 0o777, "mtime_ns": 1, "target": "a"},
        {"path": "data/crm/n", "type": "chardev", "mode": 0o600, "mtime_ns": 1, "rdev": 7},
        {"path": "data/crm/a", **base, "archive": ARCHIVE, "extra": 1},  # a repeat: the last wins
        {"path": "data/crm/d", **base, "archive": older, "uid": 1, "gid": 2, "inode": 3},
    ]
    raw = json.dumps({"format": 1, "archive": ARCHIVE, "entries": items}).encode()
    read = Manifest.from_json(raw, archive=ARCHIVE)
    assert read.entries.spilled is (spill_at == 1)
    expected = {e.path: e for e in map(Entry.from_dict, items)}
    assert list(read) == list(expected.values())
    assert [read.get(p) for p in expected] == list(expected.values())
    assert read.holders() == {older, ARCHIVE}
    assert dict(read.file_sizes()) == {p: e.size for p, e in expected.items() if e.type == "file"}
    first, *others = (e.archive for e in read.files() if e.archive == older)
    assert all(other is first for other in others)  # one string for all
    for change, why in [
        ({"mode": True}, "mode True is not one"),
        ({"size": -1}, "size -1 is not a whole number"),
        ({"type": "socket"}, "'type' must be in"),
        ({"mtime_ns": None}, "TypeError: int() argument"),
        ({"path": 3}, "path of an entry is a number"),
        ({"archive": "cell_web_20241231_020000"}, "not an older archive of cell crm"),
    ]:
        bad = [*items, {"path": "data/crm/z", **base, **change}]
        text = json.dumps({"format": 1, "archive": ARCHIVE, "entries": bad}).encode()
        with pytest.raises(ArchiveCorrupt) as info:
            Manifest.from_json(text, archive=ARCHIVE)
        assert why in info.value.detail


def test_a_manifest_reads_alike_wherever_a_chunk_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk size up to 300 bytes, and one that ends the first chunk before the last entry.

    The next chunk then starts with the comma before that entry, and the entry is
    followed by the end of the list, not by another comma.
    """
    m = sample()
    for i in range(80):
        m.add(Entry(f"data/crm/x{i:03d}", "dir", 0o755, i))
    raw = m.to_json()
    last = raw.rindex(b',{"path"')
    assert last > 4096  # the first read, before the head is parsed, is one chunk
    for chunk in [*range(1, 300), last]:
        read = streamed(raw, monkeypatch, chunk)
        assert list(read) == list(m), chunk


_USUAL_INTS = st.sampled_from([0, 1, 0o644, 2**31, 2**63 - 1])
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([0o7777, 0o10000, 1 << 62, (1 << 62) + 1, 2**63, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.sampled_from(["", "5", "a" * 64, "file", "socket", "cell_crm_20241231_020000"]),
    st.lists(st.integers(0, 1), max_size=1),
    st.dictionaries(st.sampled_from(["user.a"]), st.sampled_from(["", "Yg=="]), max_size=1),
)
_KEYS = [
    "mode",
    "mtime_ns",
    "size",
    "sha256",
    "target",
    "archive",
    "uid",
    "gid",
    "inode",
    "dev",
    "ctime_ns",
    "rdev",
    "xattrs",
]


def _outcome(read: Any, item: Any) -> tuple[str, object]:
    """What reading *item* gives: its fields as stored (exact types), or the error raised."""
    import marshal

    try:
        return "fields", marshal.dumps(read(dict(item) if isinstance(item, dict) else item, {}))
    except Exception as exc:
        return "error", (type(exc), str(exc))


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([[], "entry", 3, None])
    | st.fixed_dictionaries(
        {
            "path": st.sampled_from(["data/crm/f", 3, None]),
            "type": st.sampled_from([*ENTRY_TYPES, "socket", 3]),
        },
        optional={k: _VALUES for k in _KEYS},
    )
)
def test_the_fields_of_any_entry_past_the_spill_are_what_from_dict_gives(item: Any) -> None:
    """Valid or not, an entry read without an Entry gives the same fields, or the same error."""
    from cellvault.manifest import _FIELDS, _entry, _fields

    assert _outcome(_fields, item) == _outcome(lambda i, ids: _FIELDS(_entry(i, ids)), item)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "path": st.sampled_from(["data/crm/f", "data/crm/é"]),
            "type": st.sampled_from(ENTRY_TYPES),
            "mode": st.sampled_from([0, 0o644, 0o7777]),
            "mtime_ns": st.sampled_from([0, -5, 2**63 - 1]),
        },
        optional={
            "size": st.sampled_from([0, 1, 1 << 62]),  # 0 to MAX_COUNT
            **{
                k: st.one_of(st.none(), st.sampled_from(["a" * 64, "x"]))
                for k in ("sha256", "target")
            },
            "archive": st.sampled_from([None, "cell_crm_20241231_020000"]),
            **{k: _USUAL_INTS for k in ("uid", "gid", "inode", "dev", "ctime_ns", "rdev")},
        },
    )
)
def test_a_usual_entry_past_the_spill_is_read_without_from_dict(
    item: dict[str, Any],
) -> None:
    """Whole numbers in range, strings or nulls, keys left out: no Entry is built for it."""
    from cellvault import manifest

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest.Entry, "from_dict", None)  # calling it would fail the test
        ids: dict[str, str] = {}
        fields = manifest._fields(dict(item), ids)
    assert fields == manifest._FIELDS(Entry.from_dict(dict(item)))
    if item.get("archive"):
        assert fields[manifest._ARCHIVE_AT] is ids[item["archive"]]


def test_a_row_has_an_entry_s_fields_in_its_order_and_reads_the_same() -> None:
    """What a restore looks members up as (RowsInOrder) is an Entry's fields, as a tuple."""
    assert Row._fields == tuple(a.name for a in attrs.fields(Entry))
    entry = Entry(
        path="data/crm/f",
        type="file",
        mode=0o4755,
        mtime_ns=5,
        size=3,
        sha256="ab",
        uid=7,
        gid=8,
        archive="a",
        xattrs=(("user.k", "dg=="),),
    )
    row = Row(*attrs.astuple(entry, recurse=False))
    assert all(getattr(row, name) == getattr(entry, name) for name in Row._fields)


@pytest.mark.parametrize("spill_at", [3, 1000], ids=["spilled", "in memory"])
def test_the_bytes_by_root_are_counted_as_read_and_a_path_listed_twice_once(
    monkeypatch: pytest.MonkeyPatch, spill_at: int
) -> None:
    """What a restore's space check sums: each file once, by its top folder below data/."""
    monkeypatch.setattr("cellvault.spillmap.SPILL_AT", spill_at)
    built = Manifest(archive=ARCHIVE)
    built.add(Entry("data/crm", "dir", 0o755, 1))
    for i, (path, size) in enumerate(
        [("data/crm/a", 10), ("data/crm/b/c", 20), ("data/www/i", 300), ("dumps/pg/x", 4000)]
    ):
        built.add(Entry(path, "file", 0o644, i, size=size, sha256="a" * 64, archive=ARCHIVE))
    built.add(Entry("data/top", "file", 0o644, 9, size=5, sha256="a" * 64, archive=ARCHIVE))
    want = {"crm": 30, "www": 300, "": 4000, "top": 5}
    assert built.root_bytes() == want  # counted when asked
    read = Manifest.from_json(built.to_json(), archive=ARCHIVE)
    assert read.root_bytes() == want
    assert read.root_bytes() == want  # a copy each time
    raw = json.loads(built.to_json())
    again = dict(raw["entries"][1], size=99)  # data/crm/a again: the later entry is the file
    raw["entries"].append(again)
    twice = Manifest.from_json(json.dumps(raw, separators=(",", ":")).encode(), archive=ARCHIVE)
    assert twice.root_bytes() == {**want, "crm": 119}
    read.add(Entry("data/crm/new", "file", 0o644, 1, size=7, sha256="a" * 64, archive=ARCHIVE))
    assert read.root_bytes() == {**want, "crm": 37}  # added after the read: counted again


#: Values for each place of a file's entry: mostly what the pattern reads (whole
#: numbers, in range or not; plain strings or null), sometimes what it must leave
#: to JSON (other numbers, escapes, control characters, other types).
_NUMBERS = ["0", "-0", "420", "4095", "4096", "-5", "-1", str(1 << 62), str((1 << 62) + 1)]
_NUMBERS = _NUMBERS * 4 + [str(1 << 70), "0644", "1e3", "1.0", "true", '"5"', "null", " 1"]
_TEXTS = ["null", '""', '"abc"', '"cell_crm_20241231_020000"', '"caf\u00e9"', '"x\x7fy"'] * 4
_TEXTS += ['"a\\"b"', '"\\u00e9"', "3", '"a\x01b"', '"a\\qb"']


@st.composite
def _file_entry_text(draw: st.DrawFn) -> str:
    """A file's entry laid out as Entry.to_json does, with any value in each place."""
    path = draw(
        st.text(max_size=12).map(lambda t: json.dumps("data/crm/" + t))
        | st.text(max_size=12).map(lambda t: json.dumps("data/" + t, ensure_ascii=False))
        | st.sampled_from(_TEXTS)
    )
    number = st.sampled_from(_NUMBERS)
    text = st.sampled_from(_TEXTS)
    kind = draw(st.sampled_from(['"file"'] * 6 + ['"dir"', '"fifo"']))
    fields = [("path", path), ("type", kind)]
    for key in ("mode", "mtime_ns", "uid", "gid", "size"):
        fields.append((key, draw(number)))
    fields += [("sha256", draw(text)), ("archive", draw(text))]
    for key in ("inode", "dev", "ctime_ns"):
        fields.append((key, draw(number)))
    body = ",".join(f'"{key}":{value}' for key, value in fields)
    tail = draw(
        st.sampled_from([""] * 6 + [',"xattrs":{}', ',"xattrs":{"user.a":"Yg=="}', ',"size":1'])
    )
    return "{" + body + tail + "}"


def _pattern_and_json(raw: bytes, chunk: int) -> tuple[object, object]:
    """What the pattern's way and JSON's way read from *raw*: fields (exact types) or an error."""
    from cellvault import manifest

    def outcome(how: str) -> tuple[str, object]:
        ids: dict[str, str] = {}
        text = manifest.ManifestText(io.BytesIO(raw))

        def convert(item: Any) -> tuple[Any, ...]:
            return manifest._fields(item, ids)

        try:
            if how == "pattern":
                got = list(text.fields(convert, ids, max_mode=MAX_MODE, max_count=MAX_COUNT))
            else:
                got = [convert(item) for item in text.items()]
        except Exception as exc:
            return "error", (type(exc), str(exc))
        # Version 2: no back-references, so that equal values compare equal whatever
        # object holds them; the archive ids are shared alike either way.
        return "fields", (marshal.dumps(got, 2), sorted(ids))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest_text, "READ_CHUNK", chunk)  # entries cut across chunks
        return outcome("pattern"), outcome("json")


def _manifest_of(*entries: str) -> bytes:
    return ('{"format":1,"archive":"a","entries":[' + ",".join(entries) + "]}").encode()


_USUAL_FILE = {
    "path": '"data/crm/a b"',
    "type": '"file"',
    "mode": "420",
    "mtime_ns": "-7",
    "uid": "1000",
    "gid": "0",
    "size": "3",
    "sha256": f'"{"a" * 64}"',
    "archive": '"cell_crm_20241231_020000"',
    "inode": "12",
    "dev": "2049",
    "ctime_ns": "99",
}
#: What each place of a file's entry may hold instead: in range or not, what
#: JSON reads and what it refuses, what the pattern must leave to JSON.
_INSTEAD = {
    "number": [
        *("0", "-0", "4095", "4096", "-1", str(1 << 62), str((1 << 62) + 1), str(1 << 70)),
        *("0644", "1e3", "1.0", "-", "true", "null", '"5"', " 1", "1 "),
    ],
    "text": [
        *("null", '""', '"caf\u00e9"', '"x\x7fy"', '"a\\"b"', '"\\u00e9"', '"a\\qb"'),
        *('"a\x01b"', "3", '"a"b"', "nul", '"\\\\"'),
    ],
}


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_each_place_of_a_file_entry_reads_as_json_reads_it(chunk: int) -> None:
    """Whatever one place holds, the pattern's way gives JSON's fields, or its error."""
    checked = 0
    for key in _USUAL_FILE:
        kind = "text" if key in ("path", "type", "sha256", "archive") else "number"
        for value in _INSTEAD[kind]:
            entry = ",".join(f'"{k}":{value if k == key else v}' for k, v in _USUAL_FILE.items())
            raw = _manifest_of(entry.join("{}"), entry.join("{}"))
            pattern, json_way = _pattern_and_json(raw, chunk)
            assert pattern == json_way, (key, value)
            checked += 1
    assert checked == 8 * len(_INSTEAD["number"]) + 4 * len(_INSTEAD["text"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_file_entry_text(), min_size=1, max_size=6), st.sampled_from([7, 64, 1 << 20]))
def test_a_file_entry_read_by_the_pattern_gives_what_json_gives(
    texts: list[str], chunk: int
) -> None:
    """Laid out as cellvault writes it or not, valid or not: the same fields, or the same error."""
    pattern, json_way = _pattern_and_json(_manifest_of(*texts), chunk)
    assert pattern == json_way


def test_the_usual_file_entry_is_read_by_the_pattern() -> None:
    """What a backup writes for a file takes the pattern's way (JSON's is the fallback)."""
    from cellvault import manifest

    entry = Entry(
        "data/crm/a b.txt",
        "file",
        0o640,
        -1,
        size=5,
        sha256="a" * 64,
        uid=1000,
        gid=1000,
        inode=12,
        dev=2049,
        ctime_ns=1_700_000_000_123_456_789,
        archive=ARCHIVE,
    )
    raw = f'{{"format":1,"archive":"a","entries":[{entry.to_json()}]}}'.encode()

    def refuse(_item: Any) -> tuple[Any, ...]:
        raise AssertionError("parsed as JSON")

    ids: dict[str, str] = {}
    [fields] = manifest.ManifestText(io.BytesIO(raw)).fields(
        refuse, ids, max_mode=MAX_MODE, max_count=MAX_COUNT
    )
    assert fields == manifest._FIELDS(entry)
    assert fields[manifest._ARCHIVE_AT] is ids[ARCHIVE]


def _wide_manifest() -> Manifest:
    """Files with names of one- to four-byte characters, from two archives."""
    older = "cell_crm_20241231_020000"
    m = Manifest(archive=ARCHIVE)
    m.add(Entry("data/crm", "dir", 0o755, 1))
    for i, name in enumerate(["a", "é" * 30, "中文" * 20, "😀" * 20, "naïve"] * 60):
        holder = older if i % 3 else ARCHIVE
        m.add(
            Entry(f"data/crm/{name}{i}", "file", 0o644, i, size=i, sha256="a" * 64, archive=holder)
        )
    return m


def test_a_manifest_parsed_apart_from_any_point_reads_as_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read ahead to any point (a character cut in two there too), then parsed by the child."""
    from cellvault import manifest

    built = _wide_manifest()
    raw = json.dumps(json.loads(built.to_json()), ensure_ascii=False).encode()  # raw UTF-8
    monkeypatch.setattr(manifest_text, "READ_CHUNK", 5)
    monkeypatch.setattr(manifest, "PARSE_APART", 1 << 40)
    here = Manifest.read(io.BytesIO(raw), archive=ARCHIVE)
    cut: list[bytes] = []
    start = manifest_text.ApartParser.start

    def spy(text: Any, work: Any) -> object:
        cut.append(text._text.decoder.getstate()[0])  # bytes of a character cut in two
        made = start(text, work)
        assert made is not None
        return made

    monkeypatch.setattr(manifest_text.ApartParser, "start", spy)

    def cut_at(ahead: int) -> bool:
        text = manifest.ManifestText(io.BytesIO(raw))
        text._long(ahead)
        return bool(text._text.decoder.getstate()[0])

    # The head is read with the first 4,096 characters at least; then on to points
    # where a character is cut in two, and to some where none is.
    points = range(4_000, 4_800)
    cuts = [ahead for ahead in points if cut_at(ahead)]
    whole = [ahead for ahead in points if ahead not in cuts]
    assert cuts and whole
    for ahead in [0, *cuts[:6], *whole[:: len(whole) // 3]]:
        monkeypatch.setattr(manifest, "PARSE_APART", ahead)
        apart = Manifest.read(io.BytesIO(raw), archive=ARCHIVE)
        assert apart == here and apart.digest == here.digest == hashlib.sha256(raw).hexdigest()
        assert apart.holders() == here.holders() and apart.root_bytes() == here.root_bytes()
    assert any(cut) and not all(cut)


def test_a_manifest_parsed_apart_leaves_no_child_whether_it_reads_or_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cellvault import manifest

    monkeypatch.setattr(manifest, "PARSE_APART", 0)
    before = children()
    raw = sample().to_json()
    assert Manifest.read(io.BytesIO(raw), archive=ARCHIVE) == sample()
    assert children() == before
    with pytest.raises(ArchiveCorrupt):
        Manifest.read(io.BytesIO(raw.replace(b'"type":"file"', b'"type":"sock"')), archive="x")
    assert children() == before


class _Breaks:
    """A source that fails after a few chunks, as a damaged compressed stream does."""

    def __init__(self, raw: bytes, after: int) -> None:
        self._raw = io.BytesIO(raw)
        self._left = after

    def read(self, size: int = -1, /) -> bytes:
        if not self._left:
            raise zstandard.ZstdError("corrupted block detected")
        self._left -= 1
        return self._raw.read(size)


def test_what_reading_the_source_raised_is_raised_not_what_the_parser_made_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parser sees the text end early; the cause is the source's error, raised as before."""
    from cellvault import manifest

    monkeypatch.setattr(manifest_text, "READ_CHUNK", 64)
    raw = _wide_manifest().to_json()
    for apart in (1 << 40, 0):
        monkeypatch.setattr(manifest, "PARSE_APART", apart)
        with pytest.raises(zstandard.ZstdError, match="corrupted block detected"):
            Manifest.read(_Breaks(raw, after=100), archive=ARCHIVE)  # past the head


def test_without_fork_a_long_manifest_is_parsed_here(monkeypatch: pytest.MonkeyPatch) -> None:
    from cellvault import manifest

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "no more processes")

    monkeypatch.setattr(manifest, "PARSE_APART", 0)
    monkeypatch.setattr(os, "fork", no_fork)
    assert Manifest.read(io.BytesIO(sample().to_json()), archive=ARCHIVE) == sample()


def test_a_parser_that_dies_is_said_to_have_died_not_the_manifest_to_be_bad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cellvault import manifest

    start = manifest_text.ApartParser.start
    dead = threading.Event()

    def killed(text: Any, work: Any) -> object:
        made = start(text, work)
        assert made is not None
        os.kill(made.pid, signal.SIGKILL)
        dead.set()
        return made

    class Held(io.BytesIO):
        """The text a few KiB at a time, the rest only once the child is killed.

        Else a child fed the whole of a small text may parse it all before the
        signal lands, and the read succeeds.
        """

        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 8192:
                assert dead.wait(30)
            return super().read(4096)

    monkeypatch.setattr(manifest, "PARSE_APART", 0)
    monkeypatch.setattr(manifest_text.ApartParser, "start", killed)
    with pytest.raises(
        RuntimeError, match=r"the process parsing the manifest ended without a word"
    ):
        Manifest.read(Held(_wide_manifest().to_json()), archive=ARCHIVE)
