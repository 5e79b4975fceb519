"""A hostile backup store: nothing read from a target makes a command leave its own area.

The audit of issue 18 planted sidecars, manifest copies and roots by hand in a
local target; each case is here as a regression test, and a hypothesis test
generates hostile sidecars and asserts that list, status, verify, prune and
``restore --into`` read, write and delete nothing outside their own area:
the victim files beside the backup directory, the other cell's archives, the
live cells, stay byte for byte as they were.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings

from cellvault import ArchiveCorrupt, ArchiveId, CellvaultError, Sidecar, Vault
from cellvault.retention import RetentionPolicy
from cellvault.trust import bounded_zstd, check_roots

from .archive_helpers import TickingClock, make_vault, snapshot

UTC = dt.UTC
#: A policy that deletes all it may: prune's guarantees are all that is kept.
KEEP_LAST = RetentionPolicy(keep_full_days=None, keep_incremental_days=None, keep_last=1)


def _tree(root: Path) -> dict[str, Any]:
    """Every path under *root* (names, types, contents): what must not change."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = ("file", path.read_bytes())
        elif path.is_dir():
            out[rel] = ("dir",)
    return out


class Store:
    """Two cells (crm, billing) backed up twice into a local target, and a victim beside it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cells = tmp / "cells"
        for name in ("crm", "billing"):
            (self.cells / name).mkdir(parents=True)
            (self.cells / name / "data.txt").write_text(f"{name} data\n")
        self.backup = tmp / "backup"
        self.victim = tmp / "victim.txt"
        self.victim.write_text("must survive\n")
        self.elsewhere = tmp / "elsewhere"
        (self.elsewhere / "keep").mkdir(parents=True)
        (self.elsewhere / "keep" / "file").write_text("not yours\n")

    def vault(self, **config: Any) -> Vault:
        return make_vault(
            self.backup,
            {"crm": [self.cells / "crm"], "billing": [self.cells / "billing"]},
            clock=TickingClock(dt.datetime(2025, 1, 1, 2, 0, tzinfo=UTC)),
            **config,
        )

    def build(self) -> None:
        vault = self.vault()
        assert vault.backup(kind="full").ok
        (self.cells / "crm" / "data.txt").write_text("crm data, later\n")
        assert vault.backup(kind="incremental").ok

    def ids(self, cell: str) -> list[ArchiveId]:
        return sorted(
            ArchiveId.parse(p.name.removesuffix(".json"))
            for p in (self.backup / cell).glob("cell_*.json")
            if not p.name.endswith(".manifest.json")
        )

    def sidecar(self, ident: ArchiveId) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.backup / ident.cell / f"{ident}.json").read_bytes())
        return data

    def plant(self, cell: str, stem: str, body: dict[str, Any] | bytes) -> Path:
        path = self.backup / cell / f"{stem}.json"
        path.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
        return path

    def outside(self) -> dict[str, Any]:
        """What no command may change: victim, elsewhere, billing's archives, the live cells."""
        return {
            "victim": self.victim.read_bytes(),
            "elsewhere": _tree(self.elsewhere),
            "billing": _tree(self.backup / "billing"),
            "cells": _tree(self.cells),
            # Beside the backup directory, only a restore's own folder may appear.
            "top": sorted(p.name for p in self.tmp.iterdir() if p.name != "into"),
        }


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path)
    s.build()
    return s


def _forged(store: Store, **changes: Any) -> tuple[str, dict[str, Any]]:
    """A copy of crm's newest sidecar, one second newer (so it would be the newest), changed."""
    newest = store.ids("crm")[-1]
    ident = ArchiveId("crm", newest.when + dt.timedelta(seconds=1))
    body = store.sidecar(newest) | {"id": str(ident), "data": f"{ident}.tar.zst"}
    body.update(changes)
    return str(ident), body


# -- the audit's cases ---------------------------------------------------------


