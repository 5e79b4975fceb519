"""A cell restores as one unit: every root and database swapped together, or put back.

The partial-swap rollback, the safety backup of everything live, truthful
reports per part, and the journal that settles a restore killed with
SIGKILL at each stage (the next run rolls it back or finishes it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cellvault import Cell, Vault, hookimpl
from cellvault.retention import RetentionPolicy
from tests.dumpers.conftest import (  # noqa: F401 - pg, my and redis_db are fixtures
    Alerts,
    MyDb,
    PgDb,
    RedisDb,
    my,
    mysql,
    pg,
    psql,
    redis_db,
)
from tests.helpers import make_vault, snapshot, times_clock, utc, write_tree

TIMES = [utc(2025, 1, 1, 2), utc(2025, 1, 2, 2), utc(2025, 1, 3, 2), utc(2025, 1, 4, 2)]
REPO = Path(__file__).resolve().parents[2]


def leftovers(*dirs: Path) -> list[str]:
    """The restore's staging directories, journals and kept data beside the live roots."""
    return sorted(p.name for d in dirs for p in d.iterdir() if p.name.startswith(".cellvault"))


@pytest.fixture
def two_roots(tmp_path: Path) -> tuple[Vault, Path, Path]:
    """Cell crm with two roots, app and data, backed up once, then changed live."""
    app = write_tree(tmp_path / "srv" / "app", {"config.yaml": "v: 1\n", "bin/run": "old\n"})
    data = write_tree(tmp_path / "var" / "data", {"ledger.csv": "1\n", "inv/a.csv": "a\n"})
    vault = make_vault(
        tmp_path / "backup", [Cell("crm", [app, data])], clock=times_clock(list(TIMES))
    )
    assert vault.backup().ok
    write_tree(app, {"config.yaml": "v: live\n", "new.txt": "written after\n"})
    write_tree(data, {"ledger.csv": "live\n"})
    return vault, app, data


class BreakSecondRoot:
    """A restore hook that removes the staged ``data`` root: its swap then fails."""

    @hookimpl
    def cellvault_restore_cell(self, cell, meta, staging):  # type: ignore[no-untyped-def]
        import shutil

        shutil.rmtree(staging / "data")


def test_second_root_failing_to_swap_puts_the_first_back(two_roots) -> None:  # type: ignore[no-untyped-def]
    vault, app, data = two_roots
    live = {p: (snapshot(p), p.stat().st_ino) for p in (app, data)}
    broken = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        plugins=[BreakSecondRoot()],
        clock=times_clock([utc(2025, 2, 1)]),
    )
    report = broken.restore("latest", cells=["crm"], skip_prebackup=True)
    assert not report.ok
    # Every root is live again, the very same directories, and nothing stranded.
    assert {p: (snapshot(p), p.stat().st_ino) for p in (app, data)} == live
    assert leftovers(app.parent, data.parent) == []
    (cell,) = report.cells
    assert cell.stage == "swap"
    assert cell.parts["files:app"].startswith("swapped in, then rolled back")
    assert cell.parts["files:data"].startswith("swapped in, then rolled back")
    assert "every cell's live files are back in place" in (report.error or "")


def test_a_root_that_was_not_there_is_taken_away_again_by_the_rollback(two_roots) -> None:  # type: ignore[no-untyped-def]
    vault, app, data = two_roots
    shutil.rmtree(app)  # gone since the backup: the restore puts it where nothing was
    live = (snapshot(data), data.stat().st_ino)
    broken = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        plugins=[BreakSecondRoot()],
        clock=times_clock([utc(2025, 2, 1)]),
    )
    report = broken.restore("latest", cells=["crm"], skip_prebackup=True)
    assert not report.ok
    # As before the restore: no app, the same data, nothing left beside them.
    assert not app.exists()
    assert (snapshot(data), data.stat().st_ino) == live
    assert leftovers(app.parent, data.parent) == []
    (cell,) = report.cells
    assert cell.stage == "swap"
    assert cell.parts["files:app"].startswith("swapped in, then rolled back")


def test_report_names_every_part_the_safety_backup_and_the_undo(two_roots) -> None:  # type: ignore[no-untyped-def]
    vault, app, _ = two_roots
    live = snapshot(app)
    report = vault.restore("latest", cells=["crm"])
    assert report.ok, report.to_dict()
    (cell,) = report.cells
    assert cell.safety_backup
    assert cell.parts == {
        "safety backup": f"taken: {cell.safety_backup}",
        "files:app": "swapped in",
        "files:data": "swapped in",
    }
    assert cell.undo == f"cellvault restore --cell crm --date {cell.safety_backup}"
    assert report.to_dict()["cells"][0]["undo"] == cell.undo
    # The undo command's restore brings the replaced data back.
    assert vault.restore(cell.safety_backup, cells=["crm"], skip_prebackup=True).ok
    assert snapshot(app) == live


