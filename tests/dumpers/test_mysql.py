"""The mysql dumper against the machine's real MariaDB."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellvault import Cell
from cellvault.dumpers.mysql import filter_dump
from tests.dumpers.conftest import Alerts, MyDb, argv_log, mysql, vault_for
from tests.dumpers.test_command import members, only_archive
from tests.helpers import clock, snapshot, write_tree

SCHEMA = """
CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) UNIQUE, note TEXT) ENGINE=InnoDB;
CREATE TABLE orders (
    id INT AUTO_INCREMENT PRIMARY KEY,
    customer_id INT NOT NULL,
    amount DECIMAL(12, 2) NOT NULL,
    blob_col VARBINARY(16),
    FOREIGN KEY (customer_id) REFERENCES customers(id)
) ENGINE=InnoDB;
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(100)) ENGINE=InnoDB;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
    INSERT INTO audit (what) VALUES (CONCAT('order ', NEW.id));
CREATE PROCEDURE total() SELECT SUM(amount) FROM orders;
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100;
INSERT INTO customers (name, note)
    SELECT CONCAT('customer ', seq), CONCAT('é\\n', REPEAT('x', seq % 7)) FROM seq_1_to_300;
INSERT INTO orders (customer_id, amount, blob_col)
    SELECT (seq % 300) + 1, seq * 1.25, UNHEX(MD5(seq)) FROM seq_1_to_2000;
"""

TABLES = ("customers", "orders", "audit")


def checksums(db: MyDb, name: str | None = None) -> dict[str, str]:
    """Row count and CHECKSUM TABLE of each table."""
    out = {}
    for table in TABLES:
        count = db.sql(f"SELECT COUNT(*) FROM {table};", name)  # noqa: S608 - fixed names
        checksum = db.sql(f"CHECKSUM TABLE {table};", name).split()[-1]
        out[table] = f"{count}:{checksum}"
    return out


def my_dumper(db: MyDb, **options: object) -> dict[str, object]:
    return {"type": "mysql", "name": "db", "dsn": db.dsn, **options}


def test_backup_change_drop_restore(my: MyDb, tmp_path: Path) -> None:
    my.sql(SCHEMA)
    original = checksums(my)
    vault = vault_for(tmp_path, [my_dumper(my)], clock=clock())
    report = vault.backup()
    assert report.ok, report.cells[0].error
    got = members(only_archive(tmp_path / "backup"))
    dump = got["dumps/db/dump.sql"]
    assert f"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `{my.name}`".encode() in dump
    assert b"TRIGGER" in dump and b"PROCEDURE" in dump
    info = json.loads(got["dumps/db/dumper.json"])
    assert info["info"]["databases"] == [my.name]

    my.sql(
        "UPDATE customers SET note = 'changed'; DELETE FROM orders WHERE id % 3 = 0;"
        "DROP TABLE audit; DROP PROCEDURE total; CREATE TABLE added_later (x INT);"
    )
    restored = vault.restore("latest")
    assert restored.ok, restored.cells[0].error
    assert checksums(my) == original
    # The database is exactly the dump's: a table added since is gone.
    assert my.sql("SHOW TABLES;").split() == ["audit", "big_orders", "customers", "orders"]
    assert my.sql("CALL total();") == my.sql("SELECT SUM(amount) FROM orders;")
    my.sql("INSERT INTO orders (customer_id, amount) VALUES (1, 1);")
    assert my.sql("SELECT COUNT(*) FROM audit;") == "2001"


def test_restore_a_single_table_leaves_the_others_untouched(my: MyDb, tmp_path: Path) -> None:
    my.sql(SCHEMA)
    original = checksums(my)
    vault = vault_for(tmp_path, [my_dumper(my)], clock=clock())
    assert vault.backup().ok
    my.sql("DELETE FROM orders WHERE id > 500; UPDATE customers SET note = 'changed';")
    changed = checksums(my)
    report = vault.restore("latest", dump_options={"db": {"only_tables": ["orders"]}})
    assert report.ok, report.cells[0].error
    now = checksums(my)
    assert now["orders"] == original["orders"]
    assert now["customers"] == changed["customers"]
    assert now["audit"] == changed["audit"]
    # The table's trigger came back with it.
    assert my.sql("SHOW TRIGGERS;").split()[0] == "orders_audit"
    missing = vault.restore("latest", dump_options={"db": {"only_tables": [f"{my.name}.nope"]}})
    assert not missing.ok and "no table" in (missing.cells[0].error or "")


def test_restore_into_another_database(my: MyDb, tmp_path: Path) -> None:
    my.sql(SCHEMA)
    original = checksums(my)
    vault = vault_for(tmp_path, [my_dumper(my)], clock=clock())
    assert vault.backup().ok
    other = my.other("copy")
    report = vault.restore("latest", dump_options={"db": {"restore_database": other}})
    assert report.ok, report.cells[0].error
    assert checksums(my, other) == original
    assert checksums(my) == original  # the source database was not touched


@pytest.fixture
def mysql_user(my: MyDb) -> Iterator[tuple[str, str]]:
    """A user with a password, allowed on the test database only."""
    user, password = f"cv_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex[:10]}'\"\\"
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    mysql(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{quoted}';"
        f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{quoted}';"
        f"GRANT ALL ON `{my.name}`.* TO '{user}'@'%';"
        f"GRANT ALL ON `{my.name}`.* TO '{user}'@'localhost';"
        f"GRANT PROCESS ON *.* TO '{user}'@'%'; GRANT PROCESS ON *.* TO '{user}'@'localhost';"
    )
    yield user, password
    mysql(f"DROP USER IF EXISTS '{user}'@'%'; DROP USER IF EXISTS '{user}'@'localhost';")


def test_password_from_the_environment_goes_through_an_options_file(
    my: MyDb,
    mysql_user: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, password = mysql_user
    my.sql("CREATE TABLE t (x INT); INSERT INTO t VALUES (1), (2);")
    monkeypatch.setenv("CRM_MY_PASSWORD", password)
    calls = argv_log(monkeypatch)
    caplog.set_level("DEBUG")
    dumper = {
        "type": "mysql",
        "name": "db",
        "host": "127.0.0.1",
        "user": user,
        "databases": [my.name],
        "password_env": "CRM_MY_PASSWORD",
    }
    vault = vault_for(tmp_path, [dumper], clock=clock())
    report = vault.backup()
    assert report.ok, report.cells[0].error
    my.sql("DELETE FROM t;")
    assert vault.restore("latest").ok
    assert my.sql("SELECT COUNT(*) FROM t;") == "2"
    programs = ("mariadb-dump", "mysqldump", "mariadb", "mysql")  # the tests' own client has a path
    tools = [argv for argv, _ in calls if argv[0] in programs and "--version" not in argv]
    # The dump, the load, and the restore's staging probes (CREATE DATABASE, object counts).
    assert [a[0] for a in tools if "dump" in a[0]] and len(tools) >= 2
    for argv in tools:
        assert not any(password in a for a in argv)
        option_file = argv[1].removeprefix("--defaults-extra-file=")
        assert argv[1] != option_file  # the options file comes first
        assert not Path(option_file).exists()  # and is gone afterwards
    assert password not in caplog.text


def test_a_wrong_password_fails_that_cell_only_with_an_alert(
    my: MyDb, mysql_user: tuple[str, str], tmp_path: Path, alerts: Alerts
) -> None:
    user, password = mysql_user
    wrong = "not-" + password[:6]
    bad = {
        "type": "mysql",
        "name": "db",
        "host": "127.0.0.1",
        "user": user,
        "password": wrong,
        "databases": [my.name],
    }
    billing = Cell(
        "billing",
        [write_tree(tmp_path / "cells" / "billing", {"a": "b"})],
        dumpers=[my_dumper(my)],
    )
    vault = vault_for(tmp_path, [bad], cells=[billing], plugins=[alerts], clock=clock())
    report = vault.backup()
    by_cell = {c.cell: c for c in report.cells}
    assert by_cell["billing"].ok, by_cell["billing"].error
    crm = by_cell["crm"]
    assert not crm.ok and crm.stage == "dump"
    assert "Access denied" in (crm.error or "") and "cell crm, dumper db" in (crm.error or "")
    assert wrong not in (crm.error or "")
    (failure,) = [f for f in alerts.failures if f.cell == "crm"]
    assert failure.stage == "dump" and wrong not in failure.error


def test_a_failed_load_leaves_the_files_untouched(my: MyDb, tmp_path: Path) -> None:
    my.sql(SCHEMA)
    vault = vault_for(tmp_path, [my_dumper(my, restore_args=["--init-command=SELECT nope"])])
    assert vault.backup().ok
    crm = tmp_path / "cells" / "crm"
    (crm / "config.yaml").write_text("live\n")
    live = snapshot(crm)
    report = vault.restore("latest", skip_prebackup=True)
    assert not report.ok
    assert report.cells[0].stage == "load"
    assert snapshot(crm) == live


def test_filter_keeps_the_header_and_the_chosen_parts() -> None:
    dump = b"""/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
