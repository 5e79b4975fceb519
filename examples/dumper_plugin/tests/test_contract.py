"""cellvault-sqlitesql's own tests: the contract every cellvault dumper type keeps."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from cellvault.testing import DumperContract


class TestSqliteSql(DumperContract):
    spec_has_secret = False  # a SQLite file has no password

    @pytest.fixture
    def dumper_plugins(self):
        import cellvault_sqlitesql

        return [cellvault_sqlitesql]  # the module that makes the type (entry points stay off)

    @pytest.fixture
    def spec(self, tmp_path):
        path = tmp_path / "app.sqlite"
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("CREATE TABLE state (marker TEXT)")
        return {"type": "sqlite-sql", "name": "app", "path": str(path)}

    @pytest.fixture
    def broken_spec(self, tmp_path):
        return {"type": "sqlite-sql", "name": "app", "path": str(tmp_path / "missing.sqlite")}

    @pytest.fixture
    def load_failure_options(self, tmp_path):
        (tmp_path / "a-file").write_text("not a folder\n")
        return {"path": str(tmp_path / "a-file" / "app.sqlite")}

    def write_state(self, spec, marker):
        with closing(sqlite3.connect(spec["path"])) as db, db:
            db.execute("DELETE FROM state")
            db.execute("INSERT INTO state VALUES (?)", (marker,))

    def read_state(self, spec):
        with closing(sqlite3.connect(spec["path"])) as db:
            return db.execute("SELECT marker FROM state").fetchone()[0]
