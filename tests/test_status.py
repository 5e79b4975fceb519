"""status: the newest archive per cell and target, its age, the last verify; exit codes for monitors."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from cellvault import TargetSpec, Vault
from cellvault.cli import cli
from tests.helpers import SAMPLE, make_vault, times_clock, utc, write_tree

T0 = utc(2025, 1, 1, 2)


def _vault(tmp_path: Path, times: list[dt.datetime], **kwargs: Any) -> Vault:
    cells = {c: [write_tree(tmp_path / "cells" / c, SAMPLE)] for c in ("crm", "billing")}
    return make_vault(
        tmp_path / "backup",
        cells,
        targets=[
            TargetSpec("local", str(tmp_path / "backup")),
            TargetSpec("nas", str(tmp_path / "nas")),
        ],
        extra={"BACKUP_ALERT_LOG": "off"},
        clock=times_clock(times),
        **kwargs,
    )


def test_fresh_then_stale(tmp_path: Path) -> None:
    hour = dt.timedelta(hours=1)
    vault = _vault(tmp_path, [T0, T0 + hour, T0 + 27 * hour, T0 + 27 * hour])
    assert vault.backup().ok
    fresh = vault.status()
    assert fresh.ok, fresh.problems()
    crm = next(c for c in fresh.cells if c.cell == "crm")
    assert [t.target for t in crm.targets] == ["local", "nas"]
    local = crm.targets[0]
    assert local.newest == "cell_crm_20250101_020000"
    assert local.backed_at == "2025-01-01T02:00:00Z"
    assert local.age == 3600
    assert [(c.level, c.ok) for c in local.checks] == [("read", True)]
    stale = vault.status()
    assert not stale.ok
    assert len(stale.problems()) == 4
    assert "27.0 h old, more than max_age 26 h" in stale.problems()[0]
    # A looser limit for this call only.
    assert vault.status(max_age=48).ok


def test_max_age_from_the_config(tmp_path: Path) -> None:
    hour = dt.timedelta(hours=1)
    vault = _vault(tmp_path, [T0, T0 + 7 * hour], max_age=6)
    assert vault.backup(["crm"]).ok
    report = vault.status(["crm"])
    assert not report.ok and report.max_age == 6


def test_a_missing_archive_and_a_failed_verify_are_problems(tmp_path: Path) -> None:
    hour = dt.timedelta(hours=1)
    vault = _vault(tmp_path, [T0, T0 + hour, T0 + 2 * hour, T0 + 3 * hour])
    assert vault.backup(["crm"], targets=["local"]).ok
    (data,) = (tmp_path / "backup" / "crm").glob("*.tar.zst")
    data.write_bytes(data.read_bytes()[:-10])
    assert not vault.verify(["crm"], targets=["local"], level="quick").ok
    report = vault.status()
    problems = report.problems()
    assert any("cell crm on target local: last quick verify failed" in p for p in problems)
    assert any("cell crm on target nas: no archive on this target" in p for p in problems)
    assert any("cell billing on target local: no archive" in p for p in problems)
    # A new backup, verified in full, clears the failed quick verify.
    assert vault.backup(["crm"], targets=["local"]).ok
    report = vault.status(["crm"], targets=["local"])
    assert report.ok, report.problems()


def _cli(tmp_path: Path, *args: str) -> Any:
    env = {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm billing",
        "BACKUP_CELLS_ROOT": str(tmp_path / "cells"),
        "BACKUP_TARGETS": "local,nas",
        "BACKUP_NAS_PATH": str(tmp_path / "nas"),
        "BACKUP_ALERT_LOG": "off",
    }
    return CliRunner().invoke(cli, list(args), env=env)


def test_cli_status_json_and_exit_codes(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # Backed up an hour ago by the clock of the vault, checked now by the command line.
    vault = _vault(tmp_path, [now - dt.timedelta(hours=1)])
    assert vault.backup().ok
    fresh = _cli(tmp_path, "--json", "status")
    assert fresh.exit_code == 0, fresh.output
    data = json.loads(fresh.stdout)
    assert data["ok"] is True and data["max_age"] == 26
    cells = {c["cell"]: c for c in data["cells"]}
    assert set(cells) == {"crm", "billing"}
    target = cells["crm"]["targets"][0]
    assert 3500 < target["age"] < 3700
    assert target["checks"][0]["level"] == "read" and target["checks"][0]["ok"] is True
    text = _cli(tmp_path, "status")
    assert text.exit_code == 0
    assert "status: ok (max age 26 h)" in text.stdout
    # The same archives judged with a 30-minute limit are stale.
    stale = _cli(tmp_path, "--json", "status", "--max-age", "0.5")
    assert stale.exit_code == 1
    assert json.loads(stale.stdout)["ok"] is False
    stale_text = _cli(tmp_path, "status", "--max-age", "0.5", "--cell", "crm")
    assert stale_text.exit_code == 1
    assert "FAIL cell crm on target local: newest archive" in stale_text.stderr


def test_cli_status_of_an_old_backup(tmp_path: Path) -> None:
    vault = _vault(tmp_path, [dt.datetime.now(dt.UTC) - dt.timedelta(days=2)])
    assert vault.backup().ok
    result = _cli(tmp_path, "status")
    assert result.exit_code == 1
    assert "PROBLEM" in result.stdout


def test_a_check_of_an_older_archive_is_shown_as_such(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    vault = _vault(tmp_path, [now - dt.timedelta(hours=2), now - dt.timedelta(hours=1)])
    assert vault.backup(["crm"], targets=["local"]).ok
    first = vault.list(["crm"])[0].id
    assert vault.verify(["crm"], targets=["local"], level="full").ok
    assert vault.backup(["crm"], targets=["local"]).ok
    newest = vault.list(["crm"])[-1].id
    assert newest != first
    (local,) = vault.status(["crm"], targets=["local"]).cells[0].targets
    checks = {c.level: c for c in local.checks}
    # The read check after the second backup was of the newest; the full one of the first.
    assert checks["read"].archive == newest and checks["read"].label(local.newest) == "read:ok"
    assert checks["full"].archive == first
    assert checks["full"].label(local.newest) == f"full:ok({first})"
    text = _cli(tmp_path, "status", "--cell", "crm", "--target", "local")
    line = next(x for x in text.stdout.splitlines() if x.startswith("crm"))
    assert newest in line and f"full:ok({first})" in line and "read:ok " in line
    data = json.loads(_cli(tmp_path, "status", "--json", "--cell", "crm").stdout)
    full = next(c for c in data["cells"][0]["targets"][0]["checks"] if c["level"] == "full")
    assert full["archive"] == first


def test_only_folders_holding_archives_are_cells(tmp_path: Path) -> None:
    vault = _vault(tmp_path, [T0])
    assert vault.backup(["crm"], targets=["local"]).ok
    backup = tmp_path / "backup"
    (backup / "lost+found").mkdir()
    (backup / "scratch").mkdir()  # a folder nothing was committed to
    (backup / "old" / "notes.json").parent.mkdir()
    (backup / "old" / "notes.json").write_text("{}")
    assert (backup / "logs").is_dir()  # the run logs of the backup above
    assert vault.target("local").cells() == ["crm"]
    assert {a.cell for a in vault.list()} == {"crm"}