--
-- Current Database: `a`
--
/*!40000 DROP DATABASE IF EXISTS `a`*/;
CREATE DATABASE /*!32312 IF NOT EXISTS*/ `a` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;
USE `a`;
--
-- Table structure for table `t1`
--
CREATE TABLE `t1` (x int);
--
-- Dumping data for table `t1`
--
INSERT INTO `t1` VALUES (1);
--
-- Table structure for table `t2`
--
CREATE TABLE `t2` (x int);
--
-- Dumping routines for database 'a'
--
CREATE PROCEDURE p() SELECT 1;
--
-- Current Database: `b`
--
USE `b`;
CREATE TABLE `t9` (x int);
/*!40101 SET CHARACTER_SET_CLIENT=@OLD_CHARACTER_SET_CLIENT */;
""".splitlines(keepends=True)
    whole = b"".join(filter_dump(dump, databases={"a"}, rename={"a": "a2"}))
    assert b"DROP DATABASE IF EXISTS `a2`" in whole and b"USE `a2`;" in whole
    assert b"t2" in whole and b"PROCEDURE" in whole and b"t9" not in whole
    assert whole.endswith(b"@OLD_CHARACTER_SET_CLIENT */;\n")
    seen: set[tuple[str, str]] = set()
    one = b"".join(filter_dump(dump, databases={"a"}, tables={("a", "t1")}, seen=seen))
    assert b"INSERT INTO `t1`" in one and b"t2" not in one and b"PROCEDURE" not in one
    assert b"DROP DATABASE" not in one and b"USE `a`;" in one
    assert seen == {("a", "t1")}