def test_a_traversal_data_name_is_ignored_and_prune_deletes_nothing_outside(store: Store) -> None:
    stem, body = _forged(store, data="../../victim.txt", kind="full")
    store.plant("crm", stem, body)
    before = store.outside()
    vault = store.vault(retention=KEEP_LAST)
    vault.prune(cells=["crm"])
    assert store.victim.read_text() == "must survive\n"
    assert store.outside() == before
    assert stem not in [a.id for a in vault.list(cells=["crm"])]


def test_a_sidecar_naming_another_cells_archive_cannot_make_prune_delete_it(store: Store) -> None:
    billing = store.ids("billing")[0]
    body = store.sidecar(billing)
    # Stored in crm/ under a crm name, but its id and data name billing's archive.
    store.plant("crm", "cell_crm_20240101_000000", body)
    # Stored in crm/ under billing's own name.
    store.plant("crm", str(billing), body)
    before = store.outside()
    vault = store.vault(retention=KEEP_LAST)
    listed = [a.id for a in vault.list(cells=["billing"])]
    vault.prune(cells=["crm"])
    assert store.outside() == before
    assert [a.id for a in vault.list(cells=["billing"])] == listed
    assert str(billing) in listed


@pytest.mark.parametrize("root", ["..", "/abs", "a/../..", "", "."])
def test_a_roots_key_outside_the_cell_is_refused_by_restore_into(store: Store, root: str) -> None:
    newest = store.ids("crm")[-1]
    body = store.sidecar(newest)
    body["roots"] = {root: "/srv/x"}
    store.plant("crm", str(newest), body)
    into = store.tmp / "into"
    before = store.outside()
    vault = store.vault()
    with pytest.raises(ArchiveCorrupt, match="not a plain name"):
        vault.restore(str(newest), cells=["crm"], into=into)
    assert not into.exists()
    assert store.outside() == before
    assert not (store.tmp / "x").exists()
    # The forged sidecar is ignored: the archive is not listed, verify does not pass it.
    assert str(newest) not in [a.id for a in vault.list(cells=["crm"])]


def test_roots_must_be_plain_names_mapped_to_absolute_paths() -> None:
    assert check_roots({"www": "/srv/www"}) == {"www": "/srv/www"}
    for bad in ({"..": "/x"}, {"a/b": "/x"}, {"": "/x"}, {"www": "relative"}, ["www"]):
        with pytest.raises(ArchiveCorrupt):
            check_roots(bad)


def _bomb(size: int) -> bytes:
    """A zstd frame of *size* zero bytes, a few KiB long, made without holding *size* bytes."""
    out = zstandard.ZstdCompressor(level=1).compressobj()
    block = bytes(1 << 20)
    parts = [out.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + out.flush()


def test_a_manifest_copy_that_expands_past_its_declared_size_is_refused(store: Store) -> None:
    newest = store.ids("crm")[-1]
    body = store.sidecar(newest)
    declared = body.get("manifest_size")
    assert isinstance(declared, int) and declared > 0  # backups declare it
    bomb = _bomb(256 << 20)
    (store.backup / "crm" / f"{newest}.manifest.json.zst").write_bytes(bomb)
    target = store.vault().targets[0]
    # Its size fails it as it streams (before its sha256, checked at its end, could).
    with pytest.raises(ArchiveCorrupt, match="expands past"):
        target.manifest(target.sidecar(newest))


def test_an_undeclared_manifest_size_is_bounded_by_the_file_count() -> None:
    bomb = _bomb(128 << 20)
    assert len(bomb) < 64 << 10
    with pytest.raises(ArchiveCorrupt, match="expands past"):
        bounded_zstd(bomb, 64 << 20)


@pytest.mark.parametrize(
    "change",
    [
        {"size": -1},
        {"size": 1e300},
        {"files": "many"},
        {"sha256": "0" * 63},
        {"data": "/etc/passwd"},
        {"data": "cell_crm_20250101_020000.tar.zst/../x"},
        {"parent": "cell_billing_20250101_020000"},
        {"chain": ["cell_crm_29990101_000000"]},
        {"chain": "cell_crm_20250101_020000"},
        {"roots": []},
        {"manifest_size": -5},
    ],
)
def test_a_sidecar_with_a_value_cellvault_never_writes_is_refused(
    store: Store, change: dict[str, Any]
) -> None:
    newest = store.ids("crm")[-1]
    body = store.sidecar(newest) | change
    with pytest.raises(ArchiveCorrupt):
        Sidecar.from_json(json.dumps(body).encode(), name=str(newest), cell="crm")


def test_a_manifest_mode_no_scan_records_is_refused(store: Store) -> None:
    from cellvault import Manifest

    raw = json.dumps(
        {
            "format": 1,
            "archive": "cell_crm_20250101_020000",
            "entries": [{"path": "data/crm", "type": "dir", "mode": -1, "mtime_ns": 0}],
        }
    ).encode()
    with pytest.raises(ArchiveCorrupt, match="mode"):
        Manifest.from_json(raw, archive="cell_crm_20250101_020000")


def test_a_truncated_newest_sidecar_is_reported_and_the_backup_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    newest = store.ids("crm")[-1]
    path = store.backup / "crm" / f"{newest}.json"
    path.write_bytes(path.read_bytes()[:40])
    vault = store.vault()
    report = vault.backup(cells=["crm"], kind="incremental")
    assert report.ok, report
    # Alerted (stage "check"), naming the ignored object.
    alerts = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"ignored crm/{newest}.json" in m and "check" in m for m in alerts), alerts
    status = vault.status(cells=["crm"])
    assert any("ignored crm/" in p for p in status.problems()), status.problems()


