"""The built-in dumpers pass cellvault.testing's DumperContract, as a plugin's dumper must.

Each class gives the contract a real source of its own (a SQLite file, a file
a command reads, a scratch PostgreSQL or MariaDB database, Redis database 9),
a broken one (a missing file, a failing command, a closed port) and restore
options that make a load fail. The example third-party dumper of
``examples/dumper_plugin`` runs it from its own test module.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cellvault.testing import DumperContract
from tests.dumpers.conftest import MyDb, PgDb, RedisDb

PY = sys.executable
#: The Redis database of the contract tests.
CONTRACT_DB = 14
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dumper_plugin"


def _blocked(tmp_path: Path) -> Path:
    """A path whose parent is a file: nothing can be written there."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    return blocker / "app.sqlite"


class TestSqlite(DumperContract):
    spec_has_secret = False  # a SQLite file has no password

    @pytest.fixture
    def spec(self, tmp_path: Path) -> dict[str, Any]:
        path = tmp_path / "db" / "app.sqlite"
        path.parent.mkdir()
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("CREATE TABLE state (marker TEXT)")
        return {"type": "sqlite", "name": "app", "path": str(path)}

    @pytest.fixture
    def broken_spec(self, tmp_path: Path) -> dict[str, Any]:
        return {"type": "sqlite", "name": "app", "path": str(tmp_path / "missing.sqlite")}

    @pytest.fixture
    def load_failure_options(self, tmp_path: Path) -> dict[str, Any]:
        return {"restore_path": str(_blocked(tmp_path))}

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        with closing(sqlite3.connect(spec["path"])) as db, db:
            db.execute("DELETE FROM state")
            db.execute("INSERT INTO state VALUES (?)", (marker,))

    def read_state(self, spec: Mapping[str, Any]) -> str:
        with closing(sqlite3.connect(spec["path"])) as db:
            (marker,) = db.execute("SELECT marker FROM state").fetchone()
        return str(marker)


class TestCommand(DumperContract):
    @pytest.fixture
    def spec(self, tmp_path: Path) -> dict[str, Any]:
        state = tmp_path / "state.txt"
        state.write_text("")
        write = f"import sys,pathlib; pathlib.Path({str(state)!r}).write_text(sys.stdin.read())"
        return {
            "type": "command",
            "name": "state",
            "command": ["cat", str(state)],
            "restore_command": [PY, "-c", write],
            "filename": "state.txt",
            # A credential the tool gets in its environment, never on its command line.
            "env": {"SOURCE_PASSWORD": self.secret},
        }

    @pytest.fixture
    def broken_spec(self) -> dict[str, Any]:
        fail = (
            "import os,sys; print('login failed for', os.environ['SOURCE_PASSWORD'],"
            " file=sys.stderr); sys.exit(3)"
        )
        return {
            "type": "command",
            "name": "state",
            "command": [PY, "-c", fail],
            "env": {"SOURCE_PASSWORD": self.secret},
        }

    @pytest.fixture
    def load_failure_options(self) -> dict[str, Any]:
        return {"restore_command": ["sh", "-c", "cat >/dev/null; echo 'import failed' >&2; exit 1"]}

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        Path(spec["command"][1]).write_text(marker)

    def read_state(self, spec: Mapping[str, Any]) -> str:
        return Path(spec["command"][1]).read_text()


class TestPostgres(DumperContract):
    @pytest.fixture
    def spec(self, pg: PgDb) -> dict[str, Any]:
        pg.sql("CREATE TABLE state (marker text);")
        # The server trusts 127.0.0.1: the password is carried, never asked for.
        dsn = f"postgresql://postgres:{self.secret}@127.0.0.1:5432/{pg.name}"
        return {"type": "postgres", "name": "db", "dsn": dsn}

    @pytest.fixture
    def broken_spec(self, pg: PgDb) -> dict[str, Any]:
        dsn = f"postgresql://postgres:{self.secret}@127.0.0.1:1/{pg.name}"
        return {"type": "postgres", "name": "db", "dsn": dsn}

    @pytest.fixture
    def load_failure_options(self, pg: PgDb) -> dict[str, Any]:
        return {"dsn": f"postgresql://postgres@127.0.0.1:1/{pg.name}"}

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        PgDb(spec["dsn"].rsplit("/", 1)[1]).sql(
            f"DELETE FROM state; INSERT INTO state VALUES ('{marker}');"  # noqa: S608 - a marker
        )

    def read_state(self, spec: Mapping[str, Any]) -> str:
        return PgDb(spec["dsn"].rsplit("/", 1)[1]).sql("SELECT marker FROM state;")


class TestMysql(DumperContract):
    spec_has_secret = False  # root has no password here (the broken spec carries one)

    @pytest.fixture
    def spec(self, my: MyDb) -> dict[str, Any]:
        # root has no password here: this table carries no secret (the broken one does).
        my.sql("CREATE TABLE state (marker TEXT);")
        return {"type": "mysql", "name": "db", "dsn": my.dsn}

    @pytest.fixture
    def broken_spec(self, my: MyDb) -> dict[str, Any]:
        return {
            "type": "mysql",
            "name": "db",
            "dsn": f"mysql://root:{self.secret}@127.0.0.1:1/{my.name}",
        }

    @pytest.fixture
    def load_failure_options(self, my: MyDb) -> dict[str, Any]:
        return {"dsn": f"mysql://root@127.0.0.1:1/{my.name}"}

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        MyDb(spec["dsn"].rsplit("/", 1)[1]).sql(
            f"DELETE FROM state; INSERT INTO state VALUES ('{marker}');"  # noqa: S608 - a marker
        )

    def read_state(self, spec: Mapping[str, Any]) -> str:
        return MyDb(spec["dsn"].rsplit("/", 1)[1]).sql("SELECT marker FROM state;")


class TestRedis(DumperContract):
    spec_has_secret = False  # the test server asks for no password (the broken spec carries one)

    # Every Redis backup waits for the server's snapshot delay (5 s by default). The
    # contract's database is one no other test flushes (the others use 9 to 11).

    @pytest.fixture
    def spec(self, redis_db: RedisDb) -> Iterator[dict[str, Any]]:
        mine = RedisDb(db=CONTRACT_DB)
        mine.cli("FLUSHDB")
        yield {"type": "redis", "name": "cache", "url": mine.url}
        mine.cli("FLUSHDB")

    @pytest.fixture
    def broken_spec(self) -> dict[str, Any]:
        url = f"redis://:{self.secret}@127.0.0.1:1/{CONTRACT_DB}"
        return {"type": "redis", "name": "cache", "url": url}

    @pytest.fixture
    def load_failure_options(self) -> dict[str, Any]:
        return {"url": f"redis://127.0.0.1:1/{CONTRACT_DB}"}

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        RedisDb(db=CONTRACT_DB).cli("SET", "contract:state", marker)

    def read_state(self, spec: Mapping[str, Any]) -> str:
        return RedisDb(db=CONTRACT_DB).cli("GET", "contract:state")


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
