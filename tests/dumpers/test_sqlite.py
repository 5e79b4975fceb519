"""The sqlite dumper: a consistent copy while a writer is busy, restored consistent."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from cellvault import Cell
from tests.dumpers.conftest import vault_for
from tests.dumpers.test_command import members, only_archive
from tests.helpers import clock, make_vault, write_tree


def make_db(path: Path, journal: str, rows: int = 20_000) -> None:
    """A database big enough that copying it takes a while: rows of 200 bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode={journal}")
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, batch INTEGER, body TEXT)")
        db.executemany("INSERT INTO events (batch, body) VALUES (0, ?)", [("x" * 200,)] * rows)
    db.close()


class Writer(threading.Thread):
    """Commits batches of 50 rows, numbered, until stopped; remembers what it committed."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.committed: list[int] = []  # total rows after each commit
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            db = sqlite3.connect(self.path, timeout=60)
            batch = 0
            while not self.stop.is_set():
                batch += 1
                with db:
                    db.executemany(
                        "INSERT INTO events (batch, body) VALUES (?, ?)",
                        [(batch, "y" * 200)] * 50,
                    )
                (total,) = db.execute("SELECT count(*) FROM events").fetchone()
                self.committed.append(total)
            db.close()
        except BaseException as exc:  # the test fails on it below
            self.error = exc


def rows_and_batches(path: Path) -> tuple[str, int, list[int]]:
    with sqlite3.connect(path) as db:
        (check,) = db.execute("PRAGMA integrity_check").fetchone()
        (count,) = db.execute("SELECT count(*) FROM events").fetchone()
        sizes = [
            n
            for (n,) in db.execute(
                "SELECT count(*) FROM events WHERE batch > 0 GROUP BY batch ORDER BY batch"
            )
        ]
    db.close()
    return check, count, sizes


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_backup_while_a_writer_commits_restores_a_committed_state(
    tmp_path: Path, journal: str
) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", {"config.yaml": "x\n"})
    db_path = crm / "db" / "app.sqlite"
    make_db(db_path, journal)
    vault = vault_for(
        tmp_path,
        [{"type": "sqlite", "name": "app", "path": str(db_path)}],
        clock=clock(),
    )
    writer = Writer(db_path)
    writer.start()
    while len(writer.committed) < 5:
        time.sleep(0.01)
    before = writer.committed[-1]
    report = vault.backup()
    after = writer.committed[-1]
    writer.stop.set()
    writer.join()
    assert writer.error is None
    assert report.ok, report.cells[0].error
    assert after > before, "the writer went on during the backup"

    got = members(only_archive(tmp_path / "backup"))
    info = json.loads(got["dumps/app/dumper.json"])
    assert info["info"]["journal_mode"] == journal

    report = vault.restore("latest", skip_prebackup=True)
    assert report.ok, report.cells[0].error
    check, count, sizes = rows_and_batches(db_path)
    assert check == "ok"
    # The copy holds whole batches only: a state some commit left.
    assert all(n == 50 for n in sizes)
    assert count in {20_000, *writer.committed}
    assert before <= count <= after
    # No WAL of the live database was left to replay onto the restored one.
    assert not Path(f"{db_path}-wal").exists() or Path(f"{db_path}-wal").stat().st_size == 0


def test_a_database_outside_the_cell_is_replaced_in_place(tmp_path: Path) -> None:
    outside = tmp_path / "var" / "data.sqlite"
    make_db(outside, "delete", rows=10)
    vault = vault_for(tmp_path, [{"type": "sqlite", "path": str(outside)}], clock=clock())
    assert vault.backup().ok
    with sqlite3.connect(outside) as db:
        db.execute("DELETE FROM events")
    db.close()
    Path(f"{outside}-journal").write_bytes(b"stale")  # would be replayed: must go
    report = vault.restore("latest", skip_prebackup=True)
    assert report.ok, report.cells[0].error
    assert rows_and_batches(outside)[:2] == ("ok", 10)
    assert not Path(f"{outside}-journal").exists()


def test_restore_path_and_a_missing_database(tmp_path: Path) -> None:
    src = tmp_path / "var" / "a.sqlite"
    make_db(src, "wal", rows=3)
    copy = tmp_path / "restored" / "a.sqlite"
    vault = vault_for(
        tmp_path,
        [{"type": "sqlite", "path": str(src), "restore_path": str(copy)}],
        cells=[Cell("other", [write_tree(tmp_path / "cells" / "other", {"f": "g"})])],
        clock=clock(),
    )
    assert vault.backup().ok
    assert vault.restore("latest", cells=["crm"], skip_prebackup=True).ok
    assert rows_and_batches(copy)[:2] == ("ok", 3)

    missing = make_vault(
        tmp_path / "backup2",
        [
            Cell(
                "crm",
                [tmp_path / "cells" / "crm"],
                dumpers=[{"type": "sqlite", "path": "/nonexistent/x.db"}],
            )
        ],
        clock=clock(),
    )
    report = missing.backup()
    assert not report.ok and report.cells[0].stage == "dump"
    assert "/nonexistent/x.db" in (report.cells[0].error or "")
