"""A drill killed with SIGKILL at each dump load leaves nothing behind once the next run is done.

The drill of a cell with files, PostgreSQL, MariaDB and Redis (databases 4,
the cell's, and 5, its swap_db, which no other test uses) is run in a
child process, killed as each dumper's scratch object exists (mid-load): a
scratch database, a scratch schema, keys in Redis's ``swap_db`` with the
scratch ``redis-server`` still running. The next drill, restore or
``doctor`` finds the drill's record, stops the scratch server, drops the
scratch objects, removes the scratch tree, and says so. A record whose
drill still runs is left alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellvault import Cell
from cellvault.doctor import run_checks
from tests.dumpers.conftest import MyDb, PgDb, RedisDb, my, mysql, pg, psql  # noqa: F401
from tests.helpers import make_vault, times_clock, utc, write_tree
from tests.ops.test_restore_kill_matrix import REPO, TIMES, fingerprint, vault_of
from tests.servers.fixtures import unavailable

CELL_DB, SPARE_DB = 4, 5
#: Taken while a test uses Redis databases 4 and 5 (other checkouts run this test too).
LOCK = Path("/tmp/cellvault-test-redis-4-5.lock")

#: Shell tests that pass once a dumper's scratch object exists (for a kill mid-load).
PROBES = {
    "pg": 'psql -h 127.0.0.1 -U postgres -Atc "SELECT 1 FROM pg_database '
    "WHERE datname LIKE '{pg}_cvnew_%'\" | grep -q 1",
    "my": "mariadb -h 127.0.0.1 -u root -NBe \"SHOW DATABASES LIKE '{my}\\_cvnew%'\" | grep -q .",
    "cache": f'test "$(redis-cli -n {SPARE_DB} DBSIZE)" != 0',
}


@pytest.fixture
def cache() -> Iterator[RedisDb]:
    """Databases 4 and 5 of the local Redis, held by this test alone, emptied after."""
    for program in ("redis-cli", "redis-server"):
        if shutil.which(program) is None:
            unavailable(f"{program} is not installed (Debian package redis-tools / redis-server)")
    db = RedisDb(db=CELL_DB)
    try:
        pong = db.cli("PING")
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        unavailable(f"Redis is not reachable on 127.0.0.1:6379: {exc}")
    assert pong == "PONG", pong
    with open(LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Keys found while the lock is held were left by a run that was killed
        # (its finally below never ran): nobody else uses them. Emptied first.
        for number in (CELL_DB, SPARE_DB):
            db.cli("FLUSHDB", db=number)
        try:
            yield db
        finally:
            for number in (CELL_DB, SPARE_DB):
                db.cli("FLUSHDB", db=number)


def leftovers(pg_db: PgDb, my_db: MyDb, cache: RedisDb) -> list[str]:
    """The scratch databases, schemas and swap_db keys a drill may leave."""
    out = psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{pg_db.name}_cv%';").split()  # noqa: S608 - generated name
    out += mysql(f"SHOW DATABASES LIKE '{my_db.name}\\_cv%';").split()
    if cache.cli("DBSIZE", db=SPARE_DB) != "0":
        out.append(f"redis database {SPARE_DB}")
    return out


@pytest.fixture
def cell(tmp_path: Path, pg: PgDb, my: MyDb, cache: RedisDb) -> dict[str, Any]:  # noqa: F811 - fixtures
    """A cell of files, PostgreSQL, MariaDB and Redis, backed up once, then changed."""
    app = write_tree(tmp_path / "srv" / "app", {"config.yaml": "v: 1\n", "bin/run": "x\n"})
    data = write_tree(tmp_path / "var" / "data", {"ledger.csv": "1\n"})
    pg.sql("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 100);")
    my.sql("CREATE TABLE a (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB;")
    my.sql("INSERT INTO a VALUES (1, 'one'), (2, 'two');")
    cache.cli("SET", "k", "backed-up")
    config: dict[str, Any] = {
        "backup": str(tmp_path / "backup"),
        "app": str(app),
        "data": str(data),
        "dumpers": [
            {"type": "postgres", "name": "pg", "dsn": pg.dsn, "mode": "replace"},
            {"type": "mysql", "name": "my", "dsn": my.dsn},
            {"type": "redis", "name": "cache", "url": cache.url, "swap_db": SPARE_DB},
        ],
    }
    assert vault_of(config, clock=times_clock(list(TIMES))).backup().ok
    new = fingerprint(app, data, pg, my, cache)
    write_tree(app, {"config.yaml": "v: live\n"})
    pg.sql("INSERT INTO t VALUES (1000);")
    cache.cli("SET", "k", "live")
    return {
        "config": config,
        "new": new,
        "pg": pg.name,
        "my": my.name,
        "state": lambda: fingerprint(app, data, pg, my, cache),
        "left": lambda: leftovers(pg, my, cache),
    }


DRILL_KILLER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, threading, time
    from pathlib import Path
    from cellvault import Cell
    from tests.helpers import make_vault, times_clock, utc

    config, dumper, probe = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]

    def kill_when_probe_passes():
        # Mid-load: as soon as the dumper's scratch object exists (probe exits 0).
        while subprocess.run(["sh", "-c", probe]).returncode != 0:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)

    def on_event(event):
        if event.name == "drill.dump_loading" and event.data.get("dumper") == dumper:
            threading.Thread(target=kill_when_probe_passes, daemon=True).start()

    if dumper in ("pg", "my"):
        # On a busy machine the load can end before the probe sees the scratch
        # database: then the drill is killed as its stage returns, the scratch
        # database loaded and recorded, before the next dumper starts.
        if dumper == "pg":
            from cellvault.dumpers.postgres import PostgresDumper as Staging
        else:
            from cellvault.dumpers.mysql import MysqlDumper as Staging
        stage = Staging.stage

        def stage_then_die(self, *args, **kwargs):
            stage(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        Staging.stage = stage_then_die

    if dumper == "cache":
        # Redis copies its few keys in an instant: killed right after the copy into
        # swap_db, while the scratch redis-server still runs.
        from cellvault.dumpers.redis import RedisDumper

        copy = RedisDumper._copy_db

        def copy_then_die(self, *args, **kwargs):
            copy(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        RedisDumper._copy_db = copy_then_die

    cells = [Cell("crm", [Path(config["app"]), Path(config["data"])], dumpers=config["dumpers"])]
    vault = make_vault(
        Path(config["backup"]), cells, on_event=on_event, clock=times_clock([utc(2025, 3, 1)])
    )
    vault.verify(level="drill", cells=["crm"])
    sys.exit(3)  # not killed
    """
)


