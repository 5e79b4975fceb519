"""The built-in dumpers pass cellvault.testing's DumperContract, as a plugin's dumper must.

Each class says how to configure a dumper of its type on a fresh source (a
SQLite file, a file read by a command, a database of its own on the real
PostgreSQL and MariaDB, database 9 of the real Redis), one whose dump fails,
and how to put rows into that source and read them back. The example
third-party dumper of ``examples/dumper_plugin`` runs it too.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cellvault.testing import DumperContract
from tests.dumpers.conftest import MyDb, PgDb, RedisDb

PY = sys.executable
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dumper_plugin"


def _sqlite_put(path: Path, rows: Sequence[str]) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS contract (row TEXT)")
        db.execute("DELETE FROM contract")
        db.executemany("INSERT INTO contract VALUES (?)", [(r,) for r in rows])


def _sqlite_get(path: Path) -> list[str]:
    if not path.exists():
        return []
    with closing(sqlite3.connect(path)) as db:
        return [r for (r,) in db.execute("SELECT row FROM contract")]


def _values(rows: Sequence[str]) -> str:
    return ",".join(f"('{r}')" for r in rows)


class TestSqlite(DumperContract):
    @pytest.fixture
    def dumper_config(self, tmp_path: Path) -> dict[str, Any]:
        path = tmp_path / "db" / "app.sqlite"
        path.parent.mkdir()
        _sqlite_put(path, [])
        return {"type": "sqlite", "name": "app", "path": str(path)}

    @pytest.fixture
    def broken_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"type": "sqlite", "name": "app", "path": str(tmp_path / "nowhere" / "app.sqlite")}

    @pytest.fixture
    def load_failure_options(self, tmp_path: Path) -> dict[str, Any]:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder\n")
        return {"restore_path": str(blocker / "app.sqlite")}

    def put_rows(self, config: Mapping[str, Any], rows: Sequence[str]) -> None:
        _sqlite_put(Path(config["path"]), rows)

    def get_rows(self, config: Mapping[str, Any]) -> Iterable[str]:
        return _sqlite_get(Path(config["path"]))


class TestCommand(DumperContract):
    @pytest.fixture
    def dumper_config(self, tmp_path: Path) -> dict[str, Any]:
        source = tmp_path / "source.txt"
        source.write_text("")
        write = f"import sys,pathlib; pathlib.Path({str(source)!r}).write_bytes(sys.stdin.buffer.read())"
        return {
            "type": "command",
            "name": "lines",
            "command": ["cat", str(source)],
            "restore_command": [PY, "-c", write],
            "filename": "lines.txt",
            # A credential the tool gets in its environment, never on its command line.
            "env": {"SOURCE_PASSWORD": self.secret},
        }

    @pytest.fixture
    def broken_config(self) -> dict[str, Any]:
        code = "import os,sys; print('login failed for', os.environ['SOURCE_PASSWORD'], file=sys.stderr); sys.exit(3)"
        return {
            "type": "command",
            "name": "lines",
            "command": [PY, "-c", code],
            "env": {"SOURCE_PASSWORD": self.secret},
        }

    @pytest.fixture
    def load_failure_options(self) -> dict[str, Any]:
        return {"restore_command": ["sh", "-c", "cat >/dev/null; echo 'import failed' >&2; exit 1"]}

    def put_rows(self, config: Mapping[str, Any], rows: Sequence[str]) -> None:
        Path(config["command"][1]).write_text("".join(f"{r}\n" for r in rows))

    def get_rows(self, config: Mapping[str, Any]) -> Iterable[str]:
        return Path(config["command"][1]).read_text().split()


class TestPostgres(DumperContract):
    @pytest.fixture
    def dumper_config(self, pg: PgDb) -> dict[str, Any]:
        # The server trusts 127.0.0.1: the password is carried, never asked for.
        dsn = f"postgresql://postgres:{self.secret}@127.0.0.1:5432/{pg.name}"
        return {"type": "postgres", "name": "db", "dsn": dsn}

    @pytest.fixture
    def broken_config(self, pg: PgDb) -> dict[str, Any]:
        dsn = f"postgresql://postgres:{self.secret}@127.0.0.1:1/{pg.name}"
        return {"type": "postgres", "name": "db", "dsn": dsn}

    @pytest.fixture
    def load_failure_options(self, pg: PgDb) -> dict[str, Any]:
        return {"dsn": f"postgresql://postgres@127.0.0.1:1/{pg.name}"}

    def put_rows(self, config: Mapping[str, Any], rows: Sequence[str]) -> None:
        db = PgDb(config["dsn"].rsplit("/", 1)[1])
        insert = f"INSERT INTO contract VALUES {_values(rows)};" if rows else ""  # noqa: S608 - the contract's own rows
        db.sql(f"DROP TABLE IF EXISTS contract; CREATE TABLE contract (row text); {insert}")

    def get_rows(self, config: Mapping[str, Any]) -> Iterable[str]:
        db = PgDb(config["dsn"].rsplit("/", 1)[1])
        return db.sql("SELECT row FROM contract;").split()


class TestMysql(DumperContract):
    @pytest.fixture
    def dumper_config(self, my: MyDb) -> dict[str, Any]:
        # root has no password here: this table carries no secret (the broken one does).
        return {"type": "mysql", "name": "db", "dsn": my.dsn}

    @pytest.fixture
    def broken_config(self, my: MyDb) -> dict[str, Any]:
        return {
            "type": "mysql",
            "name": "db",
            "dsn": f"mysql://root:{self.secret}@127.0.0.1:1/{my.name}",
        }

    @pytest.fixture
    def load_failure_options(self, my: MyDb) -> dict[str, Any]:
        return {"dsn": f"mysql://root@127.0.0.1:1/{my.name}"}

    def put_rows(self, config: Mapping[str, Any], rows: Sequence[str]) -> None:
        db = MyDb(config["dsn"].rsplit("/", 1)[1])
        insert = f"INSERT INTO contract VALUES {_values(rows)};" if rows else ""  # noqa: S608 - the contract's own rows
        db.sql(f"DROP TABLE IF EXISTS contract; CREATE TABLE contract (row TEXT); {insert}")

    def get_rows(self, config: Mapping[str, Any]) -> Iterable[str]:
        db = MyDb(config["dsn"].rsplit("/", 1)[1])
        return db.sql("SELECT row FROM contract;").split()


class TestRedis(DumperContract):
    # Every Redis backup waits for the server's snapshot delay (5 s by default).

    @pytest.fixture
    def dumper_config(self, redis_db: RedisDb) -> dict[str, Any]:
        return {"type": "redis", "name": "cache", "url": redis_db.url}

    @pytest.fixture
    def broken_config(self, redis_db: RedisDb) -> dict[str, Any]:
        return {"type": "redis", "name": "cache", "url": f"redis://:{self.secret}@127.0.0.1:1/9"}

    @pytest.fixture
    def load_failure_options(self) -> dict[str, Any]:
        return {"url": "redis://127.0.0.1:1/9"}

    def put_rows(self, config: Mapping[str, Any], rows: Sequence[str]) -> None:
        r = RedisDb()
        r.cli("DEL", "contract")
        for start in range(0, len(rows), 500):
            r.cli("RPUSH", "contract", *rows[start : start + 500])

    def get_rows(self, config: Mapping[str, Any]) -> Iterable[str]:
        return RedisDb().cli("LRANGE", "contract", "0", "-1").split()


def _example_tests() -> ModuleType:
    """The example plugin's own test module (what the plugin guide shows)."""
    path = EXAMPLE / "tests" / "test_contract.py"
    spec = importlib.util.spec_from_file_location("cellvault_sqlitesql_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestExamplePlugin(_example_tests().TestSqliteSql):  # type: ignore[misc,name-defined]
    """The third-party ``sqlite-sql`` dumper of examples/dumper_plugin, run by its own test class."""

    @pytest.fixture(autouse=True)
    def _importable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # As if the example were installed: its module importable, imported afresh.
        monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
        monkeypatch.delitem(sys.modules, "cellvault_sqlitesql", raising=False)


def test_the_plugin_guide_shows_the_example_s_contract_tests() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    code = (EXAMPLE / "tests" / "test_contract.py").read_text()
    start = code.index("class TestSqliteSql")
    assert code[start:] in guide
