"""The manifest: every path of a cell at the instant of an archive."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cellvault import ArchiveCorrupt, Entry, Manifest
from cellvault.manifest import ManifestWriter

from .archive_helpers import archive_files, make_vault, read_members

ARCHIVE = "cell_crm_20250101_020000"


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
    kind = draw(st.sampled_from(["file", "dir", "symlink"]))
    common = dict(
        mode=draw(st.integers(0, 0o7777)),
        mtime_ns=draw(st.integers(-(2**62), 2**62)),
        uid=draw(st.integers(0, 2**32 - 1)),
        gid=draw(st.integers(0, 2**32 - 1)),
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
    if kind == "symlink":
        return Entry(path, "symlink", target=draw(names), **common)  # type: ignore[arg-type]
    return Entry(path, "dir", **common)  # type: ignore[arg-type]


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
