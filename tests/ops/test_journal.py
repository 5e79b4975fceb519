"""The restore journal in one process: what it records, and how :func:`recover` settles it.

The SIGKILL tests (test_restore_atomic.py, test_restore_kill_matrix.py) kill
real restores; these write each state such a restore leaves behind (real
folders, real swaps) and call the recovery directly, so that every rule of
cellvault.journal is checked by a test that runs in-process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from cellvault.dumpers.staging import StagedLoad
from cellvault.journal import JOURNAL_PREFIX, Journal, Recovery, _running, find, recover
from cellvault.swap import OWNER_SUFFIX, Swap, exchange
from tests.helpers import write_tree

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
    )  # no temporary copy left
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
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        journal = cell.journal("swapping", pid=runner.pid)
        torn.write_text("{")
        other.write_text("{")
        caplog.set_level(logging.INFO, logger="cellvault")
        assert recover("crm", [cell.app, cell.data]) == []
        assert journal.path.exists() and torn.exists() and cell.swap.staging.exists()
        assert runner.poll() is None  # asked, not signalled
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
