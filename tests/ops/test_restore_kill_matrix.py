"""One cell of files, PostgreSQL, MariaDB and Redis restores as one unit, killed or failing.

The restore runs in a child process killed with SIGKILL at each stage
(before staging, as each dump starts loading, once all are loaded, between
the swaps of different stores, between two roots, after the swap); the next
command on the cell (a backup) settles it. Each time the cell is wholly old
or wholly new, checked by a checksum of each database's rows, of the Redis
database's keys and by comparing the trees. Then a load of each dumper fails
in turn: the live data is unchanged, and the report says so, part by part.

The databases are the fixtures' (uniquely named); Redis uses databases 6
(the cell's) and 7 (its swap_db), which no other test touches.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellvault import Cell, Vault
from tests.dumpers.conftest import (  # noqa: F401 - pg, my are fixtures
    MyDb,
    PgDb,
    RedisDb,
    my,
    mysql,
    pg,
    psql,
)
from tests.helpers import make_vault, snapshot, times_clock, utc, write_tree
from tests.servers.fixtures import unavailable

TIMES = [utc(2025, 1, 1, 2), utc(2025, 1, 2, 2)]
REPO = Path(__file__).resolve().parents[2]
CELL_DB, SPARE_DB = 6, 7
#: Taken while a test uses Redis databases 6 and 7 (other checkouts run this test too).
LOCK = Path("/tmp/cellvault-test-redis-6-7.lock")


@pytest.fixture
def cache() -> Iterator[RedisDb]:
    """Databases 6 and 7 of the local Redis, held by this test alone, emptied after.

    Several checkouts may run this test at once on the machine's one Redis:
    a file lock makes them take the two databases in turn.
    """
    for program in ("redis-cli", "redis-server"):
        if shutil.which(program) is None:
            unavailable(f"{program} is not installed (Debian package redis-tools / redis-server)")
    cell = RedisDb(db=CELL_DB)
    try:
        pong = cell.cli("PING")
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        unavailable(f"Redis is not reachable on 127.0.0.1:6379: {exc}")
    assert pong == "PONG", pong
    with open(LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Keys found while the lock is held were left by a run that was killed
        # (its finally below never ran): nobody else uses them. Emptied first.
        for db in (CELL_DB, SPARE_DB):
            cell.cli("FLUSHDB", db=db)
        try:
            yield cell
        finally:
            for db in (CELL_DB, SPARE_DB):
                cell.cli("FLUSHDB", db=db)


def dumpers(pg_db: PgDb, my_db: MyDb, cache: RedisDb) -> list[dict[str, Any]]:
    return [
        {"type": "postgres", "name": "pg", "dsn": pg_db.dsn, "mode": "replace"},
        {"type": "mysql", "name": "my", "dsn": my_db.dsn},
        {"type": "redis", "name": "cache", "url": cache.url, "swap_db": SPARE_DB},
    ]


def fingerprint(app: Path, data: Path, pg_db: PgDb, my_db: MyDb, cache: RedisDb) -> dict[str, Any]:
    """The cell's state: its trees, and a checksum of each store's rows or keys."""
    keys = sorted(k for k in cache.cli("KEYS", "*").splitlines() if k)
    return {
        "files": [snapshot(app), snapshot(data)],
        "pg": pg_db.sql(
            "SELECT count(*) || ':' || md5(string_agg(n::text, ',' ORDER BY n)) FROM t;"
        ),
        "my": my_db.sql(
            "SELECT CONCAT(COUNT(*), ':', MD5(GROUP_CONCAT(id, '=', v ORDER BY id))) FROM a;"
            "SHOW TABLES;"
        ),
        "cache": [(k, cache.cli("GET", k)) for k in keys],
    }


def leftovers(tmp: Path, pg_db: PgDb, my_db: MyDb, cache: RedisDb) -> list[str]:
    """Anything a restore left: staging, journals, kept data, scratch databases, swap_db keys."""
    out = [
        p.name
        for d in (tmp / "srv", tmp / "var")
        for p in d.iterdir()
        if p.name.startswith(".cellvault")
    ]
    out += psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{pg_db.name}_cv%';").split()  # noqa: S608 - generated name
    out += mysql(f"SHOW DATABASES LIKE '{my_db.name}\\_cv%';").split()
    if cache.cli("DBSIZE", db=SPARE_DB) != "0":
        out.append(f"redis database {SPARE_DB}")
    return out


@pytest.fixture
def cell(tmp_path: Path, pg: PgDb, my: MyDb, cache: RedisDb) -> dict[str, Any]:  # noqa: F811 - fixtures
    """The cell backed up once (the new state), then changed in every part (the old state)."""
    app = write_tree(tmp_path / "srv" / "app", {"config.yaml": "v: 1\n", "bin/run": "x\n"})
    data = write_tree(tmp_path / "var" / "data", {"ledger.csv": "1\n"})
    pg.sql("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 100);")
    my.sql("CREATE TABLE a (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB;")
    my.sql("INSERT INTO a VALUES (1, 'one'), (2, 'two');")
    cache.cli("SET", "k", "backed-up")
    config = {"backup": str(tmp_path / "backup"), "app": str(app), "data": str(data)}
    config["dumpers"] = dumpers(pg, my, cache)  # type: ignore[assignment]
    vault = vault_of(config)
    assert vault.backup().ok
    new = fingerprint(app, data, pg, my, cache)
    write_tree(app, {"config.yaml": "v: live\n", "later.txt": "written after\n"})
    write_tree(data, {"ledger.csv": "live\n"})
    pg.sql("INSERT INTO t VALUES (1000);")
    my.sql("INSERT INTO a VALUES (3, 'three'); CREATE TABLE later (x INT);")
    cache.cli("SET", "k", "live")
    cache.cli("SET", "later", "written after")
    old = fingerprint(app, data, pg, my, cache)
    assert old != new
    return {
        "config": config,
        "old": old,
        "new": new,
        "pg": pg.name,
        "my": my.name,
        "state": lambda: fingerprint(app, data, pg, my, cache),
        "left": lambda: leftovers(tmp_path, pg, my, cache),
    }


def vault_of(config: dict[str, Any], **kwargs: Any) -> Vault:
    cells = [Cell("crm", [Path(config["app"]), Path(config["data"])], dumpers=config["dumpers"])]
    kwargs.setdefault("clock", times_clock(list(TIMES)))
    return make_vault(Path(config["backup"]), cells, **kwargs)


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from cellvault import Cell
    from tests.helpers import make_vault, times_clock, utc

    import subprocess, threading, time

    config, at, dumper, probe = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

    def kill_when_probe_passes():
        # Mid-load: as soon as the dumper's scratch object exists (probe exits 0).
        while subprocess.run(["sh", "-c", probe]).returncode != 0:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)

    def on_event(event):
        if event.name == at and dumper in ("", event.data.get("dumper")):
            if probe:
                threading.Thread(target=kill_when_probe_passes, daemon=True).start()
            else:
                os.kill(os.getpid(), signal.SIGKILL)

    cells = [Cell("crm", [Path(config["app"]), Path(config["data"])], dumpers=config["dumpers"])]
    vault = make_vault(
        Path(config["backup"]), cells, on_event=on_event, clock=times_clock([utc(2025, 3, 1)])
    )
    vault.restore("latest", cells=["crm"])
    sys.exit(3)  # not killed
    """
)


