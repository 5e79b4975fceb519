"""Run logs: one JSON-lines file per run, events per stage, cell and target, and their pruning."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cellvault import TargetSpec, Vault
from cellvault.runlog import RunLog, prune_logs
from tests.helpers import SAMPLE, clock, make_vault, write_tree


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _vault(tmp_path: Path, cells: tuple[str, ...] = ("crm", "billing"), **kwargs: Any) -> Vault:
    paths = {c: [write_tree(tmp_path / "cells" / c, SAMPLE)] for c in cells}
    return make_vault(
        tmp_path / "backup",
        paths,
        targets=[
            TargetSpec("local", str(tmp_path / "backup")),
            TargetSpec("nas", str(tmp_path / "nas")),
        ],
        extra={"BACKUP_ALERT_LOG": "off"},
        **kwargs,
    )


def test_backup_log_has_one_event_per_stage_cell_and_target(tmp_path: Path) -> None:
    report = _vault(tmp_path).backup()
    assert report.ok
    (path,) = (tmp_path / "backup" / "logs").glob("backup_*.log")
    assert path.name.startswith("backup_") and len(path.stem) >= len("backup_20250101_020000")
    events = _events(path)
    assert {e["run"] for e in events} == {report.run}
    assert all(e["timestamp"].endswith("Z") for e in events)
    names = [e["event"] for e in events]
    assert names[0] == "backup.started"
    assert "backup.finished" in names
    for stage in ("archive.packed", "archive.stored", "archive.verified"):
        seen = {(e["cell"], e.get("target")) for e in events if e["event"] == stage}
        if stage == "archive.packed":
            assert seen == {("crm", None), ("billing", None)}
        else:
            assert seen == {(c, t) for c in ("crm", "billing") for t in ("local", "nas")}


def test_a_failure_names_its_stage_and_target(tmp_path: Path) -> None:
    vault = _vault(tmp_path, cells=("crm",))
    (tmp_path / "nas").mkdir()
    (tmp_path / "nas" / "crm").write_text("a file where the cell's folder should be")
    report = vault.backup()
    assert not report.ok
    (path,) = (tmp_path / "backup" / "logs").glob("backup_*.log")
    failed = [e for e in _events(path) if e["event"] == "backup.failed"]
    assert len(failed) == 1
    assert (failed[0]["cell"], failed[0]["target"], failed[0]["level"]) == ("crm", "nas", "error")
    assert failed[0]["stage"] in ("lock", "upload")
    assert "nas" in failed[0]["error"]


def test_verify_and_restore_runs_have_their_own_logs(tmp_path: Path) -> None:
    vault = _vault(tmp_path, cells=("crm",))
    assert vault.backup().ok
    verify = vault.verify(level="quick")
    restore = vault.restore(into=tmp_path / "restored")
    assert restore.ok
    logs = tmp_path / "backup" / "logs"
    (verify_log,) = logs.glob("verify_*.log")
    assert {e["run"] for e in _events(verify_log)} == {verify.run}
    assert [e["event"] for e in _events(verify_log)].count("verify.ok") == 2
    (restore_log,) = logs.glob("restore_*.log")
    names = [e["event"] for e in _events(restore_log)]
    assert "restore.planned" in names and "restore.finished" in names


def test_a_prune_run_has_its_own_log(tmp_path: Path) -> None:
    from cellvault.lock import Lease

    vault = _vault(tmp_path, cells=("crm",))
    assert vault.backup().ok
    lease = Lease.acquire(vault.target("nas"), "crm", "a test holding the cell")
    try:
        report = vault.prune()
    finally:
        lease.release()
    assert not report.ok
    (prune_log,) = (tmp_path / "backup" / "logs").glob("prune_*.log")
    events = _events(prune_log)
    assert len({e["run"] for e in events}) == 1
    (failed,) = [e for e in events if e["event"] == "prune.failed"]
    assert (failed["cell"], failed["target"], failed["stage"]) == ("crm", "nas", "prune")


def test_concurrent_runs_never_write_into_each_others_logs(tmp_path: Path) -> None:
    vaults = [_vault(tmp_path / name, cells=(name,)) for name in ("crm", "billing", "web")]
    reports: dict[str, Any] = {}

    def run(vault: Vault) -> None:
        for _ in range(3):
            report = vault.backup()
            reports[report.run] = report

    threads = [threading.Thread(target=run, args=(v,)) for v in vaults]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reports) == 9
    seen = 0
    for name in ("crm", "billing", "web"):
        for path in (tmp_path / name / "backup" / "logs").glob("backup_*.log"):
            events = _events(path)
            runs = {e["run"] for e in events}
            assert len(runs) == 1, (path, runs)
            assert {e.get("cell") for e in events} <= {name, None}
            seen += 1
    assert seen == 9


def test_run_log_is_complete_whatever_the_host_logs(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    before = logging.getLogger("cellvault").level
    try:
        report = _vault(tmp_path, cells=("crm",)).backup()
    finally:
        root.removeHandler(handler)
    assert report.ok
    # The host's root logger stays at WARNING: it saw none of the info events...
    assert "archive.stored" not in stream.getvalue()
    assert logging.getLogger("cellvault").level == before
    # ...and the run log has them all.
    (path,) = (tmp_path / "backup" / "logs").glob("backup_*.log")
    assert sum(e["event"] == "archive.stored" for e in _events(path)) == 2


def test_unwritable_log_directory_does_not_fail_the_run(tmp_path: Path) -> None:
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "logs").write_text("not a directory")
    assert _vault(tmp_path, cells=("crm",)).backup().ok


def test_two_runs_in_the_same_second_get_two_files(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with (
        RunLog(logs, "verify", "aaa", "20250101_020000") as one,
        RunLog(logs, "verify", "bbb", "20250101_020000") as two,
    ):
        assert one.path is not None and two.path is not None
    assert one.path.name == "verify_20250101_020000.log"
    assert two.path.name == "verify_20250101_020000_bbb.log"


def _touch(path: Path, age_days: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    when = time.time() - age_days * 86400
    os.utime(path, (when, when))


def test_prune_by_age_keeps_the_newest_of_each_kind(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for day in range(1, 31):
        _touch(logs / f"backup_202501{day:02d}_020000.log", age_days=31 - day)
    _touch(logs / "verify_20240101_000000.log", age_days=400)
    _touch(logs / "restore_20240101_000000_abcdef.log", age_days=400)
    _touch(logs / "notes.log", age_days=400)
    _touch(logs / "backup_old.txt", age_days=400)
    removed = prune_logs(logs, keep_days=14, keep_last=3)
    left = sorted(p.name for p in logs.iterdir())
    # Backups of the last 14 days stay; the lone verify and restore logs stay (newest of their kind).
    # Ages 1..30 days: the 13 younger than 14 days stay.
    assert len([n for n in left if n.startswith("backup_2025")]) == 13
    assert "verify_20240101_000000.log" in left
    assert "restore_20240101_000000_abcdef.log" in left
    assert {"notes.log", "backup_old.txt"} <= set(left)
    assert len(removed) == 17
    assert prune_logs(tmp_path / "missing") == []


def test_backup_prunes_old_logs(tmp_path: Path) -> None:
    logs = tmp_path / "backup" / "logs"
    for n in range(15):
        _touch(logs / f"backup_2024010{n % 9 + 1}_0{n % 10}0000_{n:06x}.log", age_days=30 + n)
    vault = _vault(tmp_path, cells=("crm",), log_keep_days=7, clock=clock())
    assert vault.backup().ok
    left = sorted(p.name for p in logs.iterdir())
    # The new one and the newest nine old ones: ten of the kind are always kept.
    assert len(left) == 10


def test_log_keep_days_from_the_environment(tmp_path: Path) -> None:
    from cellvault import load_env

    config = load_env({"BACKUP_DIR": str(tmp_path), "BACKUP_LOG_KEEP_DAYS": "3.5"})
    assert config.log_keep_days == 3.5
    with pytest.raises(Exception, match="BACKUP_LOG_KEEP_DAYS"):
        load_env({"BACKUP_DIR": str(tmp_path), "BACKUP_LOG_KEEP_DAYS": "two weeks"})