def test_skipped_safety_backup_is_said(two_roots) -> None:  # type: ignore[no-untyped-def]
    vault, _, _ = two_roots
    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)
    assert report.ok
    (cell,) = report.cells
    assert cell.parts["safety backup"] == "skipped (RESTORE_SKIP_PREBACKUP=1)"
    assert cell.undo is None


# -- databases: the safety backup covers them, the report says what was loaded ----------


def make_db(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (n INTEGER)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    db.close()


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (n,) = db.execute("SELECT count(*) FROM t").fetchone()
    db.close()
    return int(n)


def test_safety_backup_covers_databases_when_the_file_directory_is_gone(tmp_path: Path) -> None:
    """The issue's billing case: no file directory, a live database, a restore in place."""
    import shutil

    billing = write_tree(tmp_path / "cells" / "billing", {"a.txt": "a\n"})
    db = tmp_path / "db" / "invoices.sqlite"
    make_db(db, 150)
    dumpers = [{"type": "sqlite", "name": "inv", "path": str(db)}]
    cell = Cell("billing", [billing], dumpers=dumpers)
    vault = make_vault(tmp_path / "backup", [cell], clock=times_clock(list(TIMES)))
    assert vault.backup().ok
    make_db(db, 155)  # written after the backup
    shutil.rmtree(billing)

    report = vault.restore("latest", cells=["billing"])
    assert report.ok, report.to_dict()
    assert rows(db) == 150
    (result,) = report.cells
    assert result.safety_backup, "no safety backup of the live database"
    assert result.parts["dump:inv"] == f"swapped in: {db}"
    # The safety backup holds the 155 rows: the undo brings them back.
    assert vault.restore(result.safety_backup, cells=["billing"], skip_prebackup=True).ok
    assert rows(db) == 155


def test_failed_load_after_another_leaves_every_database_live(tmp_path: Path) -> None:
    """Two SQLite dumpers outside the cell: the first stages, the second fails; nothing changes."""
    crm = write_tree(tmp_path / "cells" / "crm", {"a.txt": "a\n"})
    one, two = tmp_path / "db" / "one.sqlite", tmp_path / "db" / "two.sqlite"
    make_db(one, 10)
    make_db(two, 20)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    dumpers = [
        {"type": "sqlite", "name": "one", "path": str(one)},
        {
            "type": "sqlite",
            "name": "two",
            "path": str(two),
            "restore_path": f"{blocker}/two.sqlite",
        },
    ]
    vault = make_vault(
        tmp_path / "backup", [Cell("crm", [crm], dumpers=dumpers)], clock=times_clock(list(TIMES))
    )
    assert vault.backup().ok
    make_db(one, 11)
    (crm / "a.txt").write_text("live\n")

    report = vault.restore("latest", cells=["crm"])
    assert not report.ok
    assert (crm / "a.txt").read_text() == "live\n"
    assert rows(one) == 11  # staged beside, never swapped in
    assert (report.error or "").startswith("restore aborted before any live data was touched")
    (cell,) = report.cells
    assert cell.parts["dump:one"] == "staged, then discarded: the live database is untouched"
    assert cell.parts["dump:two"] == "not loaded: the live database is untouched"
    assert cell.parts["files:crm"].startswith("staged, then discarded")
    assert cell.undo
    assert leftovers(crm.parent) == [] and leftovers(one.parent) == []


def test_failed_hook_before_any_load_is_reported_as_touching_nothing(two_roots) -> None:  # type: ignore[no-untyped-def]
    vault, app, data = two_roots

    class Fail:
        @hookimpl
        def cellvault_restore_cell(self, cell, meta, staging):  # type: ignore[no-untyped-def]
            raise RuntimeError("the import failed")

    live = {p: snapshot(p) for p in (app, data)}
    failing = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        plugins=[Fail()],
        clock=times_clock([utc(2025, 2, 1)]),
    )
    report = failing.restore("latest", cells=["crm"])
    assert not report.ok
    assert (report.error or "").startswith("restore aborted before any live data was touched")
    assert {p: snapshot(p) for p in (app, data)} == live
    (cell,) = report.cells
    assert cell.stage == "hook" and cell.safety_backup and cell.undo
    assert cell.parts["files:app"].startswith("staged, then discarded")
    assert leftovers(app.parent, data.parent) == []


