"""The issue's end: a cell of files, a PostgreSQL and a MariaDB database, restored with one command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.dumpers.conftest import MyDb, PgDb
from tests.dumpers.test_mysql import SCHEMA as MY_SCHEMA
from tests.dumpers.test_mysql import checksums
from tests.dumpers.test_postgres import SCHEMA as PG_SCHEMA
from tests.dumpers.test_postgres import fingerprint
from tests.helpers import SAMPLE, snapshot, write_tree


def cellvault(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cellvault", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_files_and_two_databases_restore_to_the_state_of_the_backup(
    pg: PgDb, my: MyDb, tmp_path: Path
) -> None:
    pg.sql(PG_SCHEMA)
    my.sql(MY_SCHEMA)
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    env = {
        **os.environ,
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(tmp_path / "cells"),
        "BACKUP_CELL_CRM_DUMPERS": "pg ledger",
        "BACKUP_CELL_CRM_DUMPER_PG_TYPE": "postgres",
        "BACKUP_CELL_CRM_DUMPER_PG_DSN": pg.dsn,
        "BACKUP_CELL_CRM_DUMPER_PG_MODE": "replace",
        "BACKUP_CELL_CRM_DUMPER_LEDGER_TYPE": "mysql",
        "BACKUP_CELL_CRM_DUMPER_LEDGER_DSN": my.dsn,
    }
    backup = cellvault(["backup"], env)
    assert backup.returncode == 0, backup.stderr
    files, pg_state, my_state = snapshot(crm), fingerprint(pg), checksums(my)

    # A bad day: files changed and deleted, rows deleted, tables dropped and added.
    (crm / "config.yaml").write_text("replicas: 0\n")
    (crm / "db" / "ledger.db").unlink()
    (crm / "stray.tmp").write_text("new\n")
    pg.sql("DELETE FROM orders WHERE id > 10; DROP TABLE reports.daily; CREATE TABLE junk (x int);")
    my.sql("DROP TABLE audit; UPDATE customers SET note = NULL; CREATE TABLE junk (x INT);")

    # One command: the safety backup (files and both databases) first, then the restore.
    restore = cellvault(["restore"], env)
    assert restore.returncode == 0, restore.stderr
    assert "safety backup" in restore.stdout

    assert snapshot(crm) == files
    assert fingerprint(pg) == pg_state
    assert checksums(my) == my_state
    assert pg.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'junk';") == "0"
    assert "junk" not in my.sql("SHOW TABLES;").split()

    # The safety backup holds the bad day, databases included: it can be restored too.
    listed = cellvault(["list", "--cell", "crm"], env)
    assert "pre-restore" in listed.stdout
