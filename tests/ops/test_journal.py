"""The restore journal in one process: what it records, and how :func:`recover` settles it.

The SIGKILL tests (test_restore_atomic.py, test_restore_kill_matrix.py) kill
real restores; these write each state such a restore leaves behind (real
folders, real swaps) and call the recovery directly, so that every rule of
cellvault.journal is checked by a test that runs in-process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from cellvault.dumpers.staging import StagedLoad
from cellvault.journal import (
    JOURNAL_PREFIX,
    Journal,
    Recovery,
    _running,
    debris,
    find,
    recover,
    running,
)
from cellvault.swap import HELD, OWNER_SUFFIX, Swap, exchange
from tests.helpers import killed_not_reaped, write_tree
from tests.system_tools import needs_root

ARCHIVE = "cell_crm_20250101_020000"


def read(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The fields of each log event *name* (cellvault logs structured events)."""
    return [
        {k: v for k, v in r.msg.items() if k not in ("event", "logger", "level", "timestamp")}
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == name
    ]


def beside(*dirs: Path) -> list[str]:
    return sorted(p.name for d in dirs for p in d.iterdir() if p.name.startswith(".cellvault"))


@attrs.define
class Cell:
    """A cell of two roots staged for a restore: app (live) and data (live, or absent)."""

    tmp: Path
    swap: Swap
    app: Path
    data: Path

    def journal(self, phase: str = "staged", **extra: Any) -> Journal:
        journal = Journal.start("crm", ARCHIVE, self.swap, extra.pop("safety_backup", None))
        journal.data.update(phase=phase, **extra)
        journal._save()
        return journal

    def swap_in(self, root: str) -> None:
        dest, placed = self.swap.dests[root], self.swap.placed[root]
        if dest.exists():
            exchange(placed, dest)
        else:
            os.rename(placed, dest)


def staged_cell(tmp_path: Path, *, data_live: bool = True) -> Cell:
    app = write_tree(tmp_path / "srv" / "app", {"a.txt": "live a\n"})
    data = tmp_path / "srv" / "data"
    if data_live:
        write_tree(data, {"d.txt": "live d\n"})
    swap = Swap.create({"app": app, "data": data}, ARCHIVE)
    write_tree(swap.staging / "app", {"a.txt": "new a\n", "b.txt": "new b\n"})
    write_tree(swap.staging / "data", {"d.txt": "new d\n"})
    swap.place()
    return Cell(tmp_path, swap, app, data)


LIVE = ({"a.txt": "live a\n"}, {"d.txt": "live d\n"})
NEW = ({"a.txt": "new a\n", "b.txt": "new b\n"}, {"d.txt": "new d\n"})