# -- killed with SIGKILL, settled by the next run -----------------------------------------

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cellvault import Cell
    from tests.helpers import make_vault, times_clock, utc

    backup, app, data, at, skip = sys.argv[1:6]

    def on_event(event):
        if event.name == at:
            os.kill(os.getpid(), signal.SIGKILL)

    vault = make_vault(
        Path(backup), [Cell("crm", [Path(app), Path(data)])],
        on_event=on_event, clock=times_clock([utc(2025, 3, 1)]),
    )
    vault.restore("latest", cells=["crm"], skip_prebackup=skip == "1")
    sys.exit(3)  # not killed
    """
)


def kill_at(vault: Vault, app: Path, data: Path, event: str, skip: bool) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    argv = [sys.executable, "-c", KILLER, str(vault.config.backup_dir), str(app), str(data)]
    done = subprocess.run(
        [*argv, event, "1" if skip else "0"], env=env, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


@pytest.mark.parametrize(
    ("event", "expect", "skip"),
    [
        ("restore.planned", "old", False),  # before staging
        ("restore.fetched", "old", False),  # during staging
        ("restore.root_swapped", "old", True),  # between the swaps of two roots
        ("restore.swapped", "new", False),  # after the swap, before the old data is removed
        ("restore.swapped", "new", True),  # the same without a safety backup: old data kept
    ],
)
def test_killed_restore_is_settled_by_the_next_run(two_roots, event, expect, skip) -> None:  # type: ignore[no-untyped-def]
    vault, app, data = two_roots
    old = {p: snapshot(p) for p in (app, data)}
    kill_at(vault, app, data, event, skip)
    # The next command on the cell (a backup) settles the interrupted restore first.
    events: list = []
    after = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        on_event=events.append,
        clock=times_clock([utc(2025, 4, 1)]),
    )
    assert after.backup().ok
    now = {p: snapshot(p) for p in (app, data)}
    if expect == "old":
        assert now == old
    else:
        assert now != old
        assert (app / "config.yaml").read_text() == "v: 1\n"
        assert (data / "ledger.csv").read_text() == "1\n"
    recovered = [e for e in events if e.name == "restore.recovered"]
    left = leftovers(app.parent, data.parent)
    if event in ("restore.planned",):
        assert recovered == [] and left == []
        return
    if event == "restore.fetched":
        # Killed while staging, before the journal: only a copy of the archive was there,
        # and the next run removed it, and said so.
        (rec,) = recovered
        assert rec.data["action"] == "cleaned up"
        assert "killed before its journal was written" in rec.data["detail"]
        assert left == []
        return
    (rec,) = recovered
    assert rec.data["action"] == ("finished" if expect == "new" else "rolled back")
    if expect == "new" and skip:
        # No safety backup holds the replaced data: it is kept, and named.
        assert "old data is kept at" in rec.data["detail"]
        assert len(left) == 2 and all("cellvault-replaced" in n for n in left)
        assert snapshot(app.parent / left[0]) == old[app]
        assert snapshot(data.parent / left[1]) == old[data]
    else:
        assert left == []


KILL_IN_EXTRACTION = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import cellvault.ops.restore as restore
    from cellvault import Cell
    from cellvault.progress import CountingReader
    from tests.helpers import make_vault, times_clock, utc

    backup, crm = sys.argv[1:3]

    class KillMidway(CountingReader):
        # The archive is read in small pieces; once 100 files are extracted, SIGKILL.
        def read(self, size=-1):
            data = super().read(16384 if size is None or size < 0 else min(size, 16384))
            staging = [p for p in Path(crm).parent.glob(".cellvault-restore-*") if p.is_dir()]
            if staging and sum(1 for _ in staging[0].rglob("*.txt")) >= 100:
                os.kill(os.getpid(), signal.SIGKILL)
            return data

    restore.CountingReader = KillMidway
    vault = make_vault(
        Path(backup), [Cell("crm", [Path(crm)])], clock=times_clock([utc(2025, 3, 1)])
    )
    vault.restore("latest", cells=["crm"], skip_prebackup=True)
    sys.exit(3)  # not killed
    """
)