#: Shell tests that pass once a dumper's scratch object exists (for a kill mid-load).
PROBES = {
    "pg": 'psql -h 127.0.0.1 -U postgres -Atc "SELECT 1 FROM pg_database '
    "WHERE datname LIKE '{pg}_cvnew_%'\" | grep -q 1",
    "my": "mariadb -h 127.0.0.1 -u root -NBe \"SHOW DATABASES LIKE '{my}\\_cvnew%'\" | grep -q .",
    "cache": f'test "$(redis-cli -n {SPARE_DB} DBSIZE)" != 0',
}


@pytest.mark.parametrize(
    ("event", "dumper", "mid_load", "expect"),
    [
        ("restore.planned", "", False, "old"),  # before the safety backup and the staging
        ("restore.dump_loading", "pg", False, "old"),  # the files staged, PostgreSQL next
        ("restore.dump_loading", "pg", True, "old"),  # PostgreSQL loading into its scratch
        ("restore.dump_loading", "my", False, "old"),  # PostgreSQL in its scratch database
        ("restore.dump_loading", "my", True, "old"),  # MariaDB loading into its scratch
        ("restore.dump_loading", "cache", False, "old"),  # PostgreSQL and MariaDB in scratch
        ("restore.dump_loading", "cache", True, "old"),  # Redis loading into swap_db
        ("restore.dump_staged", "cache", False, "old"),  # every dump loaded, nothing swapped
        ("restore.dump_swapped", "pg", False, "new"),  # PostgreSQL swapped in, MariaDB not yet
        ("restore.dump_swapped", "my", False, "new"),  # MariaDB swapped in, Redis not yet
        ("restore.dump_swapped", "cache", False, "new"),  # every database in, no root yet
        ("restore.root_swapped", "", False, "new"),  # the first root swapped in, not the second
        ("restore.swapped", "", False, "new"),  # all swapped, the replaced state not yet dropped
    ],
)
def test_killed_restore_leaves_the_cell_wholly_old_or_new(
    cell: dict[str, Any], event: str, dumper: str, mid_load: bool, expect: str
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    names = {"pg": cell["pg"], "my": cell["my"]}
    probe = PROBES[dumper].format(**names) if mid_load else ""
    argv = [sys.executable, "-c", KILLER, json.dumps(cell["config"]), event, dumper, probe]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-3000:]
    events: list[Any] = []
    after = vault_of(cell["config"], on_event=events.append, clock=times_clock([utc(2025, 4, 1)]))
    assert after.backup().ok  # the next command on the cell settles the killed restore first
    assert cell["state"]() == cell[expect]
    recovered = [e.data for e in events if e.name == "restore.recovered"]
    if event == "restore.planned":
        assert recovered == []  # nothing was staged: nothing to settle
    else:
        (rec,) = recovered
        assert rec["action"] == ("finished" if expect == "new" else "rolled back"), rec
    assert cell["left"]() == []


