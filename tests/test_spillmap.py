"""Spill maps and streamed manifests: what keeps memory flat in the number of files.

The spill path is taken here at a small size (``SPILL_AT`` lowered), so that
CI runs every step of a backup, an incremental, a restore and each verify
level with manifests, member records and names in temporary files.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cellvault.manifest_text as manifest_text
import cellvault.spillmap as spillmap
from cellvault import ArchiveCorrupt, Entry, Manifest
from cellvault.manifest import InOrder, Row, RowsInOrder
from cellvault.spillmap import SeenNames, SpillMap

from .archive_helpers import make_vault, snapshot

ARCHIVE = "cell_crm_20261204_120000"

#: Spilled manifests read the same wherever their entries are parsed.
pytestmark = pytest.mark.usefixtures("manifest_parser")


def _entry(i: int, *, kind: str = "file") -> Entry:
    if kind == "dir":
        return Entry(path=f"data/crm/d{i:04d}", type="dir", mode=0o755, mtime_ns=i)
    return Entry(
        path=f"data/crm/f{i:04d}",
        type="file",
        mode=0o644,
        mtime_ns=10**18 + i,
        size=i,
        sha256=f"{i:064x}",
        archive=ARCHIVE,
        xattrs=(("user.n", "MQ=="),) if i % 7 == 0 else (),
    )


@pytest.mark.parametrize("spill_at", [4, 10_000])
def test_spill_map_behaves_as_an_ordered_dict(spill_at: int) -> None:
    m: SpillMap[str] = SpillMap(spill_at=spill_at)
    plain: dict[str, str] = {}
    for i in range(50):
        m[f"k{i}"] = plain[f"k{i}"] = f"v{i}"
    m["k3"] = plain["k3"] = "again"  # replaced in place: the order stays
    del m["k5"]
    del plain["k5"]
    assert m.spilled is (spill_at == 4)
    assert list(m.items()) == list(plain.items())
    assert list(m) == list(plain) and list(m.values()) == list(plain.values())
    assert len(m) == len(plain) == 49
    assert m.get("k3") == "again" and m["k49"] == "v49"
    assert m.get("k5") is None and "k5" not in m and "k6" in m
    with pytest.raises(KeyError):
        m["k5"]
    assert m == plain and m == SpillMap.of(plain)
    plain["k0"] = "other"
    assert m != plain
    m.close()


def test_seen_names_finds_a_repeat_in_memory_and_spilled() -> None:
    few = SeenNames()
    assert few.add("a") is None and few.add("a") == "a"
    many = SeenNames(spill_at=10)
    assert all(many.add(f"n{i}") is None for i in range(100))
    assert many.add("n99") == "n99"  # in the batch not yet written: at once
    assert many.add("n3") is None  # written before: found with the batch
    assert many.finish() == "n3"
    clean = SeenNames(spill_at=10)
    assert all(clean.add(f"n{i}") is None for i in range(100))
    assert clean.finish() is None


NAMES = ["ascii", "caf\u00e9", os.fsdecode(b"not utf-8 \xff"), "\ud800 a lone surrogate", ""]


@pytest.mark.parametrize("spill_at", [2, 10_000])
def test_spill_map_keys_are_any_string(spill_at: int) -> None:
    """Path names that are not UTF-8 (surrogates) are keys like any other, spilled or not."""
    m: SpillMap[str] = SpillMap(spill_at=spill_at)
    for i, name in enumerate(NAMES):
        m[name] = f"v{i}"
    assert m.spilled is (spill_at == 2)
    assert list(m) == NAMES and list(m.items()) == [(n, f"v{i}") for i, n in enumerate(NAMES)]
    assert all(m[n] == f"v{i}" and n in m for i, n in enumerate(NAMES))
    assert os.fsdecode(b"not utf-8 \xfe") not in m and "caf" not in m and 5 not in m
    del m[NAMES[2]]
    assert NAMES[2] not in m and len(m) == len(NAMES) - 1
    m.close()


def test_seen_names_finds_a_repeat_of_any_string_spilled() -> None:
    for name in NAMES:
        seen = SeenNames(spill_at=2)
        assert seen.add(name) is None
        assert all(seen.add(f"n{i}") is None for i in range(5))  # name is written out
        assert seen.add(name) is None  # in the batch not yet written
        assert seen.finish() == name
        seen.close()


def test_a_spilled_manifest_round_trips_and_reads_as_a_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = Manifest(archive=ARCHIVE)
    for i in range(40):
        built.add(_entry(i, kind="dir" if i % 5 == 0 else "file"))
    raw = built.to_json()
    monkeypatch.setattr(spillmap, "SPILL_AT", 8)
    monkeypatch.setattr(manifest_text, "READ_CHUNK", 7)  # entries cut across chunks
    read = Manifest.read(io.BytesIO(raw), archive=ARCHIVE)
    assert read.entries.spilled
    assert [e.path for e in read] == [e.path for e in built]
    assert read == built and read.same_as(built) and read.to_json() == raw
    assert read.get("data/crm/f0007") == _entry(7)
    assert read.holders() == {ARCHIVE} and len(list(read.files())) == 32
    spaced = json.dumps(json.loads(raw), indent=2).encode()  # any whitespace: still a stream
    assert Manifest.read(io.BytesIO(spaced), archive=ARCHIVE).entries == built.entries
    reordered = json.dumps({"entries": json.loads(raw)["entries"], "archive": ARCHIVE})
    assert len(Manifest.from_json(reordered.encode(), archive=ARCHIVE)) == 40  # read whole
    lookup = InOrder(read)
    assert [lookup.get(f"data/crm/f{i:04d}") for i in (1, 2, 9, 3)] == [
        _entry(1),
        _entry(2),
        _entry(9),
        _entry(3),  # passed over: still found
    ]
    assert lookup.get("data/crm/d0005") == _entry(5, kind="dir")  # not a file: looked up
    assert lookup.get("data/crm/nothing") is None
    rows = RowsInOrder(read)  # a restore's lookup: the same fields, as tuples
    for i, kind in ((1, "file"), (9, "file"), (3, "file"), (5, "dir")):
        name = f"data/crm/{'f' if kind == 'file' else 'd'}{i:04d}"
        assert rows.get(name) == Row(*attrs.astuple(_entry(i, kind=kind), recurse=False))
    assert rows.get("data/crm/nothing") is None


@pytest.mark.parametrize(
    "text",
    [
        b'{"format":1,"archive":"a","entries":[',
        b'{"format":1,"archive":"a","entries":[1]}',
        b'{"format":1,"archive":"a","entries":[{"path":"p","type":"file"}]}',
        b'{"format":1,"archive":"a","entries":[]}trailing',
    ],
)
def test_a_malformed_manifest_is_corrupt_not_a_traceback(text: bytes) -> None:
    with pytest.raises(ArchiveCorrupt, match="manifest is unusable"):
        Manifest.read(io.BytesIO(text), archive="a")


def test_backup_restore_and_every_verify_level_with_everything_spilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spillmap, "SPILL_AT", 8)
    src = tmp_path / "cells" / "crm"
    for d in range(6):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(12):
            (src / f"d{d}" / f"f{f:02d}").write_bytes(b"%d-%d\n" % (d, f))
    os.link(src / "d0" / "f00", src / "d0" / "hard")
    os.symlink("/etc/hostname", src / "d1" / "abs")
    # Names a file system holds that are not UTF-8, or not ASCII: keys of every map.
    (src / os.fsdecode(b"d4/not utf-8 \xff\xfe")).write_bytes(b"latin-1 name\n")
    (src / "d5" / "caf\u00e9 \u65e5\u672c").write_bytes(b"utf-8 name\n")
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    (src / "d2" / "f03").write_bytes(b"changed\n")
    (src / "d3" / "f04").unlink()
    incremental = vault.backup(kind="incremental")
    assert incremental.ok
    # Planned from the full archive's manifest, read back spilled: not a full one again.
    assert incremental.cells[0].kind == "incremental"
    original = snapshot(src)
    report = vault.restore(into=tmp_path / "out")
    assert report.ok, report.error or report.cells[0].error
    assert snapshot(tmp_path / "out" / "crm" / "crm") == original
    assert os.stat(tmp_path / "out" / "crm" / "crm" / "d0" / "hard").st_nlink == 2
    for level in ("quick", "read", "full", "drill"):
        assert vault.verify(all_archives=True, level=level).ok, level  # type: ignore[arg-type]


_KEY_TEXT = st.sampled_from(
    ["", "d", "dumps", "dumps/", "dumps0", "é", "\udcff", "\U0010ffff", "z"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(_KEY_TEXT, max_size=4).map("".join), max_size=12),
    st.lists(_KEY_TEXT, max_size=3).map("".join),
    st.booleans(),
)
def test_a_prefix_is_found_as_a_scan_of_the_keys_finds_it(
    keys: list[str], prefix: str, spilled: bool
) -> None:
    """Text keys and byte keys (not ASCII, not UTF-8), in memory or spilled: one answer."""
    found = SpillMap(spill_at=0 if spilled else 1000)
    for key in keys:
        found[key] = "v"
    assert found.spilled == (spilled and bool(keys))
    assert len(found) == len(set(keys))  # and the writes are in the database
    assert found.has_prefix(prefix) == any(key.startswith(prefix) for key in keys)


@pytest.mark.parametrize("spill_at", [0, 1, 3])
def test_a_map_that_spills_on_its_last_write_counts_every_key(spill_at: int) -> None:
    """Found by the prefix test: the count was the in-memory one, 0, until the next write."""
    found: SpillMap[str] = SpillMap(spill_at=spill_at)
    for i in range(spill_at + 1):
        found[str(i)] = "v"
    assert found.spilled
    assert len(found) == spill_at + 1
    assert found == {str(i): "v" for i in range(spill_at + 1)}