def test_staging_left_by_a_restore_killed_in_extraction_is_reported_then_removed(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from cellvault.cli import cli

    files = {f"d{i % 10}/f{i:03}.txt": os.urandom(4096).hex() for i in range(400)}
    crm = write_tree(tmp_path / "cells" / "crm", files)
    env = {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(tmp_path / "cells"),
        "BACKUP_ALERT_LOG": "off",
    }
    runner = CliRunner()
    assert runner.invoke(cli, ["backup"], env=env).exit_code == 0
    write_tree(crm, {"d0/f000.txt": "live\n"})
    live = snapshot(crm)
    child = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    argv = [sys.executable, "-c", KILL_IN_EXTRACTION, str(tmp_path / "backup"), str(crm)]
    done = subprocess.run(argv, env=child, capture_output=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    (staging,) = [p for p in (tmp_path / "cells").glob(".cellvault-restore-*") if p.is_dir()]
    assert 100 <= sum(1 for _ in staging.rglob("*.txt")) < 400  # killed mid-way
    assert snapshot(crm) == live
    # No journal (killed before it): the staging directory and its owner file.
    assert leftovers(crm.parent) == [staging.name, f"{staging.name}.owner.json"]
    owner = json.loads((crm.parent / f"{staging.name}.owner.json").read_text())
    assert owner["cell"] == "crm" and owner["in_place"] is True and owner["pid"] > 0

    # status names it (and does not fail for it)
    status = runner.invoke(cli, ["status"], env=env)
    assert status.exit_code == 0, status.output
    assert (
        f"left cell crm: staging directory {staging} of a killed restore: it holds only a copy "
        "of the archive; the next restore or backup of the cell removes it"
    ) in status.stderr
    as_json = runner.invoke(cli, ["--json", "status"], env=env)
    assert json.loads(as_json.stdout)["cells"][0]["debris"] == [
        f"staging directory {staging} of a killed restore: it holds only a copy of the "
        "archive; the next restore or backup of the cell removes it"
    ]

    # the next restore removes it, says so, and restores
    again = runner.invoke(cli, ["restore", "--cell", "crm", "--skip-prebackup"], env=env)
    assert again.exit_code == 0, again.output
    archive = staging.name.removeprefix(".cellvault-restore-")[:-9]
    assert (
        f"note a restore of cell crm to {archive} was killed before its journal "
        "was written (so before any live data was touched); removed what it had staged, which "
        f"held only a copy of the archive: {staging}"
    ) in again.stdout
    assert not staging.exists()
    assert leftovers(crm.parent) == []
    assert (crm / "d0" / "f000.txt").read_text() == files["d0/f000.txt"]
    status = runner.invoke(cli, ["status"], env=env)
    assert "left cell crm" not in status.stderr


def test_staging_of_a_running_restore_is_left_alone(tmp_path: Path) -> None:
    """A staging directory whose owner still runs (this process) is neither removed nor debris."""
    from cellvault.journal import debris, recover
    from cellvault.swap import Swap

    crm = write_tree(tmp_path / "cells" / "crm", {"a.txt": "a\n"})
    swap = Swap.create({"crm": crm}, "cell_crm_20250101_020000", cell="crm", in_place=True)
    (swap.staging / "crm").mkdir()
    assert recover("crm", [crm]) == []
    assert debris("crm", [crm]) == []
    assert swap.staging.is_dir()
    assert sorted(p.name for p in swap.staging.iterdir()) == ["crm"]  # hooks see only roots
    # Without an owner file nothing proves its run is gone: named, kept.
    (crm.parent / f"{swap.staging.name}.owner.json").unlink()
    assert recover("crm", [crm]) == []
    assert debris("crm", [crm]) == [
        f"staging directory {swap.staging}: no owner file says which run made it; "
        "remove it once no restore runs"
    ]
    swap.discard()


# -- a restore's read lease: prune keeps what it reads ---------------------------------


def test_prune_while_a_restore_runs_keeps_what_it_reads(tmp_path: Path) -> None:
    """A restore of an old archive is paused in its hook; a prune then runs; both succeed."""
    import datetime as dt
    import threading

    crm = write_tree(tmp_path / "cells" / "crm", {"a.txt": "v0\n"})
    now = [utc(2025, 1, 1, 2)]
    vault = make_vault(
        tmp_path / "backup",
        [Cell("crm", [crm])],
        clock=lambda: now[0],
        retention=RetentionPolicy(keep_full_days=1),
    )
    made = []
    for day in range(4):
        now[0] = utc(2025, 1, 1, 2) + dt.timedelta(days=day)
        write_tree(crm, {"a.txt": f"v{day}\n"})
        made.append(vault.backup(kind="full").cells[0].archive)
    now[0] = utc(2025, 1, 10)
    assert [str(d.id) for d in vault.prune(dry_run=True).results[0].removed] == made[:3]

    entered, go = threading.Event(), threading.Event()

    class Pause:
        @hookimpl
        def cellvault_restore_cell(self, cell, meta, staging):  # type: ignore[no-untyped-def]
            entered.set()
            assert go.wait(60)

    restoring = make_vault(
        tmp_path / "backup", [Cell("crm", [crm])], plugins=[Pause()], clock=lambda: now[0]
    )
    out: list = []
    worker = threading.Thread(
        target=lambda: out.append(restoring.restore(made[0], skip_prebackup=True))
    )
    worker.start()
    try:
        assert entered.wait(60)
        report = vault.prune()
    finally:
        go.set()
        worker.join(60)
    (result,) = report.results
    assert [str(d.id) for d in result.removed] == made[1:3]
    (held,) = [d for d in result.decisions if str(d.id) == made[0]]
    assert held.keep and any(r.startswith("held by restore on host") for r in held.reasons)
    assert out and out[0].ok, out[0].to_dict()
    assert (crm / "a.txt").read_text() == "v0\n"
    # The restore is over: its read lease is gone, and the next prune deletes the archive.
    assert [str(d.id) for d in vault.prune().results[0].removed] == [made[0]]


# -- in place, what the backup left out stays -----------------------------------------


@pytest.mark.parametrize("keep", [True, False])
def test_in_place_restore_keeps_excluded_live_paths(tmp_path: Path, keep: bool) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", {"config.yaml": "v1\n", "cache/x.tmp": "c\n"})
    cell = Cell("crm", [crm], exclude=["cache", "*.tmp"])
    vault = make_vault(tmp_path / "backup", [cell], clock=times_clock(list(TIMES)))
    assert vault.backup().ok
    write_tree(
        crm,
        {
            "config.yaml": "v2\n",
            "cache/y.tmp": "y\n",
            "new/deep/scratch.tmp": "s\n",
            "stray.txt": "gone after the restore\n",
        },
    )
    (crm / "cache").chmod(0o750)
    report = vault.restore("latest", keep_excluded=keep)
    assert report.ok, report.to_dict()
    assert (crm / "config.yaml").read_text() == "v1\n"
    assert not (crm / "stray.txt").exists()  # not excluded: the archive's state wins
    kept = {"cache", "cache/x.tmp", "cache/y.tmp", "new", "new/deep", "new/deep/scratch.tmp"}
    present = {p.relative_to(crm).as_posix() for p in crm.rglob("*")}
    if keep:
        assert kept <= present
        assert (crm / "cache" / "y.tmp").read_text() == "y\n"
        assert (crm / "cache").stat().st_mode & 0o777 == 0o750
        assert report.cells[0].parts["excluded paths"].startswith("2 live path(s)")
    else:
        assert not kept & present
        assert "excluded paths" not in report.cells[0].parts


# -- PostgreSQL staged into a scratch database, swapped by renaming ------------------------


def pg_rows(db: PgDb) -> str:
    return db.sql("SELECT count(*) || ':' || coalesce(sum(n), 0) FROM t;")


def pg_cell(tmp_path: Path, db: PgDb) -> tuple[Vault, Path, Path]:
    app = write_tree(tmp_path / "srv" / "app", {"config.yaml": "v: 1\n"})
    data = write_tree(tmp_path / "var" / "data", {"ledger.csv": "1\n"})
    db.sql("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 100);")
    dumper = {"type": "postgres", "name": "db", "dsn": db.dsn, "mode": "replace"}
    cell = Cell("crm", [app, data], dumpers=[dumper])
    vault = make_vault(tmp_path / "backup", [cell], clock=times_clock(list(TIMES)))
    assert vault.backup().ok
    db.sql("INSERT INTO t VALUES (1000);")  # written after the backup
    write_tree(app, {"config.yaml": "v: live\n"})
    return vault, app, data


def pg_siblings(db: PgDb) -> str:
    return psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{db.name}_cv%';")  # noqa: S608 - generated name


def test_postgres_is_swapped_in_with_the_files(tmp_path: Path, pg: PgDb) -> None:  # noqa: F811 - the fixture
    vault, app, _ = pg_cell(tmp_path, pg)
    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)
    assert report.ok, report.to_dict()
    assert pg_rows(pg) == "100:5050"
    assert (app / "config.yaml").read_text() == "v: 1\n"
    assert report.cells[0].parts["dump:db"].startswith(f"swapped in: database {pg.name}")
    assert pg_siblings(pg) == ""


def test_postgres_goes_back_when_a_file_swap_fails(tmp_path: Path, pg: PgDb) -> None:  # noqa: F811 - the fixture
    vault, app, data = pg_cell(tmp_path, pg)
    live = {p: snapshot(p) for p in (app, data)}
    broken = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        plugins=[BreakSecondRoot()],
        clock=times_clock([utc(2025, 2, 1)]),
    )
    report = broken.restore("latest", cells=["crm"], skip_prebackup=True)
    assert not report.ok
    assert pg_rows(pg) == "101:6050"  # the live rows, the row written after the backup too
    assert {p: snapshot(p) for p in (app, data)} == live
    (cell,) = report.cells
    assert cell.parts["dump:db"].startswith("swapped in, then rolled back")
    assert pg_siblings(pg) == ""