@pytest.mark.parametrize(
    ("failing", "options", "breaks"),
    [
        ("pg", {"restore_args": ["--no-such-option"]}, None),
        ("my", {"restore_args": ["--no-such-option"]}, None),
        ("cache", {}, "swap_db"),  # swap_db holds a key: the load refuses to mix with it
    ],
)
def test_a_failing_load_of_each_dumper_leaves_the_live_cell_as_it_was(
    cell: dict[str, Any], failing: str, options: dict[str, Any], breaks: str | None
) -> None:
    if breaks == "swap_db":
        RedisDb(db=SPARE_DB).cli("SET", "someone-else", "x")
    vault = vault_of(cell["config"], clock=times_clock([utc(2025, 3, 1)]))
    report = vault.restore("latest", cells=["crm"], dump_options={failing: options})
    if breaks == "swap_db":
        assert RedisDb(db=SPARE_DB).cli("GET", "someone-else") == "x"
        RedisDb(db=SPARE_DB).cli("DEL", "someone-else")
    assert not report.ok
    assert cell["state"]() == cell["old"]
    assert cell["left"]() == []
    assert (report.error or "").startswith("restore aborted before any live data was touched")
    (result,) = report.cells
    assert result.stage == "load" and f"dumper {failing}" in (result.error or "")
    assert (
        result.safety_backup
        and result.undo == f"cellvault restore --cell crm --date {result.safety_backup}"
    )
    order = ["pg", "my", "cache"]
    for name in order:
        state = result.parts[f"dump:{name}"]
        if order.index(name) < order.index(failing):
            assert state == "staged, then discarded: the live database is untouched", state
        else:
            assert state == "not loaded: the live database is untouched", state
    assert all(
        v == "staged, then discarded: the live files are untouched"
        for k, v in result.parts.items()
        if k.startswith("files:")
    )


def test_a_scratch_database_already_dropped_is_not_taken_for_a_swapped_one(
    tmp_path: Path,
    pg: PgDb,  # noqa: F811 - the fixture
) -> None:
    """Killed while discarding (phase ``staged``): the scratch database is gone, the live one stays."""
    from cellvault.dumpers.postgres import PostgresDumper
    from cellvault.journal import JOURNAL_PREFIX, recover

    pg.sql("CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2);")
    dumper = PostgresDumper(name="pg", dsn=pg.dsn, mode="replace")
    live = write_tree(tmp_path / "srv" / "app", {"a.txt": "live\n"})
    staging = tmp_path / "srv" / ".cellvault-restore-x"
    staging.mkdir()
    side = {"dumper": "pg", "what": f"database {pg.name}", "side": f"{pg.name}_cvnew_00000000"}
    journal = {
        "cell": "crm",
        "archive": "cell_crm_20250101_020000",
        "staging": str(staging),
        "phase": "staged",
        "loaded": [],
        "loading": None,
        "roots": {},
        "sides": [{**side, "old": f"{pg.name}_cvold_00000000", "db": pg.name}],
        "safety_backup": None,
    }
    path = live.parent / f"{JOURNAL_PREFIX}crm.json"
    path.write_text(json.dumps(journal))
    (rec,) = recover("crm", [live], dumper.resume)
    assert rec.action == "rolled back" and rec.settled, rec.describe()
    assert pg.sql("SELECT count(*) FROM t;") == "2"  # the live database, untouched
    assert not path.exists() and not staging.exists()