def kill_drill(cell: dict[str, Any], dumper: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    probe = PROBES[dumper].format(pg=cell["pg"], my=cell["my"])
    argv = [sys.executable, "-c", DRILL_KILLER, json.dumps(cell["config"]), dumper, probe]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def scratch_servers(root: Path) -> list[int]:
    """The processes working in a folder under *root* (a scratch redis-server works in its --dir)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(f"{root}/"):
                out.append(int(entry.name))
    return out


def drill_folder(cell: dict[str, Any]) -> list[str]:
    folder = Path(cell["config"]["backup"]) / ".cellvault" / "drill"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize(
    ("dumper", "then"),
    [("pg", "drill"), ("my", "restore"), ("cache", "drill"), ("cache", "doctor")],
)
def test_drill_killed_mid_load_is_cleaned_by_the_next_run(
    cell: dict[str, Any],
    dumper: str,
    then: str,
) -> None:
    old = cell["state"]()
    kill_drill(cell, dumper)
    backup = Path(cell["config"]["backup"])
    # Killed mid-load: the record, the scratch tree and the dumper's scratch object are left.
    left = drill_folder(cell)
    assert len(left) == 2 and left[0] + ".json" == left[1], left
    record = json.loads((backup / ".cellvault" / "drill" / left[1]).read_text())
    assert record["cell"] == "crm" and record["pid"] > 0
    assert [s["dumper"] for s in record["sides"]][-1] == dumper
    assert cell["left"](), "the kill left no scratch object"
    if dumper == "cache":
        assert scratch_servers(backup), "the scratch redis-server died with the drill"
    assert cell["state"]() == old  # the live data never changed

    if then == "drill":
        vault = vault_of(cell["config"], clock=times_clock([utc(2025, 4, 1)]))
        report = vault.verify(level="drill", cells=["crm"])
        assert report.ok, report.to_dict()
        (result,) = report.results
        (said,) = result.cleaned
    elif then == "restore":
        vault = vault_of(cell["config"], clock=times_clock([utc(2025, 4, 1)]))
        report = vault.restore("latest", cells=["crm"])
        assert report.ok, report.to_dict()
        (said,) = [r for r in report.recovered if "drill" in r]
    else:
        vault = vault_of(cell["config"], clock=times_clock([utc(2025, 4, 1)]))
        doctor = run_checks(vault, probe=False)
        (check,) = [c for c in doctor.checks if c.name == "leftovers"]
        assert check.ok and check.warn
        said = check.detail.removeprefix("removed: ")
    assert said.startswith(
        f"a drill of cell crm from target local (run {record['run']}, pid {record['pid']}) "
        "was killed mid-way; removed what it left: "
    ), said
    assert f"scratch tree {record['scratch']}" in said
    side = record["sides"][-1]
    assert f"scratch {side['side']} ({side['what']})" in said
    if dumper == "cache":
        assert "(redis-server)" in said
    assert "could not remove" not in said
    # Nothing is left: no scratch database, schema or key, no server, no tree, no record.
    assert drill_folder(cell) == []
    assert scratch_servers(backup) == []
    assert cell["left"]() == []
    if then != "restore":
        assert cell["state"]() == old
    else:
        assert cell["state"]() == cell["new"]


def test_a_running_drills_record_is_left_alone(tmp_path: Path) -> None:
    """A record whose process is alive (a sleeping child) is neither removed nor reported."""
    crm = write_tree(tmp_path / "cells" / "crm", {"a.txt": "a\n"})
    vault = make_vault(tmp_path / "backup", [Cell("crm", [crm])])
    folder = tmp_path / "backup" / ".cellvault" / "drill"
    folder.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        scratch = folder / "run1-local-crm"
        scratch.mkdir()
        (scratch / "x").write_text("x\n")
        record = {
            "cell": "crm",
            "target": "local",
            "run": "run1",
            "pid": sleeper.pid,
            "host": socket.gethostname(),
            "scratch": str(scratch),
            "sides": [],
        }
        (folder / "run1-local-crm.json").write_text(json.dumps(record))
        doctor = run_checks(vault, probe=False)
        (check,) = [c for c in doctor.checks if c.name == "leftovers"]
        assert check.detail == "no leftovers of killed restores or drills"
        assert (scratch / "x").is_file()
        # Once it is gone, the next doctor removes it.
        sleeper.kill()
        sleeper.wait()
        doctor = run_checks(vault, probe=False)
        (check,) = [c for c in doctor.checks if c.name == "leftovers"]
        assert check.ok and check.warn
        assert check.detail == (
            f"removed: a drill of cell crm from target local (run run1, pid {sleeper.pid}) was "
            f"killed mid-way; removed what it left: scratch tree {scratch}"
        )
        assert sorted(p.name for p in folder.iterdir()) == []
    finally:
        sleeper.kill()
        sleeper.wait()
