"""Vault.backup / verify / list: reports per cell and per target, parallel cells,
incrementals, failing cells and failing targets."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import pytest

from cellvault import (
    Cell,
    ConfigError,
    Event,
    Kind,
    LocalTarget,
    Target,
    TargetSpec,
    Vault,
    hookimpl,
)
from cellvault.archive import to_kind
from tests.helpers import SAMPLE, clock, make_vault, snapshot, utc, write_tree


@pytest.fixture
def crm(cells_root: Path) -> Path:
    return write_tree(cells_root / "crm", SAMPLE)


def sidecar_path(backup_dir: Path, archive: str) -> Path:
    cell = archive.split("_")[1]
    return backup_dir / cell / f"{archive}.json"


# -- one cell, one target ------------------------------------------------------


def test_backup_report_per_cell_and_target(crm: Path, backup_dir: Path) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]}, clock=clock(utc(2025, 1, 1, 2, 0)))
    report = vault.backup()

    assert report.ok
    assert report.stamp == "20250101_020000"
    assert report.duration > 0
    (cell,) = report.cells
    assert cell.cell == "crm"
    assert cell.ok and cell.error is None and cell.stage is None
    assert cell.archive == "cell_crm_20250101_020000"
    assert cell.kind == "full" and cell.parent is None
    total = sum(len(v if isinstance(v, bytes) else v.encode()) for v in SAMPLE.values())
    assert cell.files == len(SAMPLE)
    assert cell.bytes_read == total == cell.bytes_total
    assert cell.archive_size > 0
    assert cell.duration > 0
    (outcome,) = cell.targets
    assert outcome.target == "local"
    assert outcome.ok and outcome.error is None and outcome.stage is None
    assert outcome.bytes_stored == cell.archive_size
    assert outcome.verified is True
    assert outcome.duration > 0

    # The archive is on disk in the seed's layout, committed by its sidecar.
    assert (
        backup_dir / "crm" / "cell_crm_20250101_020000.tar.zst"
    ).stat().st_size == cell.archive_size
    assert sidecar_path(backup_dir, cell.archive).is_file()
    # Nothing is left in the spool, and no lock stays behind.
    assert not any((backup_dir / ".cellvault" / "spool").glob("*"))
    assert not any((backup_dir / ".locks").glob("*"))

    data = report.to_dict()
    assert data["ok"] is True
    assert data["cells"][0]["targets"][0]["verified"] is True


def test_verify_after_backup_can_be_turned_off(crm: Path, backup_dir: Path) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]}, verify_after_backup=False, clock=clock())
    report = vault.backup()
    assert report.ok
    assert report.cells[0].targets[0].verified is False


def test_unknown_cell_and_kind_are_config_errors(crm: Path, backup_dir: Path) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]}, clock=clock())
    with pytest.raises(ConfigError, match="unknown cell 'billing'") as info:
        vault.backup(["billing"])
    assert "crm" in str(info.value.hint)
    with pytest.raises(ConfigError, match="neither full nor incremental"):
        vault.backup(kind="differential")
    with pytest.raises(ConfigError, match="unknown target"):
        vault.backup(targets=["s3"])
    assert not backup_dir.exists() or not any(backup_dir.glob("crm/*"))


def test_no_cells_configured_is_a_config_error(backup_dir: Path) -> None:
    vault = make_vault(backup_dir, [])
    with pytest.raises(ConfigError, match="no cells"):
        vault.backup()


# -- several cells ---------------------------------------------------------------


def test_cells_in_parallel_share_one_stamp(cells_root: Path, backup_dir: Path) -> None:
    names = ["crm", "billing", "orders", "auth"]
    cells = {n: [write_tree(cells_root / n, {f"{n}.txt": n * 100})] for n in names}
    seen_threads: set[str] = set()
    lock = threading.Lock()

    def on_event(event: Event) -> None:
        if event.name == "cell.packing":
            with lock:
                seen_threads.add(threading.current_thread().name)

    vault = make_vault(
        backup_dir, cells, jobs=3, on_event=on_event, clock=clock(utc(2025, 3, 4, 5, 6, 7))
    )
    report = vault.backup()
    assert report.ok
    assert [c.cell for c in report.cells] == names
    assert {c.archive for c in report.cells} == {f"cell_{n}_20250304_050607" for n in names}
    assert all(c.archive and c.archive.endswith(report.stamp) for c in report.cells)
    # The cells really ran on the worker pool (one or more "cell" threads).
    assert seen_threads and all(t.startswith("cell") for t in seen_threads)
    listed = vault.list()
    assert sorted(a.id for a in listed) == sorted(c.archive for c in report.cells)


def test_missing_cell_path_fails_that_cell_only(cells_root: Path, backup_dir: Path) -> None:
    crm = write_tree(cells_root / "crm", SAMPLE)
    failures = []

    class Alerts:
        @hookimpl
        def cellvault_backup_failed(self, failure):  # type: ignore[no-untyped-def]
            failures.append(failure)

    vault = make_vault(
        backup_dir,
        {"crm": [crm], "billing": [cells_root / "billing"]},
        plugins=[Alerts()],
        clock=clock(),
    )
    report = vault.backup()
    assert not report.ok
    ok, bad = report.cells
    assert ok.cell == "crm" and ok.ok and ok.archive
    assert bad.cell == "billing" and not bad.ok
    assert bad.stage == "pack"
    assert bad.archive is None
    assert str(cells_root / "billing") in (bad.error or "")
    assert "does not exist" in (bad.error or "")
    assert [c.cell for c in report.failures()] == ["billing"]
    assert [(f.cell, f.stage) for f in failures] == [("billing", "pack")]
    # Only crm's archive was committed; billing left nothing behind.
    assert [a.cell for a in vault.list()] == ["crm"]
    assert not (backup_dir / "billing").exists() or not any((backup_dir / "billing").iterdir())


# -- incrementals -------------------------------------------------------------


def test_incremental_stores_only_changed_files_and_restores_exactly(
    crm: Path, backup_dir: Path, tmp_path: Path
) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]}, clock=clock())
    full = vault.backup(kind="full").cells[0]
    assert full.ok and full.kind == "full" and full.files == len(SAMPLE)

    # Change one file (same size, new content and mtime), add one, delete one.
    (crm / "config.yaml").write_text("service: crm\nreplicas: 3\n")
    os.utime(crm / "config.yaml", (1_700_000_500, 1_700_000_500))
    write_tree(crm, {"uploads/2025/new.txt": "fresh\n"})
    (crm / "db" / "ledger.db").unlink()
    (crm / "link").symlink_to("config.yaml")
    expected = snapshot(crm)

    inc = vault.backup(kind="incremental").cells[0]
    assert inc.ok, inc.error
    assert inc.kind == "incremental"
    assert inc.parent == full.archive
    assert inc.files == 2  # config.yaml and new.txt; the rest is unchanged
    assert inc.bytes_read == len("service: crm\nreplicas: 3\n") + len("fresh\n")
    assert inc.bytes_total > inc.bytes_read
    assert inc.archive_size < full.archive_size

    # A second incremental with nothing changed stores no file at all.
    inc2 = vault.backup(kind="incremental").cells[0]
    assert inc2.ok and inc2.kind == "incremental" and inc2.files == 0
    assert inc2.parent == inc.archive

    listed = {a.id: a for a in vault.list()}
    assert listed[inc2.archive].chain == (full.archive, inc.archive)

    out = tmp_path / "restored"
    result = vault.restore(inc2.archive, into=out)
    assert result.ok, result.error
    assert snapshot(out / "crm" / "crm") == expected
    # The older point in time is still whole.
    old = tmp_path / "old"
    assert vault.restore(full.archive, into=old).ok
    assert (old / "crm" / "crm" / "db" / "ledger.db").exists()
    assert not (old / "crm" / "crm" / "uploads" / "2025" / "new.txt").exists()


def test_first_incremental_is_full_and_says_why(crm: Path, backup_dir: Path) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]}, clock=clock())
    cell = vault.backup(kind="incremental").cells[0]
    assert cell.ok and cell.kind == "full" and cell.parent is None
    assert cell.note and "full" in cell.note


def test_backup_type_from_config_is_the_default_kind(crm: Path, backup_dir: Path) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]}, backup_type="incremental", clock=clock())
    assert vault.backup().cells[0].kind == "full"
    assert vault.backup().cells[0].kind == "incremental"


# -- several targets --------------------------------------------------------------


def two_targets(backup_dir: Path, second: Path) -> list[TargetSpec]:
    return [TargetSpec("local", str(backup_dir)), TargetSpec("nas", str(second))]


def test_backup_to_two_targets(crm: Path, backup_dir: Path, tmp_path: Path) -> None:
    nas = tmp_path / "nas"
    vault = make_vault(
        backup_dir, {"crm": [crm]}, targets=two_targets(backup_dir, nas), clock=clock()
    )
    cell = vault.backup().cells[0]
    assert cell.ok
    assert [(t.target, t.ok, t.verified) for t in cell.targets] == [
        ("local", True, True),
        ("nas", True, True),
    ]
    assert sidecar_path(nas, cell.archive or "").is_file()
    (info,) = vault.list()
    assert info.targets == ("local", "nas")
    report = vault.verify()
    assert report.ok and {r.target for r in report.results} == {"local", "nas"}


def test_target_failing_at_upload_fails_that_target_only(
    crm: Path, backup_dir: Path, tmp_path: Path
) -> None:
    nas = tmp_path / "nas"
    nas.mkdir()
    (nas / "crm").write_text("a file where the cell's folder should be")
    failures = []

    class Alerts:
        @hookimpl
        def cellvault_backup_failed(self, failure):  # type: ignore[no-untyped-def]
            failures.append(failure)

    vault = make_vault(
        backup_dir,
        {"crm": [crm]},
        targets=two_targets(backup_dir, nas),
        plugins=[Alerts()],
        clock=clock(),
    )
    report = vault.backup()
    assert not report.ok
    cell = report.cells[0]
    assert not cell.ok
    assert cell.archive  # the archive was made, and committed where it could be
    local, bad = cell.targets
    assert local.ok and local.verified
    assert not bad.ok and bad.target == "nas" and bad.stage == "upload"
    assert "nas" in (bad.error or "")
    assert cell.stage == "upload"
    assert (cell.error or "").startswith("target nas:")
    assert (cell.error or "").count("target nas:") == 1
    assert sidecar_path(backup_dir, cell.archive).is_file()
    assert [(f.stage, f.cell, f.target) for f in failures] == [("upload", "crm", "nas")]
    # Only the local copy counts.
    (info,) = vault.list()
    assert info.targets == ("local",)


def test_target_that_cannot_be_locked_fails_that_target_only(
    crm: Path, backup_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file: nothing can be created below it")
    billing = write_tree(tmp_path / "cells" / "billing", {"x": "y"})
    vault = make_vault(
        backup_dir,
        {"crm": [crm], "billing": [billing]},
        targets=[TargetSpec("local", str(backup_dir)), TargetSpec("nas", str(blocker / "nas"))],
        clock=clock(),
    )
    report = vault.backup()
    assert not report.ok
    for cell in report.cells:
        assert not cell.ok and cell.archive
        local, nas = cell.targets
        assert local.ok and local.verified
        assert not nas.ok and nas.stage == "lock" and "nas" in (nas.error or "")
        assert cell.stage == "lock"
    assert sorted(a.cell for a in vault.list(targets=["local"])) == ["billing", "crm"]


def test_every_target_failing_fails_the_cell(crm: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    vault = make_vault(blocker / "backup", {"crm": [crm]}, clock=clock())
    report = vault.backup()
    (cell,) = report.cells
    assert not cell.ok
    assert cell.stage == "lock"
    assert cell.archive is None
    assert [(t.target, t.stage) for t in cell.targets] == [("local", "lock")]


def test_incremental_with_a_broken_second_target(
    crm: Path, backup_dir: Path, tmp_path: Path
) -> None:
    nas = tmp_path / "nas"
    vault = make_vault(
        backup_dir, {"crm": [crm]}, targets=two_targets(backup_dir, nas), clock=clock()
    )
    assert vault.backup().ok
    # The NAS loses its cell folder to a file: the incremental still goes to local.
    for child in (nas / "crm").iterdir():
        child.unlink()
    (nas / "crm").rmdir()
    (nas / "crm").write_text("x")
    write_tree(crm, {"new.txt": "n"})
    cell = vault.backup(kind="incremental").cells[0]
    local, bad = cell.targets
    assert local.ok and cell.kind == "incremental" and cell.files == 1
    assert not bad.ok and bad.stage == "upload"


# -- verify -----------------------------------------------------------------------


class CorruptingTarget(LocalTarget):
    """Stores archive data with one byte flipped: the verify after backup must notice."""

    def put_file(self, local: Path, key: str) -> None:
        super().put_file(local, key)
        if key.endswith(".tar.zst"):
            path = self._path(key)
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.unlink()  # it may be a hard link to the spool file
            path.write_bytes(bytes(data))


class CorruptingPlugin:
    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> Target | None:
        if spec.scheme == "corrupt":
            return CorruptingTarget(TargetSpec(spec.name, spec.url.removeprefix("corrupt://")))
        return None


def test_verify_after_backup_uncommits_a_bad_copy(
    crm: Path, backup_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    vault = make_vault(
        backup_dir,
        {"crm": [crm]},
        targets=[TargetSpec("local", str(backup_dir)), TargetSpec("bad", f"corrupt://{bad}")],
        plugins=[CorruptingPlugin()],
        clock=clock(),
    )
    cell = vault.backup().cells[0]
    local, broken = cell.targets
    assert local.ok and local.verified
    assert not broken.ok and broken.stage == "verify" and not broken.verified
    assert cell.stage == "verify"
    # The bad copy does not count: no sidecar there.
    assert not sidecar_path(bad, cell.archive or "").exists()
    assert sidecar_path(backup_dir, cell.archive or "").exists()
    assert vault.list()[0].targets == ("local",)


def test_verify_finds_a_flipped_byte(crm: Path, backup_dir: Path) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]}, clock=clock())
    archive = vault.backup().cells[0].archive
    assert vault.verify().ok
    data = backup_dir / "crm" / f"{archive}.tar.zst"
    raw = bytearray(data.read_bytes())
    raw[-20] ^= 0x01
    data.unlink()
    data.write_bytes(bytes(raw))
    report = vault.verify()
    assert not report.ok
    (result,) = report.results
    assert result.archive == archive and result.target == "local"
    assert result.error


def test_verify_by_date_and_all(crm: Path, backup_dir: Path) -> None:
    vault = make_vault(
        backup_dir, {"crm": [crm]}, clock=clock(utc(2025, 1, 1, 2, 0), dt.timedelta(hours=6))
    )
    ids = [vault.backup().cells[0].archive for _ in range(3)]
    assert [r.archive for r in vault.verify().results] == [ids[-1]]
    assert [r.archive for r in vault.verify(select="20250101_0800").results] == [ids[1]]
    assert [r.archive for r in vault.verify(all_archives=True).results] == ids


# -- events ------------------------------------------------------------------------


def test_events_follow_the_run_and_a_failing_callback_changes_nothing(
    crm: Path, backup_dir: Path
) -> None:
    names: list[str] = []

    def on_event(event: Event) -> None:
        names.append(event.name)
        raise RuntimeError("a careless callback")

    vault = make_vault(backup_dir, {"crm": [crm]}, on_event=on_event, clock=clock())
    report = vault.backup()
    assert report.ok
    for expected in (
        "backup.started",
        "cell.packing",
        "archive.packed",
        "archive.stored",
        "archive.verified",
        "cell.finished",
        "backup.finished",
    ):
        assert expected in names
    assert names[0] == "backup.started" and names[-1] == "backup.finished"


def test_vault_from_env_and_toml(crm: Path, backup_dir: Path, tmp_path: Path) -> None:
    env = {
        "BACKUP_DIR": str(backup_dir),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(crm.parent),
    }
    vault = Vault.from_env(env, load_entry_points=False, clock=clock())
    assert vault.backup().ok
    toml = tmp_path / "cellvault.toml"
    toml.write_text(f'backup_dir = "{backup_dir}"\n[cells.crm]\npaths = ["{crm}"]\n')
    vault2 = Vault.from_toml(toml, load_entry_points=False, clock=clock(utc(2025, 6, 1)))
    assert vault2.backup().ok
    assert len(vault2.list()) == 2
    assert [Cell("crm", [crm])] == list(vault2.config.cells)


def test_any_clock_gives_utc_whole_second_stamps(crm: Path, backup_dir: Path) -> None:
    shanghai = dt.timezone(dt.timedelta(hours=8))
    times = iter(
        [
            dt.datetime(2025, 1, 1, 10, 0, 0, 123456, tzinfo=shanghai),  # 02:00:00 UTC
            dt.datetime(2025, 1, 1, 3, 0, 0, 999999),  # naive: taken as UTC
        ]
    )
    vault = make_vault(backup_dir, {"crm": [crm]}, clock=lambda: next(times))
    first = vault.backup()
    assert first.ok and first.stamp == "20250101_020000"
    assert first.cells[0].archive == "cell_crm_20250101_020000"
    second = vault.backup()
    assert second.ok and second.cells[0].archive == "cell_crm_20250101_030000"


def test_verify_and_list_by_cell_name(crm: Path, backup_dir: Path) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]}, clock=clock())
    archive = vault.backup().cells[0].archive
    with pytest.raises(ConfigError, match="unknown cell 'crn'") as info:
        vault.verify(["crn"])
    assert "crm" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="invalid cell name"):
        vault.list(["../etc"])
    assert vault.list(["billing"]) == []
    # A DR site with no cells configured reads the archives it holds.
    dr = make_vault(backup_dir, [])
    assert [r.archive for r in dr.verify(["crm"]).results] == [archive]
    assert [r.archive for r in dr.verify().results] == [archive]
    assert [a.id for a in dr.list()] == [archive]


def test_failure_lines_name_every_failure(
    cells_root: Path, backup_dir: Path, tmp_path: Path
) -> None:
    from cellvault.vault import iter_failures

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    nas = tmp_path / "nas"
    nas.mkdir()
    (nas / "crm").write_text("x")
    crm = write_tree(cells_root / "crm", SAMPLE)
    vault = make_vault(
        backup_dir,
        {"crm": [crm], "ghost": [cells_root / "ghost"]},
        targets=[
            TargetSpec("local", str(backup_dir)),
            TargetSpec("nas", str(nas)),
            TargetSpec("usb", str(blocker / "usb")),
        ],
        clock=clock(),
    )
    lines = list(iter_failures(vault.backup()))
    assert any(line.startswith("cell crm: upload to target nas failed") for line in lines)
    assert any(line.startswith("cell crm: lock to target usb failed") for line in lines)
    assert any(line.startswith("cell ghost: lock to target usb failed") for line in lines)
    assert any(line.startswith("cell ghost: pack failed") for line in lines)
    assert not any(line.startswith("cell crm: upload failed") for line in lines)
    assert len(lines) == 4


# -- the API's edges: one name is one name ------------------------------------


def test_a_single_cell_name_is_one_cell_not_its_characters(
    crm: Path, cells_root: Path, backup_dir: Path
) -> None:
    billing = write_tree(cells_root / "billing", SAMPLE)
    vault = make_vault(backup_dir, {"crm": [crm], "billing": [billing]})
    report = vault.backup(cells="crm", kind="full", targets="local")
    assert [c.cell for c in report.cells] == ["crm"]
    assert report.ok
    assert [a.cell for a in vault.list("crm")] == ["crm"]
    assert {c.cell for c in vault.status(cells="crm").cells} == {"crm"}
    assert vault.verify("crm", level="quick").ok


@pytest.mark.parametrize("bad", [42, [b"crm"], ["crm", None]])
def test_cells_that_are_not_names_are_refused_at_the_call(
    crm: Path, backup_dir: Path, bad: object
) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]})
    with pytest.raises(TypeError, match="cells must be"):
        vault.backup(cells=bad)  # type: ignore[arg-type]
    assert not (backup_dir / "crm").exists()


def test_kinds_are_typed_throughout(crm: Path, backup_dir: Path) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]})
    kind: Kind = "full"
    report = vault.backup("crm", kind=kind)
    assert report.cells[0].kind == "full"
    (info,) = vault.list("crm")
    assert info.kind == "full"
    with pytest.raises(ConfigError, match="backup kind 'weekly' is neither full nor incremental"):
        vault.backup("crm", kind="weekly")  # type: ignore[arg-type]
    assert to_kind("incremental") == "incremental"