def test_postgres_load_failing_in_staging_leaves_it_live(tmp_path: Path, pg: PgDb) -> None:  # noqa: F811 - the fixture
    vault, _, _ = pg_cell(tmp_path, pg)

    class Fail:
        @hookimpl
        def cellvault_restore_cell(self, cell, meta, staging):  # type: ignore[no-untyped-def]
            raise RuntimeError("the import failed")

    failing = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        plugins=[Fail()],
        clock=times_clock([utc(2025, 2, 1)]),
    )
    report = failing.restore("latest", cells=["crm"], skip_prebackup=True)
    assert not report.ok
    assert (report.error or "").startswith("restore aborted before any live data was touched")
    assert pg_rows(pg) == "101:6050"
    assert (
        report.cells[0].parts["dump:db"] == "staged, then discarded: the live database is untouched"
    )
    assert pg_siblings(pg) == ""


# -- Redis staged into swap_db, swapped by SWAPDB ---------------------------------------


def test_redis_goes_back_when_a_file_swap_fails(tmp_path: Path, redis_db: RedisDb) -> None:  # noqa: F811 - the fixture
    app = write_tree(tmp_path / "srv" / "app", {"config.yaml": "v: 1\n"})
    data = write_tree(tmp_path / "var" / "data", {"ledger.csv": "1\n"})
    redis_db.cli("SET", "k", "backed-up")
    dumper = {"type": "redis", "name": "cache", "url": redis_db.url, "swap_db": 15}
    cell = Cell("crm", [app, data], dumpers=[dumper])
    vault = make_vault(tmp_path / "backup", [cell], clock=times_clock(list(TIMES)))
    assert vault.backup().ok
    redis_db.cli("SET", "k", "live")
    redis_db.cli("SET", "new", "written after")
    broken = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        plugins=[BreakSecondRoot()],
        clock=times_clock([utc(2025, 2, 1)]),
    )
    report = broken.restore("latest", cells=["crm"], skip_prebackup=True)
    assert not report.ok
    assert redis_db.cli("GET", "k") == "live" and redis_db.cli("GET", "new") == "written after"
    assert redis_db.cli("DBSIZE", db=15) == "0"
    assert report.cells[0].parts["dump:cache"].startswith("swapped in, then rolled back")
    # Without the failure: swapped in, the spare database emptied.
    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)
    assert report.ok, report.to_dict()
    assert redis_db.cli("GET", "k") == "backed-up" and redis_db.cli("EXISTS", "new") == "0"
    assert redis_db.cli("DBSIZE", db=15) == "0"