def test_plain_verify_fails_on_a_forged_older_sidecar_naming_it_once(store: Store) -> None:
    """The newest archive is still verified; a record that failed validation fails the verify."""
    from click.testing import CliRunner

    from cellvault.cli import cli

    full, newest = store.ids("crm")
    # Older than both, and in no chain: only a validation can fail it.
    older = ArchiveId("crm", full.when - dt.timedelta(seconds=1))
    store.plant("crm", str(older), store.sidecar(full) | {"id": str(older), "size": -1})
    vault = store.vault()
    report = vault.verify(cells=["crm"])
    assert [(r.archive, r.ok) for r in report.results] == [(str(newest), True), (str(older), False)]
    assert not report.ok
    assert f"ignored crm/{older}.json" in (report.results[1].error or "")
    assert not vault.status(cells=["crm"]).ok
    env = {"BACKUP_DIR": str(store.backup), "BACKUP_ALERT_LOG": str(store.tmp / "alerts.log")}
    result = CliRunner().invoke(cli, ["verify", "--cell", "crm"], env=env)
    assert result.exit_code == 1, result.output
    assert result.stdout.count("ok   ") == 1 and f"ok   {newest} on local" in result.stdout
    assert result.stderr.count(f"FAIL {older} on local: ignored crm/{older}.json") == 1
    # Once the forged record is gone, the same target object verifies clean again.
    (store.backup / "crm" / f"{older}.json").unlink()
    assert vault.verify(cells=["crm"]).ok


def test_a_corrupt_full_parent_fails_verify_and_status_and_the_next_backup_is_full(
    store: Store,
) -> None:
    full = store.ids("crm")[0]
    data = store.backup / "crm" / f"{full}.tar.zst"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes: only a digest sees it
    data.write_bytes(bytes(raw))
    vault = store.vault()
    report = vault.verify(cells=["crm"], level="read")
    assert not report.ok
    (result,) = report.results
    assert str(full) in (result.error or "") and "chain is broken" in (result.error or "")
    assert not vault.status(cells=["crm"]).ok
    backup = vault.backup(cells=["crm"], kind="incremental")
    assert backup.ok
    newest = store.ids("crm")[-1]
    assert store.sidecar(newest)["kind"] == "full"


def test_a_missing_chain_link_fails_status(store: Store) -> None:
    full = store.ids("crm")[0]
    (store.backup / "crm" / f"{full}.json").unlink()
    status = store.vault().status(cells=["crm"])
    assert not status.ok
    assert any("chain" in p for p in status.problems())


