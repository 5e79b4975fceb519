"""The built-in dumpers pass cellvault.testing's DumperContract, as a third-party dumper would.

Each class gives the contract a real source of its own (a SQLite file, a file
a command reads, a scratch PostgreSQL or MariaDB database, Redis database 9)
and a broken one (a missing file, a failing command, a closed port).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cellvault.testing import DumperContract
from tests.dumpers.conftest import MyDb, PgDb, RedisDb

PY = sys.executable


class TestSqlite(DumperContract):
    @pytest.fixture
    def spec(self, tmp_path: Path) -> dict[str, Any]:
        path = tmp_path / "db" / "app.sqlite"
        path.parent.mkdir()
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE state (marker TEXT)")
        db.close()
        return {"type": "sqlite", "name": "app", "path": str(path)}

    @pytest.fixture
    def broken_spec(self, tmp_path: Path) -> dict[str, Any]:
        return {"type": "sqlite", "name": "app", "path": str(tmp_path / "missing.sqlite")}

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        with sqlite3.connect(spec["path"]) as db:
            db.execute("DELETE FROM state")
            db.execute("INSERT INTO state VALUES (?)", (marker,))
        db.close()

    def read_state(self, spec: Mapping[str, Any]) -> str:
        with sqlite3.connect(spec["path"]) as db:
            (marker,) = db.execute("SELECT marker FROM state").fetchone()
        db.close()
        return str(marker)


class TestCommand(DumperContract):
    @pytest.fixture
    def spec(self, tmp_path: Path) -> dict[str, Any]:
        state = tmp_path / "state.txt"
        read = f"import sys,pathlib; sys.stdout.write(pathlib.Path({str(state)!r}).read_text())"
        write = f"import sys,pathlib; pathlib.Path({str(state)!r}).write_text(sys.stdin.read())"
        return {
            "type": "command",
            "name": "state",
            "command": [PY, "-c", read],
            "restore_command": [PY, "-c", write],
            "filename": "state.txt",
        }

    @pytest.fixture
    def broken_spec(self) -> dict[str, Any]:
        return {
            "type": "command",
            "name": "state",
            "command": [PY, "-c", "import sys; sys.exit('the source is gone')"],
            "restore_command": [PY, "-c", "pass"],
        }

    def _path(self, spec: Mapping[str, Any]) -> Path:
        code = spec["command"][2]
        return Path(code.split("pathlib.Path(")[1].split(")")[0].strip("'\""))

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        self._path(spec).write_text(marker)

    def read_state(self, spec: Mapping[str, Any]) -> str:
        return self._path(spec).read_text()


class TestPostgres(DumperContract):
    @pytest.fixture
    def spec(self, pg: PgDb) -> dict[str, Any]:
        pg.sql("CREATE TABLE state (marker text);")
        return {"type": "postgres", "name": "db", "dsn": pg.dsn}

    @pytest.fixture
    def broken_spec(self, pg: PgDb) -> dict[str, Any]:
        return {
            "type": "postgres",
            "name": "db",
            "dsn": f"postgresql://postgres:s3cret-contract@127.0.0.1:1/{pg.name}",
        }

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        PgDb(spec["dsn"].rsplit("/", 1)[1]).sql(
            f"DELETE FROM state; INSERT INTO state VALUES ('{marker}');"  # noqa: S608 - test markers
        )

    def read_state(self, spec: Mapping[str, Any]) -> str:
        return PgDb(spec["dsn"].rsplit("/", 1)[1]).sql("SELECT marker FROM state;")


class TestMysql(DumperContract):
    @pytest.fixture
    def spec(self, my: MyDb) -> dict[str, Any]:
        my.sql("CREATE TABLE state (marker varchar(64));")
        return {"type": "mysql", "name": "db", "dsn": my.dsn}

    @pytest.fixture
    def broken_spec(self, my: MyDb) -> dict[str, Any]:
        return {
            "type": "mysql",
            "name": "db",
            "dsn": f"mysql://root:s3cret-contract@127.0.0.1:1/{my.name}",
        }

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        MyDb(spec["dsn"].rsplit("/", 1)[1]).sql(
            f"DELETE FROM state; INSERT INTO state VALUES ('{marker}');"  # noqa: S608 - test markers
        )

    def read_state(self, spec: Mapping[str, Any]) -> str:
        return MyDb(spec["dsn"].rsplit("/", 1)[1]).sql("SELECT marker FROM state;")


class TestRedis(DumperContract):
    @pytest.fixture
    def spec(self, redis_db: RedisDb) -> dict[str, Any]:
        self.redis = redis_db
        return {"type": "redis", "name": "cache", "url": redis_db.url}

    @pytest.fixture
    def broken_spec(self) -> dict[str, Any]:
        return {"type": "redis", "name": "cache", "url": "redis://:s3cret-contract@127.0.0.1:1/9"}

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        self.redis.cli("SET", "contract:state", marker)

    def read_state(self, spec: Mapping[str, Any]) -> str:
        return self.redis.cli("GET", "contract:state")
