"""Vault.restore: choosing the archive, the safety backup, staging and the all-or-nothing swap."""

from __future__ import annotations

import datetime as dt
import errno
import io
from pathlib import Path
from typing import IO

import pytest

from cellvault import (
    ArchiveNotFound,
    ConfigError,
    RestoreError,
    Selector,
    TargetSpec,
    Vault,
    hookimpl,
)
from cellvault.targets.local import LocalTarget
from tests.helpers import SAMPLE, make_vault, snapshot, times_clock, utc, write_tree

#: Three runs, as the seed's cron would make them: a full at 02:00, one at
#: 08:00, and the next day's 02:00.
TIMES = [utc(2025, 1, 1, 2, 0, 0), utc(2025, 1, 1, 8, 0, 0), utc(2025, 1, 2, 2, 0, 0)]
IDS = ["cell_crm_20250101_020000", "cell_crm_20250101_080000", "cell_crm_20250102_020000"]


def version(n: int) -> dict[str, bytes | str]:
    return {
        **SAMPLE,
        "config.yaml": f"service: crm\nversion: {n}\n",
        f"only-in-v{n}.txt": f"v{n}\n",
    }


@pytest.fixture
def history(cells_root: Path, backup_dir: Path) -> tuple[Vault, Path, Path, dict[str, dict]]:
    """Cells crm and billing, backed up three times with different content each time.

    Returns the vault, crm's path, billing's path and, per archive id of crm,
    the snapshot of crm at that time.
    """
    crm = cells_root / "crm"
    billing = cells_root / "billing"
    vault = make_vault(backup_dir, {"crm": [crm], "billing": [billing]}, clock=times_clock(TIMES))
    states = {}
    for n, ident in enumerate(IDS, 1):
        for path in crm.glob("only-in-v*.txt"):
            path.unlink()
        write_tree(crm, version(n))
        write_tree(billing, {"ledger.csv": f"ledger {n}\n", f"invoices/inv-{n}.csv": f"{n}\n"})
        states[ident] = snapshot(crm)
        report = vault.backup()
        assert report.ok, report.to_dict()
        assert report.cells[0].archive == ident
    return vault, crm, billing, states


def staging_left(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith(".cellvault")]