def test_the_journal_records_each_phase_of_the_restore(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path, data_live=False)
    journal = Journal.start("crm", ARCHIVE, cell.swap, "cell_crm_20250101_010000")
    path = tmp_path / "srv" / f"{JOURNAL_PREFIX}crm.json"
    assert journal.path == path
    on_disk = json.loads(path.read_text())
    assert on_disk == {
        "cell": "crm",
        "archive": ARCHIVE,
        "staging": str(cell.swap.staging),
        "safety_backup": "cell_crm_20250101_010000",
        "phase": "staged",
        "loaded": [],
        "loading": None,
        "roots": {
            "app": {
                "dest": str(cell.app),
                "placed": str(cell.swap.staging / "app"),
                "old_ino": os.lstat(cell.app).st_ino,
                "new_ino": os.lstat(cell.swap.staging / "app").st_ino,
            },
            "data": {
                "dest": str(cell.data),
                "placed": str(cell.swap.staging / "data"),
                "old_ino": None,
                "new_ino": os.lstat(cell.swap.staging / "data").st_ino,
            },
        },
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    assert path.read_text().startswith('{\n "archive": ')  # indented, keys sorted
    journal.loading("pg")
    assert (json.loads(path.read_text())["phase"], json.loads(path.read_text())["loading"]) == (
        "loading",
        "pg",
    )
    journal.loaded("pg")
    journal.phase("swapping")
    journal.staged([{"dumper": "my", "what": "database crm", "side": "crm_new"}])
    journal.swapping("my")
    on_disk = json.loads(path.read_text())
    assert (on_disk["phase"], on_disk["loaded"], on_disk["loading"]) == ("swapping", ["pg"], None)
    assert on_disk["staged"] == ["my"]
    assert on_disk["sides"] == [{"dumper": "my", "what": "database crm", "side": "crm_new"}]
    assert on_disk["swapping"] == "my"
    journal.loaded("my")
    on_disk = json.loads(path.read_text())
    assert (on_disk["loaded"], on_disk["swapping"]) == (["pg", "my"], None)
    journal.swapping("my")
    journal.unswapped("my")
    on_disk = json.loads(path.read_text())
    assert (on_disk["phase"], on_disk["loaded"], on_disk["swapping"]) == (
        "rolling back",
        ["pg"],
        None,
    )
    assert beside(tmp_path / "srv") == sorted(
        [
            cell.swap.staging.name,
            cell.swap.staging.name + OWNER_SUFFIX,
            f"{JOURNAL_PREFIX}crm.json",
        ]
    )  # no temporary copy of the journal left
    journal.close()
    journal.close()  # twice: no error
    assert not path.exists()


def test_a_placed_root_is_recorded_where_it_was_placed(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    elsewhere = tmp_path / "srv" / ".cellvault-restore-app-x"
    os.rename(cell.swap.placed["app"], elsewhere)
    cell.swap.placed["app"] = elsewhere
    journal = Journal.start("crm", ARCHIVE, cell.swap, None)
    roots = json.loads(journal.path.read_text())["roots"]
    assert roots["app"]["placed"] == str(elsewhere)
    assert roots["app"]["new_ino"] == os.lstat(elsewhere).st_ino
    del cell.swap.placed["data"]  # not placed yet: the staging folder's copy
    journal.note_roots(cell.swap)
    roots = json.loads(journal.path.read_text())["roots"]
    assert roots["data"]["placed"] == str(cell.swap.staging / "data")
    assert roots["data"]["new_ino"] == os.lstat(cell.swap.staging / "data").st_ino


def test_killed_before_the_swap_the_live_data_stays_and_the_staged_data_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cell = staged_cell(tmp_path)
    cell.journal("staged", pid=None)
    caplog.set_level(logging.WARNING, logger="cellvault")
    (rec,) = recover("crm", [cell.app, cell.data])
    assert rec == Recovery(
        cell="crm",
        archive=ARCHIVE,
        action="rolled back",
        roots={"app": "live data kept", "data": "live data kept"},
    )
    assert rec.settled
    assert rec.describe() == f"an interrupted restore of cell crm to {ARCHIVE} was rolled back"
    assert (read(cell.app), read(cell.data)) == LIVE
    assert beside(tmp_path / "srv") == []
    assert events(caplog, "restore.recovered") == [
        {"cell": "crm", "action": "rolled back", "detail": rec.describe()}
    ]
    assert events(caplog, "restore.side_unknown") == []
    assert recover("crm", [cell.app, cell.data]) == []


def test_killed_mid_swap_the_swapped_roots_go_back_whether_they_had_live_data_or_not(
    tmp_path: Path,
) -> None:
    cell = staged_cell(tmp_path, data_live=False)
    cell.journal("swapping")
    cell.swap_in("data")  # a root that had no live data
    cell.swap_in("app")
    (rec,) = recover("crm", [cell.app, cell.data])
    assert rec.action == "rolled back" and rec.kept == () and rec.settled
    assert rec.roots == {"app": "live data kept", "data": "live data kept"}
    assert read(cell.app) == LIVE[0]
    assert not cell.data.exists()
    assert beside(tmp_path / "srv") == []


@pytest.mark.parametrize("safety", [None, "cell_crm_20250101_010000"])
def test_killed_after_the_swap_the_restore_is_finished(tmp_path: Path, safety: str | None) -> None:
    cell = staged_cell(tmp_path)
    cell.journal("swapped", safety_backup=safety)
    cell.swap_in("app")  # data not swapped yet: the recovery swaps it in
    (rec,) = recover("crm", [cell.app, cell.data])
    assert (rec.action, rec.roots, rec.safety_backup) == (
        "finished",
        {"app": "new", "data": "new"},
        safety,
    )
    assert rec.settled
    assert (read(cell.app), read(cell.data)) == NEW
    if safety:
        assert rec.kept == () and beside(tmp_path / "srv") == []
        assert rec.describe() == f"an interrupted restore of cell crm to {ARCHIVE} was finished"
    else:
        # Without a safety backup the old data is the only copy: kept, named.
        kept = sorted(Path(p) for p in rec.kept)
        assert [p.parent for p in kept] == [tmp_path / "srv"] * 2
        assert re.fullmatch(r"\.cellvault-replaced-app-[0-9a-f]{6}", kept[0].name), kept
        assert re.fullmatch(r"\.cellvault-replaced-data-[0-9a-f]{6}", kept[1].name), kept
        assert (read(kept[0]), read(kept[1])) == LIVE
        assert beside(tmp_path / "srv") == sorted(p.name for p in kept)
        assert rec.describe() == (
            f"an interrupted restore of cell crm to {ARCHIVE} was finished; the old data is "
            f"kept at {', '.join(rec.kept)}"
        )


def test_a_root_without_live_data_is_moved_in_when_the_restore_is_finished(
    tmp_path: Path,
) -> None:
    cell = staged_cell(tmp_path, data_live=False)
    cell.journal("swapped", safety_backup="s")
    (rec,) = recover("crm", [cell.app, cell.data])
    assert rec.roots == {"app": "new", "data": "new"}
    assert (read(cell.app), read(cell.data)) == NEW
    assert beside(tmp_path / "srv") == []


@pytest.mark.parametrize("root", ["app", "data"])
def test_a_root_placed_outside_the_staging_folder_is_removed_with_it(
    tmp_path: Path, root: str
) -> None:
    cell = staged_cell(tmp_path)
    elsewhere = tmp_path / "srv" / f".cellvault-restore-{root}-x"
    os.rename(cell.swap.placed[root], elsewhere)
    cell.swap.placed[root] = elsewhere
    cell.journal("staged")
    (rec,) = recover("crm", [cell.app, cell.data])
    assert rec.roots == {"app": "live data kept", "data": "live data kept"}
    assert beside(tmp_path / "srv") == [] and (read(cell.app), read(cell.data)) == LIVE


def test_a_placed_file_or_link_is_removed_too(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    link = tmp_path / "srv" / ".cellvault-restore-app-link"
    link.symlink_to(cell.app)
    file = tmp_path / "srv" / ".cellvault-restore-data-file"
    file.write_text("x\n")
    journal = cell.journal("staged")
    journal.data["roots"]["app"]["placed"] = str(link)
    journal.data["roots"]["data"]["placed"] = str(file)
    journal._save()
    recover("crm", [cell.app, cell.data])
    assert beside(tmp_path / "srv") == [] and (read(cell.app), read(cell.data)) == LIVE


def test_journals_of_other_cells_and_unreadable_ones_are_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cell = staged_cell(tmp_path)
    path = tmp_path / "srv" / f"{JOURNAL_PREFIX}crm.json"
    assert find("crm", [cell.app, cell.data]) == []
    caplog.set_level(logging.ERROR, logger="cellvault")
    for text in ("{", json.dumps({"cell": "other"}), "[]"):
        path.write_text(text)
        assert find("crm", [cell.app, cell.data, tmp_path / "var" / "x"]) == [path]
        assert recover("crm", [cell.app]) == []
        assert path.read_text() == text
        assert (read(cell.app), read(cell.data)) == LIVE
    assert events(caplog, "restore.journal_unreadable") == [
        {
            "cell": "crm",
            "journal": str(path),
            "error": "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        }
    ]
    path.unlink()
    path.mkdir()  # a folder is not a journal
    assert find("crm", [cell.app]) == []


def test_a_journal_of_a_restore_still_running_is_left_to_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cell = staged_cell(tmp_path)
    torn = tmp_path / "srv" / f"{JOURNAL_PREFIX}crm.json.0a1b2c3d.tmp"
    other = tmp_path / "srv" / f"{JOURNAL_PREFIX}other.json.0a1b2c3d.tmp"
    runner = blocking_child()
    try:
        journal = cell.journal("swapping", pid=runner.pid)
        torn.write_text("{")
        other.write_text("{")
        caplog.set_level(logging.INFO, logger="cellvault")
        assert recover("crm", [cell.app, cell.data]) == []
        assert journal.path.exists() and torn.exists() and cell.swap.staging.exists()
        assert signals_sent(runner.pid) == 0  # asked, not signalled
        assert events(caplog, "restore.journal_live") == [
            {"cell": "crm", "journal": str(journal.path), "pid": runner.pid}
        ]
        # Another host's restore cannot be asked: this host settles it.
        journal.data["host"] = "elsewhere"
        journal._save()
        (rec,) = recover("crm", [cell.app, cell.data])
        assert rec.action == "rolled back"
    finally:
        runner.kill()
        runner.wait()
    assert not journal.path.exists() and not torn.exists()
    assert other.exists()  # another cell's
    # A restore that is gone (its pid not running), or this very process: settled.
    for pid in (runner.pid, os.getpid(), 0, -1, "12"):
        cell = staged_cell(tmp_path / str(pid))
        cell.journal("staged", pid=pid)
        (rec,) = recover("crm", [cell.app, cell.data])
        assert rec.action == "rolled back", pid


def test_a_restore_of_another_user_still_running_is_left_to_it() -> None:
    """Signalling another user's process is refused (EPERM): it runs, so its journal is its own."""
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        data = {"host": socket.gethostname(), "pid": runner.pid}
        assert _running(data) is True
        assert _running({**data, "host": "elsewhere"}) is False
        if os.geteuid() != 0:
            return  # the EPERM case needs a process of another user: root's, seen from nobody
        child = os.fork()
        if child == 0:  # as another user, this root-owned process cannot be signalled
            try:
                os.setuid(65534)
                os._exit(0 if _running(data) is True else 1)
            finally:
                os._exit(2)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert runner.poll() is None
    finally:
        runner.kill()
        runner.wait()


# -- staged databases -----------------------------------------------------------


@attrs.define
class FileLoad(StagedLoad):
    """A staged load of a one-file 'database': swapping renames real files in a folder."""

    folder: Path = Path()
    fail: str = ""

    @property
    def live(self) -> Path:
        return self.folder / "live.db"

    def _step(self, name: str) -> None:
        if self.fail == name:
            raise OSError(f"{name} refused by postgresql://app:hunter2@db:5432/crm")

    def swap(self) -> None:
        self._step("swap")
        os.rename(self.live, self.folder / "old.db")
        os.rename(self.folder / "side.db", self.live)

    def unswap(self) -> None:
        self._step("unswap")
        os.rename(self.live, self.folder / "side.db")
        os.rename(self.folder / "old.db", self.live)

    def discard(self) -> None:
        self._step("discard")
        (self.folder / "side.db").unlink()

    def commit(self) -> None:
        self._step("commit")
        (self.folder / "old.db").unlink()

    def swapped(self) -> bool | None:
        self._step("swapped")
        if (self.folder / "old.db").exists():
            return True
        return False if (self.folder / "side.db").exists() else None


def database(tmp_path: Path, name: str, *, swapped: bool = False) -> dict[str, Any]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "live.db").write_text("old\n")
    (folder / "side.db").write_text("new\n")
    if swapped:
        FileLoad(name, "x", folder=folder).swap()
    return {
        "dumper": name,
        "what": f"database {name}",
        "side": f"{name}_new",
        "old": f"{name}_old",
        "folder": str(folder),
    }


def files(state: Mapping[str, Any]) -> dict[str, str]:
    return read(Path(state["folder"]))


def resume_with(fail: Mapping[str, str] | None = None) -> Any:
    def resume(state: Mapping[str, Any]) -> StagedLoad | None:
        if state.get("lost"):
            return None
        if (fail or {}).get(state["dumper"]) == "resume":
            raise RuntimeError("cannot reach postgresql://app:hunter2@db:5432/crm")
        return FileLoad(
            state["dumper"],
            state["what"],
            state["side"],
            Path(state["folder"]),
            (fail or {}).get(state["dumper"], ""),
        )

    return resume


OLD_DB = {"live.db": "old\n", "side.db": "new\n"}
NEW_DB_KEPT = {"live.db": "new\n", "old.db": "old\n"}
NEW_DB = {"live.db": "new\n"}


def test_killed_mid_swap_of_a_database_the_cell_is_finished_when_every_part_can_be(
    tmp_path: Path,
) -> None:
    cell = staged_cell(tmp_path)
    pg = database(tmp_path, "pg", swapped=True)  # swapped in, journalled
    my = database(tmp_path, "my", swapped=True)  # swapped in, killed before the journal said so
    sq = database(tmp_path, "sq")  # not swapped yet
    cell.journal("swapping", sides=[pg, my, sq], loaded=["pg"], swapping="my")
    (rec,) = recover("crm", [cell.app, cell.data], resume_with())
    assert rec.action == "finished" and rec.settled
    assert (files(pg), files(my), files(sq)) == (NEW_DB_KEPT, NEW_DB_KEPT, NEW_DB_KEPT)
    assert rec.dumps == {
        "pg": "swapped in (database pg); the replaced state is kept as pg_old",
        "my": "swapped in (database my); the replaced state is kept as my_old",
        "sq": "swapped in (database sq); the replaced state is kept as sq_old",
    }
    assert rec.describe().startswith(
        f"an interrupted restore of cell crm to {ARCHIVE} was finished; dumper pg: swapped in "
        "(database pg); the replaced state is kept as pg_old; dumper my: swapped in"
    )
    assert (read(cell.app), read(cell.data)) == NEW


def test_with_a_safety_backup_the_replaced_databases_are_dropped(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    pg, my = database(tmp_path, "pg", swapped=True), database(tmp_path, "my")
    cell.journal("swapped", sides=[pg, my], loaded=["pg"], safety_backup="s")
    (rec,) = recover("crm", [cell.app, cell.data], resume_with())
    assert (files(pg), files(my)) == (NEW_DB, NEW_DB)
    assert rec.dumps == {
        "pg": "swapped in (database pg); the replaced state pg_old dropped",
        "my": "swapped in (database my); the replaced state my_old dropped",
    }
    assert rec.kept == () and beside(tmp_path / "srv") == []


def test_a_swap_under_way_that_did_not_take_effect_is_put_back(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    pg, my = database(tmp_path, "pg"), database(tmp_path, "my")
    cell.journal("swapping", sides=[pg, my], swapping="pg")
    (rec,) = recover("crm", [cell.app, cell.data], resume_with())
    assert rec.action == "rolled back" and rec.settled
    assert (files(pg), files(my)) == ({"live.db": "old\n"}, {"live.db": "old\n"})
    assert rec.dumps == {
        "pg": "put back (database pg); the scratch pg_new dropped",
        "my": "put back (database my); the scratch my_new dropped",
    }
    assert (read(cell.app), read(cell.data)) == LIVE


def test_a_database_that_cannot_say_where_it_is_puts_everything_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cell = staged_cell(tmp_path)
    pg = database(tmp_path, "pg", swapped=True)
    my = database(tmp_path, "my", swapped=True)
    cell.journal("swapping", sides=[pg, my], loaded=["pg"], swapping="my")
    caplog.set_level(logging.WARNING, logger="cellvault")
    (rec,) = recover("crm", [cell.app, cell.data], resume_with({"my": "swapped"}))
    assert rec.action == "rolled back" and not rec.settled
    assert files(pg) == {"live.db": "old\n"}  # put back
    assert files(my) == NEW_DB_KEPT  # not touched: it could not be asked
    assert rec.sides == ("my_new (my, for database my)",)
    assert rec.dumps == {"pg": "put back (database pg); the scratch pg_new dropped"}
    warned = [r.getMessage() for r in caplog.records if "restore.side_unknown" in r.getMessage()]
    assert len(warned) == 1 and "hunter2" not in warned[0] and "my_new" in warned[0]
    assert rec.describe() == (
        f"an interrupted restore of cell crm to {ARCHIVE} was rolled back; dumper pg: put back "
        "(database pg); the scratch pg_new dropped; it may have left the scratch objects "
        "my_new (my, for database my) (settle them)"
    )
    assert (read(cell.app), read(cell.data)) == LIVE


def test_databases_that_cannot_be_rebuilt_are_named_for_a_person(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    pg = database(tmp_path, "pg", swapped=True)
    sq = database(tmp_path, "sq")
    cell.journal("swapped", sides=[pg, sq], loaded=["pg"])
    (rec,) = recover("crm", [cell.app, cell.data])  # no resume at all
    assert rec.action == "finished" and not rec.settled
    assert rec.dumps == {"pg": "swapped in (database pg); the replaced state is kept as pg_old"}
    assert rec.sides == ("sq_new (sq, for database sq)",)
    assert (files(pg), files(sq)) == (NEW_DB_KEPT, OLD_DB)
    cell = staged_cell(tmp_path / "again")
    pg = database(tmp_path / "again", "pg", swapped=True)
    cell.journal("staged", sides=[{**pg, "lost": True}], loaded=["pg"])
    (rec,) = recover("crm", [cell.app, cell.data], resume_with())
    assert rec.sides == ("pg_new (pg, for database pg)",) and rec.dumps == {}
    state = {**pg, "old": None}
    cell = staged_cell(tmp_path / "third")
    cell.journal("swapped", sides=[{**state, "lost": True}], loaded=["pg"])
    (rec,) = recover("crm", [cell.app, cell.data], resume_with())
    assert rec.dumps == {"pg": "swapped in (database pg); the replaced state is kept as pg_new"}


def test_a_database_that_fails_to_settle_is_named_with_the_error_without_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cell = staged_cell(tmp_path)
    pg = database(tmp_path, "pg", swapped=True)
    my = database(tmp_path, "my")
    cell.journal("staged", sides=[pg, my], loaded=["pg"])
    caplog.set_level(logging.ERROR, logger="cellvault")
    (rec,) = recover("crm", [cell.app, cell.data], resume_with({"pg": "unswap"}))
    assert rec.action == "rolled back" and not rec.settled
    assert len(rec.sides) == 1
    assert rec.sides[0] == (
        "pg_new (pg, for database pg): unswap refused by postgresql://app:***@db:5432/crm"
    )
    assert rec.dumps == {"my": "put back (database my); the scratch my_new dropped"}
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and "restore.side_unsettled" in errors[0] and "hunter2" not in errors[0]


def test_a_database_loaded_live_is_reported_with_the_way_back(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    cell.journal("loading", loaded=["redis"], loading="mongo", safety_backup="cell_crm_1")
    (rec,) = recover("crm", [cell.app, cell.data])
    assert rec.action == "rolled back" and not rec.settled
    assert (rec.live_loads, rec.loaded, rec.partly_loaded) == (("redis",), ("redis",), "mongo")
    assert rec.describe() == (
        f"an interrupted restore of cell crm to {ARCHIVE} was rolled back; the databases of "
        "dumpers redis already hold the archive, dumper mongo may hold part of it: run the "
        "restore again to finish it (restore cell_crm_1 to go back)"
    )
    assert (read(cell.app), read(cell.data)) == LIVE
    cell = staged_cell(tmp_path / "b")
    cell.journal("loading", loading="mongo")
    (rec,) = recover("crm", [cell.app, cell.data])
    assert rec.describe() == (
        f"an interrupted restore of cell crm to {ARCHIVE} was rolled back; the databases of "
        "dumpers none already hold the archive, dumper mongo may hold part of it: run the "
        "restore again to finish it (no safety backup was taken)"
    )
    # Mid-swap with a live load done: every file is new, nothing more to run.
    cell = staged_cell(tmp_path / "c")
    cell.journal("swapping", loaded=["redis"])
    (rec,) = recover("crm", [cell.app, cell.data])
    assert (rec.action, rec.settled) == ("finished", True)
    assert (read(cell.app), read(cell.data)) == NEW


def test_whether_a_recovery_settled_the_cell() -> None:
    base = Recovery("crm", ARCHIVE, "rolled back", {})
    assert base.settled
    assert not attrs.evolve(base, live_loads=("redis",)).settled
    assert attrs.evolve(base, action="finished", live_loads=("redis",)).settled
    assert not attrs.evolve(base, action="finished", partly_loaded="mongo").settled
    assert not attrs.evolve(base, action="finished", sides=("x",)).settled
    finished = attrs.evolve(base, action="finished", live_loads=("redis",), partly_loaded="m")
    assert finished.describe() == (
        f"an interrupted restore of cell crm to {ARCHIVE} was finished, dumper m may hold part of it"
    )


def test_every_journal_of_the_cell_is_settled_whatever_the_others_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cell with roots in two folders: a journal beside each (two restores, one killed each)."""
    first = staged_cell(tmp_path / "one")
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for blocker in ("unreadable", "another cell's", "live"):
            second = staged_cell(tmp_path / "two" / blocker)
            if blocker == "unreadable":
                (tmp_path / "one" / "srv" / f"{JOURNAL_PREFIX}crm.json").write_text("{")
            elif blocker == "another cell's":
                (tmp_path / "one" / "srv" / f"{JOURNAL_PREFIX}crm.json").write_text(
                    json.dumps({"cell": "web"})
                )
            else:
                first.journal("staged", pid=runner.pid)
            second.journal("staged", pid=None)
            (rec,) = recover("crm", [first.app, second.app])
            assert rec.action == "rolled back"
            assert not (second.app.parent / f"{JOURNAL_PREFIX}crm.json").exists()
            assert (tmp_path / "one" / "srv" / f"{JOURNAL_PREFIX}crm.json").exists()
        assert runner.poll() is None
    finally:
        runner.kill()
        runner.wait()


def test_a_side_left_for_a_person_does_not_stop_the_others(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    lost, my = database(tmp_path, "pg"), database(tmp_path, "my")
    cell.journal("staged", sides=[{**lost, "lost": True}, my])
    (rec,) = recover("crm", [cell.app, cell.data], resume_with())
    assert rec.sides == ("pg_new (pg, for database pg)",)
    assert rec.dumps == {"my": "put back (database my); the scratch my_new dropped"}
    assert files(my) == {"live.db": "old\n"}


def test_only_the_database_being_swapped_is_asked_where_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cell = staged_cell(tmp_path)
    pg, my = database(tmp_path, "pg"), database(tmp_path, "my")
    cell.journal("staged", sides=[pg, my], swapping="my")
    caplog.set_level(logging.WARNING, logger="cellvault")
    # pg would fail if asked; it is not the one under way: it is put back.
    (rec,) = recover("crm", [cell.app, cell.data], resume_with({"pg": "swapped"}))
    assert rec.dumps["pg"] == "put back (database pg); the scratch pg_new dropped"
    assert rec.settled and events(caplog, "restore.side_unknown") == []
    # Without a way to rebuild them, nothing is asked (and nothing warns).
    cell = staged_cell(tmp_path / "b")
    pg = database(tmp_path / "b", "pg")
    cell.journal("swapping", sides=[pg], swapping="pg")
    (rec,) = recover("crm", [cell.app, cell.data])
    assert rec.sides == ("pg_new (pg, for database pg)",)
    assert events(caplog, "restore.side_unknown") == []


def test_a_swap_that_cannot_say_whether_it_took_effect_is_not_finished(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    pg = database(tmp_path, "pg", swapped=True)
    my = database(tmp_path, "my")
    (Path(my["folder"]) / "side.db").unlink()  # neither side nor old: it cannot tell
    cell.journal("swapping", sides=[pg, my], loaded=["pg"], swapping="my")
    (rec,) = recover("crm", [cell.app, cell.data], resume_with())
    assert rec.action == "rolled back"
    assert files(pg) == {"live.db": "old\n"}
    assert (read(cell.app), read(cell.data)) == LIVE


def test_the_errors_and_the_warnings_name_the_side_and_the_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cell = staged_cell(tmp_path)
    pg, my = database(tmp_path, "pg", swapped=True), database(tmp_path, "my", swapped=True)
    cell.journal("swapping", sides=[pg, my], loaded=["pg"], swapping="my")
    caplog.set_level(logging.WARNING, logger="cellvault")
    recover("crm", [cell.app, cell.data], resume_with({"my": "resume", "pg": "unswap"}))
    assert events(caplog, "restore.side_unknown") == [
        {"side": "my_new", "error": "cannot reach postgresql://app:***@db:5432/crm"}
    ]
    assert events(caplog, "restore.side_unsettled") == [
        {
            "side": "pg_new (pg, for database pg)",
            "error": "unswap refused by postgresql://app:***@db:5432/crm",
        }
    ]


def test_a_description_lists_every_database_and_scratch_object() -> None:
    rec = Recovery(
        "crm",
        ARCHIVE,
        "rolled back",
        {},
        live_loads=("redis", "mongo"),
        sides=("a_new (pg, for database a)", "b_new (my, for database b)"),
    )
    assert rec.describe() == (
        f"an interrupted restore of cell crm to {ARCHIVE} was rolled back; the databases of "
        "dumpers redis, mongo already hold the archive: run the restore again to finish it "
        "(no safety backup was taken); it may have left the scratch objects a_new (pg, for "
        "database a), b_new (my, for database b) (settle them)"
    )


# -- staging a killed restore left before its journal ------------------------------------


def dead_child() -> int:
    """The pid of a process of ours that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def blocking_child() -> subprocess.Popen[str]:
    """A running child that blocks every signal it may: one sent to it stays pending."""
    code = (
        "import signal, time\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, set(range(1, 32)) - {9, 19})\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def signals_sent(pid: int) -> int:
    """The signals pending for *pid* (a bit each), as /proc says the moment kill() returned."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)


def killed_journal(swap: Swap) -> Journal:
    """The journal a restore of crm to ARCHIVE through *swap* left when it was killed."""
    journal = Journal.start("crm", ARCHIVE, swap, None)
    journal.data.update(pid=None)
    journal._save()
    return journal


def unjournalled(tmp_path: Path, **owner: Any) -> Swap:
    """A staging directory and its owner file, as a restore killed while extracting leaves them."""
    app = write_tree(tmp_path / "srv" / "app", {"a.txt": "live a\n"})
    swap = Swap.create({"app": app}, ARCHIVE, cell="crm", in_place=True)
    write_tree(swap.staging / "app", {"a.txt": "new a\n"})
    HELD.discard(swap.staging)
    swap.owner.update(owner)
    swap._save_owner()
    return swap


def test_staging_left_by_a_dead_in_place_restore_is_removed_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    swap = unjournalled(tmp_path, pid=dead_child())
    app = tmp_path / "srv" / "app"
    assert debris("crm", [app]) == [
        f"staging directory {swap.staging} of a killed restore: it holds only a copy of the "
        "archive; the next restore or backup of the cell removes it"
    ]
    assert debris("web", [app]) == []  # another cell's
    caplog.set_level(logging.WARNING, logger="cellvault")
    (rec,) = recover("crm", [app])
    assert (rec.action, rec.archive, rec.removed) == ("cleaned up", ARCHIVE, (str(swap.staging),))
    assert rec.roots == {}  # no root was touched: the staging held only a copy of the archive
    assert rec.describe() == (
        f"a restore of cell crm to {ARCHIVE} was killed before its journal was written (so "
        "before any live data was touched); removed what it had staged, which held only a copy "
        f"of the archive: {swap.staging}"
    )
    assert events(caplog, "restore.staging_removed") == [{"cell": "crm", "detail": rec.describe()}]
    assert beside(tmp_path / "srv") == [] and read(app) == {"a.txt": "live a\n"}
    assert recover("crm", [app]) == [] and debris("crm", [app]) == []


def test_staging_of_a_killed_restore_not_yet_reaped_is_removed(tmp_path: Path) -> None:
    # In a container whose first process does not reap orphans, a restore
    # killed with SIGKILL stays a zombie a while: kill(pid, 0) still answers.
    # The next restore removed its staging only on the run after (seen by hand).
    child = subprocess.Popen(["sleep", "30"])
    try:
        swap = unjournalled(tmp_path, pid=child.pid)
        app = tmp_path / "srv" / "app"
        child.kill()
        killed_not_reaped(child.pid)
        (rec,) = recover("crm", [app])
        assert (rec.action, rec.removed) == ("cleaned up", (str(swap.staging),))
        assert beside(tmp_path / "srv") == [] and read(app) == {"a.txt": "live a\n"}
    finally:
        child.kill()
        child.wait()


def test_an_owner_file_without_its_staging_is_removed(tmp_path: Path) -> None:
    swap = unjournalled(tmp_path, pid=dead_child())
    shutil.rmtree(swap.staging)
    app = tmp_path / "srv" / "app"
    owner = tmp_path / "srv" / f"{swap.staging.name}.owner.json"
    assert debris("crm", [app]) == [
        f"owner file {owner} of a killed restore (its staging directory is gone): the next "
        "restore or backup of the cell removes it"
    ]
    (rec,) = recover("crm", [app])
    assert rec.removed == (f"{owner} (its staging directory was gone)",)
    assert beside(tmp_path / "srv") == []


@pytest.mark.parametrize(
    ("owner", "why"),
    [
        ({"host": "elsewhere"}, "made on host elsewhere; remove it there"),
        ({"in_place": False, "pid": None}, "made by a restore elsewhere (--into)"),
    ],
)
def test_staging_that_cannot_be_proved_dead_is_named_not_removed(
    tmp_path: Path, owner: dict[str, Any], why: str
) -> None:
    if owner.get("pid", 0) is None:
        owner["pid"] = dead_child()
    swap = unjournalled(tmp_path, **owner)
    app = tmp_path / "srv" / "app"
    assert recover("crm", [app]) == []
    assert swap.staging.is_dir()
    assert debris("crm", [app]) == [f"staging directory {swap.staging}: {why}"]


def test_staging_of_a_running_restore_is_left_to_it(tmp_path: Path) -> None:
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        swap = unjournalled(tmp_path, pid=runner.pid)
        app = tmp_path / "srv" / "app"
        assert recover("crm", [app]) == [] and debris("crm", [app]) == []
        assert swap.staging.is_dir()
        # This very process holds its own while its swap runs.
        mine = unjournalled(tmp_path / "mine", pid=os.getpid())
        HELD.add(mine.staging)
        try:
            assert recover("crm", [tmp_path / "mine" / "srv" / "app"]) == []
            assert debris("crm", [tmp_path / "mine" / "srv" / "app"]) == []
        finally:
            HELD.discard(mine.staging)
        assert len(recover("crm", [tmp_path / "mine" / "srv" / "app"])) == 1
    finally:
        runner.kill()
        runner.wait()


def test_staging_without_an_owner_file_is_named_by_its_cell(tmp_path: Path) -> None:
    swap = unjournalled(tmp_path, pid=dead_child())
    (tmp_path / "srv" / f"{swap.staging.name}.owner.json").unlink()
    other = tmp_path / "srv" / ".cellvault-restore-cell_web_20250101_020000-0a1b2c3d"
    other.mkdir()
    app = tmp_path / "srv" / "app"
    assert recover("crm", [app]) == []
    assert debris("crm", [app]) == [
        f"staging directory {swap.staging}: no owner file says which run made it; remove it "
        "once no restore runs"
    ]


def test_debris_names_journals_and_old_data_kept(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    journal = cell.journal("swapping", pid=None)
    kept = tmp_path / "srv" / ".cellvault-replaced-app-0a1b2c"
    kept.mkdir()
    assert debris("crm", [cell.app, cell.data]) == [
        f"restore journal {journal.path} of a killed restore (phase swapping): the next "
        "restore or backup of the cell settles it",
        f"old data {kept} kept by the recovery of a killed restore (perhaps the only copy of "
        "what the restore replaced): check it, then remove it",
    ]
    journal.path.write_text("{")
    assert debris("crm", [cell.app])[0] == (
        f"unreadable restore journal {journal.path}: read it, then settle the cell by hand"
    )


def test_debris_of_a_cell_in_two_folders_and_restores_still_running(tmp_path: Path) -> None:
    cell = staged_cell(tmp_path)
    data = write_tree(tmp_path / "var" / "data", {"d.txt": "live d\n"})
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A running restore's journal and a running --into restore's staging: nothing to say.
        journal = cell.journal("swapping", pid=runner.pid)
        into = unjournalled(tmp_path / "into", pid=runner.pid, in_place=False)
        assert debris("crm", [cell.app, data]) == []
        assert debris("crm", [tmp_path / "into" / "srv" / "app"]) == []
        assert running({"host": socket.gethostname(), "pid": runner.pid}) is True
        assert into.staging.is_dir()
    finally:
        runner.kill()
        runner.wait()
    assert running({"host": socket.gethostname(), "pid": runner.pid}) is False
    # Unreadable here, killed there; old data kept beside the second folder's root.
    journal.path.write_text("{")
    other = Journal.start("crm", ARCHIVE, Swap.create({"data": data}, ARCHIVE), None)
    other.data.update(pid=None)
    other._save()
    kept = tmp_path / "var" / ".cellvault-replaced-data-0a1b2c"
    kept.mkdir()
    said = debris("crm", [cell.app, data])
    assert said[:2] == [
        f"unreadable restore journal {journal.path}: read it, then settle the cell by hand",
        f"restore journal {other.path} of a killed restore (phase staged): the next restore "
        "or backup of the cell settles it",
    ]
    assert said[-1] == (
        f"old data {kept} kept by the recovery of a killed restore (perhaps the only copy of "
        "what the restore replaced): check it, then remove it"
    )


def test_a_journalled_staging_is_not_debris_but_the_next_one_is(tmp_path: Path) -> None:
    # A killed in-place restore of crm with a journal: the journal is what debris names (the
    # next restore settles journal and staging together), not its staging directory as well.
    first = unjournalled(tmp_path, pid=dead_child())
    journal = killed_journal(first)
    app = tmp_path / "srv" / "app"
    later = Swap.create({"app": app}, "cell_crm_20250102_020000", cell="crm", in_place=True)
    HELD.discard(later.staging)
    later.owner.update(pid=dead_child())
    later._save_owner()
    assert first.staging.name < later.staging.name  # the journalled one is met first
    assert debris("crm", [app]) == [
        f"restore journal {journal.path} of a killed restore (phase staged): the next "
        "restore or backup of the cell settles it",
        f"staging directory {later.staging} of a killed restore: it holds only a copy of the "
        "archive; the next restore or backup of the cell removes it",
    ]


def test_the_copies_a_dead_restore_placed_on_other_file_systems_are_removed(
    tmp_path: Path,
) -> None:
    swap = unjournalled(tmp_path, pid=dead_child())
    copy = tmp_path / "var" / ".cellvault-restore-data-0a1b2c3d"
    write_tree(copy, {"d.txt": "new d\n"})
    outside = tmp_path / "var" / "not-ours"
    outside.mkdir()
    swap.owner.update(copies=[str(copy), str(outside)])
    swap._save_owner()
    (rec,) = recover("crm", [tmp_path / "srv" / "app"])
    assert rec.removed == (str(swap.staging), str(copy))
    assert rec.describe().endswith(f"held only a copy of the archive: {swap.staging}, {copy}")
    assert not copy.exists() and outside.is_dir()  # only what is named like a staged copy


def test_staging_beside_a_root_whose_folder_is_gone_is_still_found_beside_the_others(
    tmp_path: Path,
) -> None:
    swap = unjournalled(tmp_path, pid=dead_child())
    dests = [tmp_path / "gone" / "data", tmp_path / "srv" / "app"]
    assert debris("crm", dests) == [
        f"staging directory {swap.staging} of a killed restore: it holds only a copy of the "
        "archive; the next restore or backup of the cell removes it"
    ]
    (rec,) = recover("crm", dests)
    assert rec.removed == (str(swap.staging),) and not swap.staging.exists()


def test_what_only_looks_like_staging_is_never_staging(tmp_path: Path) -> None:
    # A link and a file named like a dead restore's staging, each with an owner file saying so,
    # and a copy across file systems (no owner file) that sorts before the real staging.
    swap = unjournalled(tmp_path, pid=dead_child())
    srv = tmp_path / "srv"
    victim = write_tree(tmp_path / "victim", {"keep.txt": "not ours\n"})
    link = srv / ".cellvault-restore-cell_crm_20250101_020000-00000000"
    link.symlink_to(victim, target_is_directory=True)
    plain = srv / ".cellvault-restore-cell_crm_20250101_020000-00000001"
    plain.write_text("not a folder\n")
    for fake in (link, plain):
        owner = {**swap.owner, "pid": dead_child()}
        (srv / f"{fake.name}{OWNER_SUFFIX}").write_text(json.dumps(owner))
    copy = write_tree(srv / ".cellvault-restore-app-0a1b2c3d", {"a.txt": "new a\n"})
    assert sorted([link.name, plain.name, copy.name, swap.staging.name])[0] == copy.name
    assert debris("crm", [srv / "app"]) == [
        f"staging directory {swap.staging} of a killed restore: it holds only a copy of the "
        "archive; the next restore or backup of the cell removes it"
    ]
    (rec,) = recover("crm", [srv / "app"])
    assert rec.removed == (str(swap.staging),)
    assert link.is_symlink() and read(victim) == {"keep.txt": "not ours\n"}
    assert plain.read_text() == "not a folder\n" and read(copy) == {"a.txt": "new a\n"}


def test_staging_met_after_one_that_must_stay_is_still_removed(tmp_path: Path) -> None:
    app = write_tree(tmp_path / "srv" / "app", {"a.txt": "live a\n"})
    stays = Swap.create({"app": app}, "cell_crm_20250101_020000", cell="crm", in_place=True)
    stays.owner.update(host="elsewhere")
    stays._save_owner()
    goes = Swap.create({"app": app}, "cell_crm_20250102_020000", cell="crm", in_place=True)
    goes.owner.update(pid=dead_child())
    goes._save_owner()
    HELD.discard(stays.staging)
    HELD.discard(goes.staging)
    assert stays.staging.name < goes.staging.name
    (rec,) = recover("crm", [app])
    assert rec.removed == (str(goes.staging),)
    assert stays.staging.is_dir() and not goes.staging.exists()


def test_old_data_kept_beside_one_of_two_roots_of_the_same_name_is_named_once(
    tmp_path: Path,
) -> None:
    # Roots /srv/data and /var/data: the old data kept beside the second is named once.
    first = write_tree(tmp_path / "srv" / "data", {"d.txt": "d\n"})
    second = write_tree(tmp_path / "var" / "data", {"d.txt": "d\n"})
    kept = tmp_path / "var" / ".cellvault-replaced-data-0a1b2c"
    kept.mkdir()
    assert debris("crm", [first, second]) == [
        f"old data {kept} kept by the recovery of a killed restore (perhaps the only copy of "
        "what the restore replaced): check it, then remove it"
    ]


def test_another_cells_staging_and_journal_met_first_hide_nothing_of_this_cell(
    tmp_path: Path,
) -> None:
    # billing sorts before crm: its unreadable journal and its dead restore's staging are met
    # first, and neither stops crm's journalled staging from being matched or crm's next one
    # from being found.
    crm = unjournalled(tmp_path, pid=dead_child())
    journal = killed_journal(crm)
    app = tmp_path / "srv" / "app"
    billing = Swap.create(
        {"app": app}, "cell_billing_20250101_020000", cell="billing", in_place=True
    )
    billing.owner.update(pid=dead_child())
    billing._save_owner()
    later = Swap.create({"app": app}, "cell_crm_20250102_020000", cell="crm", in_place=True)
    later.owner.update(pid=dead_child())
    later._save_owner()
    for swap in (billing, later):
        HELD.discard(swap.staging)
    unreadable = tmp_path / "srv" / ".cellvault-journal-billing.json"
    unreadable.write_text("{")
    assert sorted([unreadable.name, journal.path.name]) == [unreadable.name, journal.path.name]
    assert billing.staging.name < crm.staging.name < later.staging.name
    assert debris("crm", [app]) == [
        f"restore journal {journal.path} of a killed restore (phase staged): the next "
        "restore or backup of the cell settles it",
        f"staging directory {later.staging} of a killed restore: it holds only a copy of the "
        "archive; the next restore or backup of the cell removes it",
    ]


def test_the_owner_file_of_a_journalled_staging_that_is_gone_is_the_journals(
    tmp_path: Path,
) -> None:
    # Killed after its staging was removed, before its journal was: the journal settles both.
    swap = unjournalled(tmp_path, pid=dead_child())
    journal = killed_journal(swap)
    shutil.rmtree(swap.staging)
    app = tmp_path / "srv" / "app"
    assert (tmp_path / "srv" / f"{swap.staging.name}{OWNER_SUFFIX}").is_file()
    assert debris("crm", [app]) == [
        f"restore journal {journal.path} of a killed restore (phase staged): the next "
        "restore or backup of the cell settles it"
    ]


def test_a_journal_of_a_restore_from_before_owner_files_is_settled(tmp_path: Path) -> None:
    # Staging made by a cellvault that wrote no owner file beside it.
    cell = staged_cell(tmp_path)
    cell.journal("staged", pid=None)
    owner = tmp_path / "srv" / f"{cell.swap.staging.name}{OWNER_SUFFIX}"
    owner.unlink()
    (rec,) = recover("crm", [cell.app, cell.data])
    assert rec.action == "rolled back"
    assert beside(tmp_path / "srv") == [] and read(cell.app) == LIVE[0]


def test_no_staging_is_swept_while_a_journal_of_the_cell_cannot_be_read(tmp_path: Path) -> None:
    swap = unjournalled(tmp_path, pid=dead_child())
    unreadable = tmp_path / "srv" / f"{JOURNAL_PREFIX}crm.json"
    unreadable.write_text("{")
    app = tmp_path / "srv" / "app"
    assert recover("crm", [app]) == []  # it may name that staging: a person settles it
    assert swap.staging.is_dir() and unreadable.exists()
    unreadable.unlink()
    (rec,) = recover("crm", [app])
    assert rec.removed == (str(swap.staging),)


def test_a_restore_that_is_pid_1_of_its_container_is_running() -> None:
    """pid 1 is a real process (a container's entry point): its journal is its own."""
    needs_root("start a process in a PID namespace of its own")
    assert _running({"host": socket.gethostname(), "pid": os.getpid()}) is False  # this one
    clone_newpid = 0x20000000
    libc = ctypes.CDLL(None, use_errno=True)
    child = os.fork()
    if child == 0:  # a new PID namespace: its first process is pid 1, the next one asks about it
        code = 3
        try:
            if libc.unshare(clone_newpid) != 0:
                os._exit(4)
            init = os.fork()
            if init == 0:
                time.sleep(60)
                os._exit(0)
            asker = os.fork()
            if asker == 0:
                os._exit(0 if _running({"host": socket.gethostname(), "pid": 1}) is True else 1)
            code = os.waitstatus_to_exitcode(os.waitpid(asker, 0)[1])
            os.kill(init, signal.SIGKILL)
            os.waitpid(init, 0)
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
