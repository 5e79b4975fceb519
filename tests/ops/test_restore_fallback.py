"""A damaged or missing data copy found while staging falls back to the next target.

Issue 18 (item 6): two local targets hold the same archives; the copy on the
first is damaged (bytes flipped: a digest mismatch; cut short; gone). The
restore stages from the second instead, says which copy was damaged, and
the live data is touched only by the final swap of a good copy. With no
good copy anywhere, the restore fails and the live data is as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cellvault import TargetSpec, Vault
from tests.archive_helpers import make_vault, snapshot


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _remove(path: Path) -> None:
    path.unlink()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "digest mismatch": _flip,
    "truncated": _truncate,
    "missing": _remove,
}


def two_targets(tmp_path: Path) -> tuple[Vault, Path, Path, Path]:
    cell = tmp_path / "cells" / "crm"
    (cell / "sub").mkdir(parents=True)
    (cell / "a.txt").write_text("one\n")
    (cell / "sub" / "b.bin").write_bytes(bytes(range(256)) * 400)
    first, second = tmp_path / "first", tmp_path / "second"
    vault = make_vault(
        tmp_path / "backup",
        [cell],
        targets=[TargetSpec("first", str(first)), TargetSpec("second", str(second))],
    )
    assert vault.backup().ok
    return vault, cell, first, second


def data_file(target: Path) -> Path:
    (data,) = (target / "crm").glob("cell_crm_*.tar.*")
    return data


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_data_copy_on_the_first_target_falls_back_to_the_next(
    tmp_path: Path, damage: str
) -> None:
    vault, cell, first, _ = two_targets(tmp_path)
    backed_up = snapshot(cell)
    damaged = data_file(first)
    DAMAGE[damage](damaged)
    first_before = snapshot(first / "crm")
    (cell / "a.txt").write_text("changed\n")
    (cell / "new.txt").write_text("made after the backup\n")

    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)

    assert report.ok, report
    assert snapshot(cell) == backed_up
    (result,) = report.cells
    (warning,) = [w for w in result.warnings if "damaged or missing" in w]
    assert "on target first is damaged or missing" in warning
    assert "restored from target second instead" in warning
    # The damaged copy is left as it was (reported, not repaired or deleted).
    assert snapshot(first / "crm") == first_before


def test_with_every_copy_damaged_the_restore_fails_and_the_live_data_stays(
    tmp_path: Path,
) -> None:
    vault, cell, first, second = two_targets(tmp_path)
    _flip(data_file(first))
    _truncate(data_file(second))
    (cell / "a.txt").write_text("live, newer than the backup\n")
    live = snapshot(cell)

    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)

    assert not report.ok
    assert snapshot(cell) == live
    assert not [p for p in cell.parent.iterdir() if p.name != "crm"]  # no staging left behind


def test_a_prune_of_the_fallback_target_keeps_what_the_fallback_reads(tmp_path: Path) -> None:
    """The copy read instead is held by a read lease on its own target, like the first."""
    from cellvault import Cell, Config
    from cellvault.retention import PruneReport, RetentionPolicy
    from tests.archive_helpers import TickingClock

    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    (cell / "a.txt").write_text("as it was at the first backup\n")
    first, second = tmp_path / "first", tmp_path / "second"
    pruned: list[PruneReport] = []

    def config() -> Config:
        return Config(
            backup_dir=tmp_path / "backup",
            cells=[Cell("crm", [cell])],
            targets=[TargetSpec("first", str(first)), TargetSpec("second", str(second))],
            # Only the newest archive is kept: a prune deletes the older one unless held.
            retention=RetentionPolicy(keep_full_days=None, keep_incremental_days=None),
        )

    def on_event(event: Any) -> None:
        # While the restore reads the second copy (the first proved damaged), a prune
        # of that target runs, from another process's point of view: its own vault.
        if event.name == "restore.reading" and event.target == "second" and not pruned:
            pruner = Vault(config(), load_entry_points=False, clock=TickingClock())
            pruned.append(pruner.prune(targets=["second"]))

    vault = Vault(config(), load_entry_points=False, clock=TickingClock(), on_event=on_event)
    older = vault.backup(kind="full").cells[0].archive
    (cell / "a.txt").write_text("as it was at the second backup\n")
    newer = vault.backup(kind="full").cells[0].archive
    assert older is not None and newer is not None
    (data,) = (first / "crm").glob(f"{older}.tar.*")
    _flip(data)
    (cell / "a.txt").write_text("live\n")

    report = vault.restore(older, cells=["crm"], skip_prebackup=True)

    assert report.ok, report
    assert (cell / "a.txt").read_text() == "as it was at the first backup\n"
    (result,) = report.cells
    assert any("restored from target second instead" in w for w in result.warnings)
    (prune,) = pruned
    (done,) = prune.results
    assert (done.target, done.cell, done.ok, list(done.removed)) == ("second", "crm", True, [])
    (held,) = [d for d in done.decisions if str(d.id) == older]
    assert held.keep and held.reasons[-1].startswith("held by restore on host ")
    # Still there, both; the read lease is gone with the restore.
    assert sorted(a.id for a in vault.list(targets=["second"])) == [older, newer]
    assert [p.name for p in (second / ".locks").iterdir()] == []
    # Unheld now, the next prune of the second target deletes the older archive.
    (after,) = vault.prune(targets=["second"]).results
    assert [str(d.id) for d in after.removed] == [older]


# -- killed while falling back (SIGKILL), settled by the next run -----------------------

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cellvault import Cell, Config, TargetSpec, Vault
    from tests.archive_helpers import TickingClock

    backup, cell, first, second, at = sys.argv[1:6]

    def on_event(event):
        # Only once the restore reads the second copy: the first proved damaged.
        if event.name == at and (at != "restore.reading" or event.target == "second"):
            os.kill(os.getpid(), signal.SIGKILL)

    config = Config(
        backup_dir=Path(backup), cells=[Cell("crm", [Path(cell)])],
        targets=[TargetSpec("first", first), TargetSpec("second", second)],
    )
    vault = Vault(config, load_entry_points=False, clock=TickingClock(), on_event=on_event)
    vault.restore("latest", cells=["crm"], skip_prebackup=True)
    sys.exit(3)  # not killed
    """
)


@pytest.mark.parametrize(
    ("event", "expect"),
    [("restore.reading", "live"), ("restore.fetched", "live"), ("restore.swapped", "backed up")],
)
def test_a_restore_killed_while_falling_back_is_settled_by_the_next_run(
    tmp_path: Path, event: str, expect: str
) -> None:
    vault, cell, first, second = two_targets(tmp_path)
    backed_up = snapshot(cell)
    _flip(data_file(first))
    (cell / "a.txt").write_text("live, newer than the backup\n")
    live = snapshot(cell)
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(repo)]),
    }
    argv = [sys.executable, "-c", KILLER, str(tmp_path / "backup"), str(cell), str(first)]
    done = subprocess.run(
        [*argv, str(second), event], env=env, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    # The next command on the cell (a backup) settles what the killed restore left.
    assert vault.backup().ok
    assert snapshot(cell) == (live if expect == "live" else backed_up)
    left = [p.name for p in cell.parent.iterdir() if p.name != "crm"]
    if expect == "live":
        # Killed while staging, before the journal: only staged data is left, never live data.
        assert all(name.startswith(".cellvault-restore-") for name in left)
    else:
        # No safety backup holds the replaced live data: it is kept, whole, and named.
        (kept,) = left
        assert kept.startswith(".cellvault-replaced-crm-")
        assert snapshot(cell.parent / kept) == live