def test_an_archive_stamped_ahead_never_makes_the_backup_wait(store: Store) -> None:
    ahead = dt.datetime(2025, 2, 1, 2, 0, tzinfo=UTC)  # a month ahead of the vault's clock
    newest = store.ids("crm")[-1]
    ident = ArchiveId("crm", ahead)
    for suffix in (".tar.zst", ".manifest.json.zst"):
        shutil.copy(
            store.backup / "crm" / f"{newest}{suffix}", store.backup / "crm" / f"{ident}{suffix}"
        )
    body = store.sidecar(newest)
    body |= {"id": str(ident), "data": f"{ident}.tar.zst", "chain": [], "parent": None}
    body["kind"] = "full"
    store.plant("crm", str(ident), body)
    vault = store.vault()
    report = vault.backup(cells=["crm"], kind="full")  # a sleep would last a month
    assert report.ok
    assert store.ids("crm")[-1] == ArchiveId("crm", ahead + dt.timedelta(seconds=1))


# -- hostile stores, generated -----------------------------------------------------

_NAMES = st.sampled_from(
    [
        "../../victim.txt",
        "../billing/{billing}.tar.zst",
        "/etc/passwd",
        "{billing}.tar.zst",
        "{stem}.tar.zst",
        "{stem}.tar.gz",
        "..",
        "",
        "{stem}.tar.zst\x00",
        "sub/{stem}.tar.zst",
    ]
)
_IDS = st.sampled_from(["{stem}", "{billing}", "cell_crm_20000101_000000", "cell_crm_x", 7])
_ROOTS = st.one_of(
    st.dictionaries(
        st.sampled_from(["crm", "..", "/", "/tmp", "a/b", "", ".", "../elsewhere", "x"]),
        st.sampled_from(["/srv/crm", "relative", "/", str(Path("/tmp"))]),
        max_size=3,
    ),
    st.sampled_from([None, [], "crm", 1]),
)
_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1", None, True]),
)