# -- choosing the archive --------------------------------------------------------


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        ("latest", IDS[2]),
        (IDS[0], IDS[0]),
        (IDS[1], IDS[1]),
        ("20250101_0200", IDS[0]),  # the seed's RESTORE_DATE style
        ("20250101_08", IDS[1]),
        ("20250101", IDS[1]),  # a day: its newest archive
        ("20250102_020000", IDS[2]),
        ("2025-01-01T09:30:00Z", IDS[1]),  # newest at or before
        ("2025-01-01T08:00:00", IDS[1]),  # at: inclusive, UTC when no zone
        ("2025-01-01T10:00:00+08:00", IDS[0]),  # 02:00 UTC
        ("2030-01-01T00:00:00Z", IDS[2]),
    ],
)
def test_restore_picks_the_archive(history, tmp_path: Path, select: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    vault, _, _, states = history
    out = tmp_path / "out"
    report = vault.restore(select, cells=["crm"], into=out)
    assert report.ok, report.to_dict()
    (cell,) = report.cells
    assert cell.archive == expected
    assert cell.target == "local"
    assert cell.destination == (str(out / "crm" / "crm"),)
    assert cell.safety_backup is None  # nothing live is replaced with into=
    assert snapshot(out / "crm" / "crm") == states[expected]
    assert cell.files == sum(1 for kind, _, _ in states[expected].values() if kind == "file")


def test_restore_with_a_selector_object(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vault = history[0]
    report = vault.restore(
        Selector.at_or_before(dt.datetime(2025, 1, 1, 23, 59)), cells=["crm"], into=tmp_path / "o"
    )
    assert report.cells[0].archive == IDS[1]


def test_restore_all_cells_or_one(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vault, _, _, _ = history
    every = vault.restore("20250101_0800", into=tmp_path / "all")
    assert every.ok
    assert [(c.cell, c.archive) for c in every.cells] == [
        ("crm", IDS[1]),
        ("billing", "cell_billing_20250101_080000"),
    ]
    assert (tmp_path / "all" / "billing" / "billing" / "ledger.csv").read_text() == "ledger 2\n"
    one = vault.restore("20250101_0800", cells=["billing"], into=tmp_path / "one")
    assert [c.cell for c in one.cells] == ["billing"]
    assert not (tmp_path / "one" / "crm").exists()


# -- into the cells' own paths, with the safety backup ------------------------------


def test_restore_in_place_takes_a_safety_backup_first(history, cells_root: Path) -> None:  # type: ignore[no-untyped-def]
    vault, crm, billing, states = history
    # Damage the live data after the last backup.
    (crm / "config.yaml").write_text("broken\n")
    (crm / "stray.tmp").write_text("written after the backup\n")
    damaged = snapshot(crm)
    billing_before = snapshot(billing)

    report = vault.restore("20250101_0800", cells=["crm"])
    assert report.ok, report.to_dict()
    (cell,) = report.cells
    assert cell.archive == IDS[1]
    assert cell.destination == (str(crm),)
    assert snapshot(crm) == states[IDS[1]]  # exactly: the stray file is gone
    assert snapshot(billing) == billing_before  # the other cell was not touched
    assert staging_left(cells_root) == []

    # The safety backup holds the damaged state and says why it was made.
    assert cell.safety_backup and cell.safety_backup.startswith("cell_crm_")
    listed = {a.id: a for a in vault.list(["crm"])}
    safety = listed[cell.safety_backup]
    assert safety.reason == "pre-restore" and safety.kind == "full"
    assert safety.id > IDS[2]
    undo = vault.restore(cell.safety_backup, cells=["crm"], skip_prebackup=True)
    assert undo.ok and undo.cells[0].safety_backup is None
    assert snapshot(crm) == damaged


def test_skip_prebackup_makes_no_safety_backup(history) -> None:  # type: ignore[no-untyped-def]
    vault, crm, _, states = history
    before = len(vault.list())
    report = vault.restore(IDS[0], cells=["crm"], skip_prebackup=True)
    assert report.ok
    assert report.cells[0].safety_backup is None
    assert len(vault.list()) == before
    assert snapshot(crm) == states[IDS[0]]


def test_restore_when_the_live_data_is_gone(history) -> None:  # type: ignore[no-untyped-def]
    import shutil

    vault, crm, _, states = history
    shutil.rmtree(crm)
    report = vault.restore("latest", cells=["crm"])
    assert report.ok
    assert report.cells[0].safety_backup is None  # nothing to save
    assert snapshot(crm) == states[IDS[2]]


def test_failing_safety_backup_aborts_the_restore(
    history, backup_dir: Path, cells_root: Path
) -> None:  # type: ignore[no-untyped-def]
    vault, crm, _, _ = history
    (crm / "config.yaml").write_text("current data\n")
    live = snapshot(crm)
    inode = crm.stat().st_ino
    # The spool of the backup directory is unusable: the safety backup cannot be packed.
    spool_parent = backup_dir / ".cellvault"
    for path in sorted(spool_parent.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()  # the state file lives there too
    spool_parent.rmdir()
    spool_parent.write_text("not a directory")

    with pytest.raises(RestoreError, match="safety backup of cell crm failed") as info:
        vault.restore(IDS[0], cells=["crm"])
    assert "RESTORE_SKIP_PREBACKUP" in (info.value.hint or "")
    assert snapshot(crm) == live
    assert crm.stat().st_ino == inode
    assert staging_left(cells_root) == []


def test_safety_backup_failing_on_the_primary_target(
    cells_root: Path, backup_dir: Path, tmp_path: Path
) -> None:
    """The archive is read from the NAS, but the local target cannot take the safety backup."""
    crm = write_tree(cells_root / "crm", SAMPLE)
    nas = tmp_path / "nas"
    targets = [TargetSpec("local", str(backup_dir)), TargetSpec("nas", str(nas))]
    vault = make_vault(backup_dir, {"crm": [crm]}, targets=targets, clock=times_clock(TIMES))
    assert vault.backup().ok
    # The local cell folder is replaced by a file: neither readable nor writable.
    for path in (backup_dir / "crm").iterdir():
        path.unlink()
    (backup_dir / "crm").rmdir()
    (backup_dir / "crm").write_text("x")
    (crm / "config.yaml").write_text("live\n")
    live = snapshot(crm)

    with pytest.raises(RestoreError, match="safety backup"):
        vault.restore("latest", cells=["crm"])
    assert snapshot(crm) == live
    # With approval, the restore goes ahead from the NAS.
    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)
    assert report.ok and report.cells[0].target == "nas"
    assert (crm / "config.yaml").read_text() == SAMPLE["config.yaml"]


# -- refused before anything is touched ----------------------------------------------


def test_unknown_cell_lists_the_configured_ones(history) -> None:  # type: ignore[no-untyped-def]
    vault, _, _, _ = history
    with pytest.raises(ConfigError, match="unknown cell 'orders'") as info:
        vault.restore("latest", cells=["orders"])
    assert "crm" in (info.value.hint or "") and "billing" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="invalid cell name"):
        vault.restore("latest", cells=["../etc"])


@pytest.mark.parametrize(
    "bad", ["2025-13-01", "20251301", "20250101_25", "yesterday", "cell_crm_2025", ""]
)
def test_malformed_date_is_a_config_error(history, bad: str) -> None:  # type: ignore[no-untyped-def]
    vault, _, _, _ = history
    with pytest.raises(ConfigError):
        vault.restore(bad, cells=["crm"])


def test_date_with_no_archive_names_the_nearest(history) -> None:  # type: ignore[no-untyped-def]
    vault, crm, _, _ = history
    live = snapshot(crm)
    with pytest.raises(ArchiveNotFound, match="20250101_0300") as info:
        vault.restore("20250101_0300", cells=["crm"])
    hint = info.value.hint or ""
    assert "nearest available" in hint
    assert IDS[0] in hint and IDS[1] in hint
    with pytest.raises(ArchiveNotFound):
        vault.restore("2024-12-31T00:00:00Z")
    with pytest.raises(ArchiveNotFound):
        vault.restore("cell_crm_20250101_020001", cells=["crm"])
    assert snapshot(crm) == live
    # Nothing was planned, so no safety backup was taken either.
    assert all(a.reason == "scheduled" for a in vault.list())


def test_cell_without_any_archive(cells_root: Path, backup_dir: Path) -> None:
    crm = write_tree(cells_root / "crm", SAMPLE)
    vault = make_vault(backup_dir, {"crm": [crm]}, clock=times_clock(TIMES))
    with pytest.raises(ArchiveNotFound) as info:
        vault.restore("latest")
    assert "no archive" in (info.value.hint or "")


# -- restore hooks and the all-or-nothing swap ------------------------------------------


class Hook:
    """A per-cell restore hook, like the seed's restore_hook_<cell>.sh."""

    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.fail = fail
        self.calls: list[tuple[str, str, Path, set[str]]] = []
        self.reports: list = []

    @hookimpl
    def cellvault_restore_cell(self, cell, meta, staging):  # type: ignore[no-untyped-def]
        self.calls.append((cell.name, str(meta.id), staging, {p.name for p in staging.iterdir()}))
        if cell.name in self.fail:
            raise RuntimeError(f"import of {cell.name} failed")
        (staging / cell.paths[0].name / "RESTORED_BY_HOOK").write_text(str(meta.id))

    @hookimpl
    def cellvault_after_restore(self, report):  # type: ignore[no-untyped-def]
        self.reports.append(report)


def hooked(history, hook: Hook) -> Vault:  # type: ignore[no-untyped-def]
    vault = history[0]
    return make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        plugins=[hook],
        clock=times_clock([utc(2025, 2, 1)]),
    )


def test_restore_hook_runs_on_the_staged_tree(history) -> None:  # type: ignore[no-untyped-def]
    hook = Hook()
    vault = hooked(history, hook)
    _, crm, _, _ = history
    report = vault.restore(IDS[1], cells=["crm"], skip_prebackup=True)
    assert report.ok
    ((name, archive, staging, roots),) = hook.calls
    assert (name, archive, roots) == ("crm", IDS[1], {"crm"})
    assert not staging.exists()
    # What the hook wrote into the staged tree went live with it.
    assert (crm / "RESTORED_BY_HOOK").read_text() == IDS[1]
    assert hook.reports == [report]


def test_failing_restore_hook_leaves_live_data_untouched(history, cells_root: Path) -> None:  # type: ignore[no-untyped-def]
    hook = Hook(fail={"crm"})
    vault = hooked(history, hook)
    _, crm, _, _ = history
    (crm / "config.yaml").write_text("live and precious\n")
    live = snapshot(crm)
    inode = crm.stat().st_ino

    report = vault.restore(IDS[0], cells=["crm"])
    assert not report.ok
    (cell,) = report.cells
    assert not cell.ok and cell.stage == "hook"
    assert "import of crm failed" in (cell.error or "")
    assert report.error and "crm" in report.error
    assert snapshot(crm) == live
    assert crm.stat().st_ino == inode
    ((_, _, staging, _),) = hook.calls
    assert not staging.exists()
    assert staging_left(cells_root) == []
    assert hook.reports == [report]


def test_one_failing_cell_means_no_cell_is_swapped(history, cells_root: Path) -> None:  # type: ignore[no-untyped-def]
    hook = Hook(fail={"billing"})
    vault = hooked(history, hook)
    _, crm, billing, _ = history
    before = {p: (snapshot(p), p.stat().st_ino) for p in (crm, billing)}

    report = vault.restore("20250101_0200")
    assert not report.ok
    by_cell = {c.cell: c for c in report.cells}
    assert by_cell["billing"].stage == "hook" and not by_cell["billing"].ok
    assert by_cell["crm"].stage == "aborted" and not by_cell["crm"].ok
    assert "aborted" in (report.error or "")
    assert {p: (snapshot(p), p.stat().st_ino) for p in (crm, billing)} == before
    assert staging_left(cells_root) == []
    data = report.to_dict()
    assert data["ok"] is False and data["error"]


def test_restore_into_needs_no_configured_cell(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A DR site restores archives of cells it does not run, into a directory."""
    vault, _, _, states = history
    dr = make_vault(vault.config.backup_dir, [], clock=times_clock([utc(2025, 3, 1)]))
    report = dr.restore("latest", cells=["crm"], into=tmp_path / "dr")
    assert report.ok
    assert snapshot(tmp_path / "dr" / "crm" / "crm") == states[IDS[2]]


def test_a_destination_that_cannot_be_staged_fails_cleanly(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One cell's staging directory cannot be made: a report, not a crash, and no debris."""
    vault, _, _, _ = history
    out = tmp_path / "out"
    out.mkdir()
    (out / "billing").write_text("a file where billing's folder would go")
    report = vault.restore("latest", into=out)
    assert not report.ok
    by_cell = {c.cell: c for c in report.cells}
    assert by_cell["billing"].stage == "staging" and by_cell["billing"].error
    assert by_cell["crm"].stage == "aborted"
    # crm's folder, made for its staging, went with it: only the file is there.
    assert sorted(p.name for p in out.rglob("*")) == ["billing"]


def test_a_failed_restore_into_a_new_folder_leaves_no_folder(history, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The folders made on the way to the destination go when the restore fails."""
    vault, _, _, _ = history
    data = sorted((vault.config.backup_dir / "crm").glob("*.tar.zst"))[-1]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # damaged: the restore fails while it reads
    data.write_bytes(bytes(raw))
    where = tmp_path / "restores"
    (where / "keep").mkdir(parents=True)
    report = vault.restore("latest", cells=["crm"], into=where / "new" / "place")
    assert not report.ok
    assert [p.name for p in where.rglob("*")] == ["keep"]


def test_a_restore_whose_files_do_not_fit_is_refused_before_anything_is_staged(
    history: tuple[Vault, Path, Path, dict[str, dict]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The manifest's file sizes, by root, against the free space where each root goes."""
    import shutil

    from cellvault.ops import plan as plan_module

    vault, crm, _, _ = history
    need = sum(p.stat().st_size for p in crm.rglob("*") if p.is_file() and not p.is_symlink())
    free = need + plan_module.SPACE_MARGIN - 1  # one byte short
    real = shutil.disk_usage

    def usage(path: object) -> object:
        return real(path)._replace(free=free)  # type: ignore[arg-type]

    monkeypatch.setattr(plan_module.shutil, "disk_usage", usage)
    out = tmp_path / "out"
    with pytest.raises(RestoreError) as info:
        vault.restore("latest", cells=["crm"], into=out)
    assert f"restoring archive {IDS[2]} needs {need} bytes on the file system of " in str(
        info.value
    )
    assert f"which has {free} free; nothing was touched" in str(info.value)
    assert not out.exists()
    free += 1  # just enough
    assert vault.restore("latest", cells=["crm"], into=out).ok


class FailingDisk:
    """Makes the "local" target's archive reads fail with an I/O error after their first KiB."""

    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> LocalTarget | None:
        if spec.name != "local":
            return None

        class Failing(io.RawIOBase):
            def __init__(self, raw: IO[bytes]) -> None:
                self.raw = raw

            def readable(self) -> bool:
                return True

            def read(self, size: int = -1) -> bytes:
                if self.raw.tell() >= 1024:
                    raise OSError(errno.EIO, "Input/output error")
                return self.raw.read(min(1024, size if size >= 0 else 1024))

            def close(self) -> None:
                self.raw.close()
                super().close()

        class Disk(LocalTarget):
            def open_read(self, key: str) -> IO[bytes]:
                raw = super().open_read(key)
                return Failing(raw) if key.endswith(".tar.zst") else raw  # type: ignore[return-value]

        return Disk(spec)


def test_a_read_that_fails_midway_is_the_targets_error_not_a_damaged_archive(history) -> None:  # type: ignore[no-untyped-def]
    vault, _, _, _ = history
    failing = Vault(vault.config, load_entry_points=False, plugins=[FailingDisk()])
    report = failing.restore("latest", cells=["crm"], into=vault.config.backup_dir.parent / "out")
    assert not report.ok
    (crm,) = report.cells
    assert crm.error is not None
    assert crm.error.startswith("target local: cannot read archive cell_crm_")
    assert "(OSError: [Errno 5] Input/output error)" in crm.error
    assert "damaged" not in crm.error
    verified = failing.verify(level="full", cells=["crm"])
    assert not verified.ok
