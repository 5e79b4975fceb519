"""cellvault-sqlitesql's own tests: the contract every cellvault dumper type keeps."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from cellvault.testing import DumperContract


class TestSqliteSql(DumperContract):
    @pytest.fixture
    def dumper_plugins(self):
        import cellvault_sqlitesql

        return [cellvault_sqlitesql]  # the module that makes the type (entry points stay off)

    @pytest.fixture
    def dumper_config(self, tmp_path):
        path = tmp_path / "app.sqlite"
        self.put_rows({"path": path}, [])
        return {"type": "sqlite-sql", "name": "app", "path": str(path)}

    @pytest.fixture
    def broken_config(self, tmp_path):
        return {"type": "sqlite-sql", "name": "app", "path": str(tmp_path / "no" / "app.sqlite")}

    @pytest.fixture
    def load_failure_options(self, tmp_path):
        (tmp_path / "a-file").write_text("not a folder\n")
        return {"path": str(tmp_path / "a-file" / "app.sqlite")}

    def put_rows(self, config, rows):
        with closing(sqlite3.connect(config["path"])) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS contract (row TEXT)")
            db.execute("DELETE FROM contract")
            db.executemany("INSERT INTO contract VALUES (?)", [(r,) for r in rows])

    def get_rows(self, config):
        with closing(sqlite3.connect(config["path"])) as db:
            return [row for (row,) in db.execute("SELECT row FROM contract")]