@st.composite
def hostile_sidecars(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "id": draw(_IDS),
        "data": draw(_NAMES),
        "roots": draw(_ROOTS),
        "size": draw(_NUMBERS),
        "files": draw(_NUMBERS),
        "parent": draw(st.one_of(st.none(), _IDS)),
        "kind": draw(st.sampled_from(["full", "incremental", "weekly"])),
        "stored_as": draw(st.sampled_from(["{stem}", "{billing}", "cell_crm_20000101_000000"])),
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-template")
    Store(root).build()
    return root


@pytest.fixture
def fresh(template: Path) -> Iterator[Any]:
    made: list[Path] = []

    def copy() -> Store:
        root = Path(tempfile.mkdtemp(prefix="hostile-"))
        made.append(root)
        shutil.copytree(template, root, dirs_exist_ok=True, symlinks=True)
        store = Store.__new__(Store)
        store.tmp, store.cells, store.backup = root, root / "cells", root / "backup"
        store.victim, store.elsewhere = root / "victim.txt", root / "elsewhere"
        return store

    yield copy
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


@settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(forged=hostile_sidecars())
# A sidecar one second newer than the newest archive, its data absent: it once had the real
# newest pruned (retention counted it as the newest archive).
@example(
    forged={
        "id": "{stem}",
        "data": "{stem}.tar.zst",
        "roots": {},
        "size": 0,
        "files": 0,
        "parent": None,
        "kind": "full",
        "stored_as": "{stem}",
    }
)
def test_no_command_leaves_its_area_whatever_the_store_holds(fresh: Any, forged: Any) -> None:
    store: Store = fresh()
    newest = store.ids("crm")[-1]
    billing = str(store.ids("billing")[0])
    stem = str(ArchiveId("crm", newest.when + dt.timedelta(seconds=1)))

    def fill(value: Any) -> Any:
        return value.format(stem=stem, billing=billing) if isinstance(value, str) else value

    body = store.sidecar(newest) | {k: fill(v) for k, v in forged.items() if k != "stored_as"}
    store.plant("crm", fill(forged["stored_as"]), body)
    before = store.outside()
    crm_before = {
        k: v
        for k, v in _tree(store.backup / "crm").items()
        if k.startswith(tuple(str(i) for i in store.ids("crm")[:2]))
    }
    vault = store.vault(retention=KEEP_LAST)
    into = store.tmp / "into"

    listed = vault.list(cells=["crm"])
    assert all(a.id.startswith("cell_crm_") for a in listed)
    vault.status(cells=["crm"])
    vault.verify(cells=["crm"], level="quick", all_archives=True)
    with contextlib.suppress(CellvaultError):  # a refusal is fine; leaving the area is not
        vault.restore("latest", cells=["crm"], into=into)
    vault.prune(cells=["crm"], dry_run=True)
    assert store.outside() == before
    # Nothing was written beside the backup directory but the restore's own folder.
    assert sorted(p.name for p in store.tmp.iterdir()) in (
        before["top"],
        sorted([*before["top"], "into"]),
    )
    if into.exists():
        assert all(p.is_relative_to(into) for p in into.rglob("*"))
        assert not any(p.is_symlink() for p in into.rglob("*"))
    vault.prune(cells=["crm"])
    assert store.outside() == before
    # The newest real archive of crm is kept whatever the forged sidecar says.
    after = _tree(store.backup / "crm")
    assert all(k in after for k in crm_before if k.startswith(str(newest)))
    assert zlib.crc32(store.victim.read_bytes()) == zlib.crc32(b"must survive\n")
    assert snapshot(store.elsewhere)  # still there


# -- a hostile cell tree: files swapped between the scan and the read ---------------


def _swap_before_open(monkeypatch: pytest.MonkeyPatch, victim: Path, swap: Any) -> None:
    """Run *swap* on *victim* just before the packer opens it: after the scan saw a file."""
    from cellvault import readahead

    real_open = readahead.open_ahead

    def racing(path: str, size: int) -> Any:
        if path == str(victim):
            swap(victim)
        return real_open(path, size)

    monkeypatch.setattr(readahead, "open_ahead", racing)


def _to_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _to_link(path: Path) -> None:
    secret = path.parent.parent / "root-only.txt"
    secret.write_text("the content of a file the link points at\n")
    path.unlink()
    path.symlink_to(secret)


def _to_other_file(path: Path) -> None:
    other = path.with_name("replacement")
    other.write_text("another inode\n")
    os.replace(other, path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("swap", [_to_fifo, _to_link, _to_other_file], ids=lambda f: f.__name__)
def test_a_file_swapped_after_the_scan_is_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: Any
) -> None:
    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    (cell / "keep.txt").write_text("kept\n")
    victim = cell / "victim.txt"
    victim.write_text("scanned\n")
    _swap_before_open(monkeypatch, victim, swap)
    vault = make_vault(tmp_path / "backup", [cell])
    report = vault.backup()  # a FIFO opened for reading would block here forever
    assert report.ok, report
    (result,) = report.cells
    assert any(str(victim) in w and "after the scan" in w for w in result.warnings)
    manifest = vault.targets[0].manifest(vault.targets[0].archives("crm")[-1])
    assert "data/crm/keep.txt" in manifest
    assert "data/crm/victim.txt" not in manifest
    # The link's target never reached the archive.
    into = tmp_path / "into"
    assert vault.restore("latest", cells=["crm"], into=into).ok
    assert not any(p.name == "victim.txt" for p in into.rglob("*"))


def test_a_directory_vanishing_mid_scan_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cellvault import walk

    cell = tmp_path / "cells" / "crm"
    (cell / "a").mkdir(parents=True)
    (cell / "a" / "f.txt").write_text("a\n")
    (cell / "b").mkdir()
    (cell / "b" / "g.txt").write_text("b\n")
    real_list = walk.CellWalk._list

    def racing(self: Any, path: str) -> Any:
        if path == str(cell / "b"):
            shutil.rmtree(cell / "b")
        return real_list(self, path)

    monkeypatch.setattr(walk.CellWalk, "_list", racing)
    report = make_vault(tmp_path / "backup", [cell]).backup()
    assert report.ok, report
    (result,) = report.cells
    assert any(str(cell / "b") in w and "vanished" in w for w in result.warnings)


# -- cells behind symbolic links --------------------------------------------------------


def test_a_cell_path_that_is_a_link_is_backed_up_and_restored_as_its_data(tmp_path: Path) -> None:
    data = tmp_path / "data" / "crm"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("one\n")
    (data / "sub" / "b.txt").write_text("two\n")
    link = tmp_path / "srv" / "cells" / "crm"
    link.parent.mkdir(parents=True)
    link.symlink_to(data)
    vault = make_vault(tmp_path / "backup", [link])
    report = vault.backup()
    assert report.ok
    (sidecar,) = vault.targets[0].archives("crm")
    assert sidecar.meta.roots == {"crm": str(data)}
    assert sidecar.files >= 3  # not "ok 0 files": the link's data is in the archive
    (data / "a.txt").write_text("changed\n")
    (data / "sub" / "b.txt").unlink()
    assert vault.restore("latest", cells=["crm"], skip_prebackup=True).ok
    assert link.is_symlink() and link.resolve() == data  # the link left as it was
    assert (data / "a.txt").read_text() == "one\n"
    assert (data / "sub" / "b.txt").read_text() == "two\n"


def test_a_cell_link_in_a_cycle_or_to_the_root_is_a_configuration_error(tmp_path: Path) -> None:
    from cellvault import Cell, ConfigError

    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    with pytest.raises(ConfigError, match=r"cycle|cannot be resolved"):
        Cell("crm", [loop])
    root = tmp_path / "root"
    root.symlink_to("/")
    with pytest.raises(ConfigError, match="link to '/'"):
        Cell("crm", [root])


# -- restore: space and fallback -------------------------------------------------------------


def _rewrite_manifest(store: Store, ident: ArchiveId, change: Any) -> None:
    copy = store.backup / ident.cell / f"{ident}.manifest.json.zst"
    body = json.loads(zstandard.ZstdDecompressor().decompress(copy.read_bytes()))
    change(body)
    raw = json.dumps(body).encode()
    packed = zstandard.ZstdCompressor().compress(raw)
    copy.write_bytes(packed)
    sidecar = store.sidecar(ident) | {
        "manifest_size": len(raw),
        "manifest_sha256": hashlib.sha256(packed).hexdigest(),
    }
    store.plant(ident.cell, str(ident), sidecar)


def test_a_restore_that_cannot_fit_is_refused_before_anything_is_touched(store: Store) -> None:
    newest = store.ids("crm")[-1]

    def huge(body: dict[str, Any]) -> None:
        for entry in body["entries"]:
            if entry["type"] == "file":
                entry["size"] = 1 << 60  # more than any file system here holds

    _rewrite_manifest(store, newest, huge)
    before = _tree(store.tmp)
    with pytest.raises(CellvaultError, match="nothing was touched"):
        store.vault().restore(str(newest), cells=["crm"], skip_prebackup=True)
    after = {k: v for k, v in _tree(store.tmp).items() if not k.startswith("backup/logs/")}
    assert after == {k: v for k, v in before.items() if not k.startswith("backup/logs/")}


def test_a_damaged_copy_on_the_first_target_falls_back_to_the_next(tmp_path: Path) -> None:
    from cellvault import TargetSpec

    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    (cell / "a.txt").write_text("one\n")
    first, second = tmp_path / "first", tmp_path / "second"
    vault = make_vault(
        tmp_path / "backup",
        [cell],
        targets=[TargetSpec("first", str(first)), TargetSpec("second", str(second))],
    )
    assert vault.backup().ok
    (ident,) = [p.name.removesuffix(".json") for p in (first / "crm").glob("*[0-9].json")]
    # The first target's sidecar is damaged: the restore reads the second's copy.
    (first / "crm" / f"{ident}.json").write_text("{ truncated")
    (cell / "a.txt").write_text("changed\n")
    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)
    assert report.ok, report
    assert (cell / "a.txt").read_text() == "one\n"