# -- the drill loads the dumps it can stage ----------------------------------------------


def test_drill_loads_postgres_into_a_scratch_database(tmp_path: Path, pg: PgDb) -> None:  # noqa: F811 - the fixture
    seen: list[str] = []

    class Health:
        @hookimpl
        def cellvault_health_check(self, cell, meta, root):  # type: ignore[no-untyped-def]
            # While the health checks run, the dump is loaded in a scratch database.
            seen.append(pg_siblings(pg))

    vault, _, _ = pg_cell(tmp_path, pg)
    drilling = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        plugins=[Health()],
        clock=times_clock([utc(2025, 2, 1)]),
    )
    report = drilling.verify(level="drill")
    assert report.ok, report.to_dict()
    (result,) = report.results
    assert result.dumps["db"].startswith(f"loaded into {pg.name}_cvnew_")
    assert result.dumps["db"].endswith("then dropped")
    assert len(seen) == 1 and seen[0].startswith(f"{pg.name}_cvnew_")
    assert pg_siblings(pg) == ""  # dropped
    assert pg_rows(pg) == "101:6050"  # the live database untouched
    assert result.rto is not None


PG_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cellvault import Cell
    from tests.helpers import make_vault, times_clock, utc

    backup, app, data, dsn, at = sys.argv[1:6]

    def on_event(event):
        if event.name == at:
            os.kill(os.getpid(), signal.SIGKILL)

    dumper = {"type": "postgres", "name": "db", "dsn": dsn, "mode": "replace"}
    vault = make_vault(
        Path(backup), [Cell("crm", [Path(app), Path(data)], dumpers=[dumper])],
        on_event=on_event, clock=times_clock([utc(2025, 3, 1)]),
    )
    vault.restore("latest", cells=["crm"])
    sys.exit(3)  # not killed
    """
)


@pytest.mark.parametrize(
    ("event", "expect"),
    [
        ("restore.loaded", "old"),  # PostgreSQL staged in a scratch database, nothing swapped
        ("restore.dump_swapped", "new"),  # PostgreSQL swapped in, files not yet
        ("restore.root_swapped", "new"),  # PostgreSQL and the first root swapped in
        ("restore.swapped", "new"),  # everything swapped, nothing cleaned up
    ],
)
def test_killed_restore_of_files_and_postgres_is_wholly_old_or_new(
    tmp_path: Path,
    pg: PgDb,  # noqa: F811 - the fixture
    event: str,
    expect: str,
) -> None:
    vault, app, data = pg_cell(tmp_path, pg)
    old = {p: snapshot(p) for p in (app, data)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    argv = [sys.executable, "-c", PG_KILLER, str(vault.config.backup_dir), str(app), str(data)]
    done = subprocess.run(
        [*argv, pg.dsn, event], env=env, capture_output=True, timeout=180, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    events: list = []
    after = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        on_event=events.append,
        clock=times_clock([utc(2025, 4, 1)]),
    )
    assert after.backup().ok
    (rec,) = [e for e in events if e.name == "restore.recovered"]
    if expect == "old":
        assert {p: snapshot(p) for p in (app, data)} == old
        assert pg_rows(pg) == "101:6050"
        assert rec.data["action"] == "rolled back"
        assert "_cvnew_" in rec.data["detail"]  # the scratch database is named
    else:
        assert (app / "config.yaml").read_text() == "v: 1\n"
        assert (data / "ledger.csv").read_text() == "1\n"
        assert pg_rows(pg) == "100:5050"
        assert rec.data["action"] == "finished"
        assert "_cvold_" in rec.data["detail"]  # the replaced database is named
    for name in pg_siblings(pg).split():
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')


def unstageable_cell(tmp_path: Path, *plugins: object) -> tuple[Vault, Path, Path, Path]:
    """Cell crm: a command dumper that stages (into a folder), then one that cannot."""
    crm = write_tree(tmp_path / "cells" / "crm", {"a.txt": "a\n"})
    staged, live, out = tmp_path / "staged", tmp_path / "live", tmp_path / "loaded.txt"
    dumpers = [
        {
            "type": "command",
            "name": "first",
            "command": ["sh", "-c", "echo first"],
            "staging": str(staged),
            "restore_command": [
                "sh",
                "-c",
                'mkdir -p "$CELLVAULT_STAGING" && cat > "$CELLVAULT_STAGING/x"',
            ],
            "swap_command": ["sh", "-c", f"rm -rf {live} && mv {staged} {live}"],
            "unswap_command": ["true"],
            "discard_command": ["rm", "-rf", str(staged)],
        },
        {
            "type": "command",
            "name": "cmd",
            "command": ["sh", "-c", "echo state"],
            "restore_command": ["sh", "-c", f"cat > {out}"],
        },
    ]
    vault = make_vault(
        tmp_path / "backup",
        [Cell("crm", [crm], dumpers=dumpers)],
        clock=times_clock(list(TIMES)),
        plugins=list(plugins),
    )
    assert vault.backup().ok
    write_tree(crm, {"a.txt": "live\n"})
    return vault, crm, staged, out


def test_skipped_safety_backup_with_a_dumper_that_cannot_stage_is_refused(tmp_path: Path) -> None:
    alerts = Alerts()
    vault, crm, staged, out = unstageable_cell(tmp_path, alerts)
    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)
    assert not report.ok
    (cell,) = report.cells
    why = "no staging location is configured (staging, swap_command)"
    refusal = (
        f"refused: dumper cmd cannot stage ({why}), so its dump would be loaded into "
        "the live database before the swap and the restore cannot be atomic, and the safety "
        "backup was skipped (RESTORE_SKIP_PREBACKUP=1), so there would be no way back"
    )
    assert cell.stage == "load"
    assert cell.error is not None and cell.error.startswith(refusal + " (run the restore without")
    assert (
        report.error == "restore aborted before any live data was touched: cell crm: " + cell.error
    )
    assert cell.parts == {
        "safety backup": "skipped (RESTORE_SKIP_PREBACKUP=1)",
        "files:crm": "staged, then discarded: the live files are untouched",
        "dump:first": "staged, then discarded: the live database is untouched",
        "dump:cmd": (
            f"not loaded: this dumper cannot stage ({why}) and the safety backup was skipped, "
            "so the restore was refused; the live database is untouched"
        ),
    }
    assert cell.undo is None
    assert [(f.stage, f.cell, f.operation) for f in alerts.failures] == [
        ("restore", "crm", "restore")
    ]
    assert alerts.failures[0].error == cell.error
    # Nothing live was touched: no load ran, the staged part is gone, the files are live.
    assert not out.exists()
    assert not staged.exists() and not (tmp_path / "live").exists()
    assert (crm / "a.txt").read_text() == "live\n"
    assert leftovers(crm.parent) == []


def test_dumper_that_cannot_stage_loads_live_with_the_safety_backup(tmp_path: Path) -> None:
    vault, crm, _, out = unstageable_cell(tmp_path)
    report = vault.restore("latest", cells=["crm"])
    assert report.ok, report.to_dict()
    (cell,) = report.cells
    assert (
        cell.safety_backup
        and cell.undo == f"cellvault restore --cell crm --date {cell.safety_backup}"
    )
    assert cell.parts["dump:cmd"] == (
        "loaded into the live database before the swap (this dumper cannot stage: "
        "no staging location is configured (staging, swap_command))"
    )
    assert cell.parts["dump:first"].startswith("swapped in: ")
    assert out.read_text() == "state\n"
    assert (tmp_path / "live" / "x").read_text() == "first\n"
    assert (crm / "a.txt").read_text() == "a\n"


def test_cli_refuses_a_restore_that_cannot_be_atomic_without_the_safety_backup(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from cellvault.cli import cli

    write_tree(tmp_path / "cells" / "crm", {"a.txt": "a\n"})
    out = tmp_path / "loaded.txt"
    load = tmp_path / "load.sh"
    load.write_text(f"#!/bin/sh\ncat > {out}\n")
    load.chmod(0o755)
    env = {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(tmp_path / "cells"),
        "BACKUP_ALERT_LOG": str(tmp_path / "alerts.log"),
        "BACKUP_CELL_CRM_DUMPERS": "cmd",
        "BACKUP_CELL_CRM_DUMPER_CMD_TYPE": "command",
        "BACKUP_CELL_CRM_DUMPER_CMD_COMMAND": "echo state",
        "BACKUP_CELL_CRM_DUMPER_CMD_RESTORE_COMMAND": str(load),
    }
    runner = CliRunner()
    assert runner.invoke(cli, ["backup"], env=env).exit_code == 0
    result = runner.invoke(cli, ["restore", "--cell", "crm", "--skip-prebackup"], env=env)
    assert result.exit_code == 1
    assert "FAIL crm: load: refused: dumper cmd cannot stage" in result.stderr
    assert "run the restore without RESTORE_SKIP_PREBACKUP=1" in result.stderr
    assert "FAIL restore aborted before any live data was touched" in result.stderr
    assert "refused: dumper cmd cannot stage" in (tmp_path / "alerts.log").read_text()
    assert not out.exists()
    # The same with RESTORE_SKIP_PREBACKUP=1; without it, the safety backup makes it go.
    again = runner.invoke(
        cli, ["restore", "--cell", "crm"], env={**env, "RESTORE_SKIP_PREBACKUP": "1"}
    )
    assert again.exit_code == 1 and not out.exists()
    done = runner.invoke(cli, ["restore", "--cell", "crm"], env=env)
    assert done.exit_code == 0, done.output
    assert out.read_text() == "state\n"


# -- MariaDB staged into a scratch schema, swapped by one RENAME TABLE ---------------------


def my_siblings(db: MyDb) -> str:
    return mysql(f"SHOW DATABASES LIKE '{db.name}\\_cv%';")


def test_mariadb_is_swapped_in_with_the_files_or_put_back(tmp_path: Path, my: MyDb) -> None:  # noqa: F811 - the fixture
    app = write_tree(tmp_path / "srv" / "app", {"config.yaml": "v: 1\n"})
    data = write_tree(tmp_path / "var" / "data", {"ledger.csv": "1\n"})
    my.sql(
        "CREATE TABLE a (id INT PRIMARY KEY) ENGINE=InnoDB; "
        "CREATE TABLE b (id INT PRIMARY KEY, a_id INT, FOREIGN KEY (a_id) REFERENCES a(id)) "
        "ENGINE=InnoDB; INSERT INTO a VALUES (1), (2); INSERT INTO b VALUES (10, 1);"
    )
    dumper = {"type": "mysql", "name": "db", "dsn": my.dsn}
    cell = Cell("crm", [app, data], dumpers=[dumper])
    vault = make_vault(tmp_path / "backup", [cell], clock=times_clock(list(TIMES)))
    assert vault.backup().ok
    my.sql("INSERT INTO a VALUES (3); CREATE TABLE later (x INT);")
    live = my.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM a;")
    broken = make_vault(
        vault.config.backup_dir,
        list(vault.config.cells),
        plugins=[BreakSecondRoot()],
        clock=times_clock([utc(2025, 2, 1)]),
    )
    report = broken.restore("latest", cells=["crm"], skip_prebackup=True)
    assert not report.ok
    assert my.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM a;") == live == "1,2,3"
    assert my.sql("SHOW TABLES LIKE 'later';") == "later"
    assert report.cells[0].parts["dump:db"].startswith("swapped in, then rolled back")
    assert my_siblings(my) == ""

    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)
    assert report.ok, report.to_dict()
    assert report.cells[0].parts["dump:db"].startswith(f"swapped in: database {my.name}")
    assert my.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM a;") == "1,2"
    assert my.sql("SELECT a_id FROM b;") == "1"
    assert my.sql("SHOW TABLES LIKE 'later';") == ""  # exactly the dump
    assert my_siblings(my) == ""


def test_mariadb_with_a_view_says_why_it_loads_live(tmp_path: Path, my: MyDb) -> None:  # noqa: F811 - the fixture
    crm = write_tree(tmp_path / "cells" / "crm", {"a.txt": "a\n"})
    my.sql(
        "CREATE TABLE a (id INT PRIMARY KEY); INSERT INTO a VALUES (1); CREATE VIEW v AS SELECT id FROM a;"
    )
    cell = Cell("crm", [crm], dumpers=[{"type": "mysql", "name": "db", "dsn": my.dsn}])
    vault = make_vault(tmp_path / "backup", [cell], clock=times_clock(list(TIMES)))
    assert vault.backup().ok
    my.sql("INSERT INTO a VALUES (2);")
    report = vault.restore("latest", cells=["crm"])
    assert report.ok, report.to_dict()
    (result,) = report.cells
    assert result.parts["dump:db"] == (
        "loaded into the live database before the swap (this dumper cannot stage: "
        f"{my.name} has views, routines, events or triggers, which RENAME TABLE cannot move "
        "to another database)"
    )
    assert result.safety_backup and result.undo
    assert my.sql("SELECT GROUP_CONCAT(id) FROM v;") == "1"
    assert my_siblings(my) == ""
