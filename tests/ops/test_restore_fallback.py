"""A damaged or missing data copy found while staging falls back to the next target.

Issue 18 (item 6): two local targets hold the same archives; the copy on the
first is damaged (bytes flipped: a digest mismatch; cut short; gone). The
restore stages from the second instead, says which copy was damaged, and
the live data is touched only by the final swap of a good copy. With no
good copy anywhere, the restore fails and the live data is as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
