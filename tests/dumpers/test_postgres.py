"""The postgres dumper against the machine's real PostgreSQL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cellvault import Cell
from cellvault.dumpers.postgres import PostgresDumper, parse_dsn
from tests.dumpers.conftest import Alerts, PgDb, argv_log, psql, vault_for
from tests.dumpers.test_command import members, only_archive
from tests.helpers import clock, snapshot, write_tree

SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text UNIQUE NOT NULL, note text);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id),
    amount numeric(12, 2) NOT NULL,
    placed timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_amount ON orders (amount);
CREATE TABLE audit (id serial PRIMARY KEY, what text);
CREATE FUNCTION audit_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (what) VALUES ('order ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit_order();
CREATE SCHEMA reports;
CREATE TABLE reports.daily (day date PRIMARY KEY, total numeric);
INSERT INTO customers (name, note)
    SELECT 'customer ' || g, repeat('é', g % 7) FROM generate_series(1, 500) g;
INSERT INTO orders (customer_id, amount, placed)
    SELECT (g % 500) + 1, g * 1.25, '2025-01-01'::timestamptz + g * interval '1 minute'
    FROM generate_series(1, 3000) g;
INSERT INTO reports.daily SELECT d::date, 1 FROM generate_series('2025-01-01'::date, '2025-01-31', '1 day') d;
"""

TABLES = ("customers", "orders", "audit", "reports.daily")


def fingerprint(db: PgDb, name: str | None = None) -> dict[str, str]:
    """Row count and an md5 of the ordered rows of each table; sequence values."""
    out = {}
    for table in TABLES:
        out[table] = db.sql(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t;",  # noqa: S608 - fixed names
            name,
        )
    out["seq"] = db.sql(
        "SELECT last_value FROM customers_id_seq; SELECT last_value FROM orders_id_seq;", name
    )
    return out


def pg_dumper(db: PgDb, **options: object) -> dict[str, object]:
    return {"type": "postgres", "name": "db", "dsn": db.dsn, **options}


def test_backup_change_drop_restore(pg: PgDb, tmp_path: Path) -> None:
    pg.sql(SCHEMA)
    original = fingerprint(pg)
    vault = vault_for(tmp_path, [pg_dumper(pg)], clock=clock())
    report = vault.backup()
    assert report.ok, report.cells[0].error
    got = members(only_archive(tmp_path / "backup"))
    dump = got[f"dumps/db/{pg.name}.pgdump"]
    assert dump.startswith(b"PGDMP")  # pg_dump's custom format
    info = json.loads(got["dumps/db/dumper.json"])
    assert info["info"]["database"] == pg.name and "pg_dump" in info["info"]["pg_dump"]

    pg.sql(
        "UPDATE customers SET note = 'changed'; DELETE FROM orders WHERE id % 3 = 0;"
        "DROP TABLE reports.daily; INSERT INTO orders (customer_id, amount) VALUES (1, 99);"
    )
    assert fingerprint_safe(pg) != original
    crm = tmp_path / "cells" / "crm"
    (crm / "config.yaml").write_text("changed\n")

    restored = vault.restore("latest")
    assert restored.ok, restored.cells[0].error
    assert fingerprint(pg) == original
    assert (crm / "config.yaml").read_text() == "db: crm\n"
    # Triggers and defaults came back too: a new order is audited and numbered.
    pg.sql("INSERT INTO orders (customer_id, amount) VALUES (1, 1);")
    assert pg.sql("SELECT count(*) FROM audit;") == "3001"
    assert pg.sql("SELECT max(id) FROM orders;") == "3001"


def fingerprint_safe(db: PgDb) -> dict[str, str]:
    try:
        return fingerprint(db)
    except AssertionError as exc:  # a dropped table
        return {"error": str(exc)}


def test_restore_a_single_table_leaves_the_others_untouched(pg: PgDb, tmp_path: Path) -> None:
    pg.sql(SCHEMA)
    original = fingerprint(pg)
    vault = vault_for(tmp_path, [pg_dumper(pg)], clock=clock())
    assert vault.backup().ok
    pg.sql(
        "DELETE FROM orders WHERE id > 1000; UPDATE customers SET note = 'changed';"
        "INSERT INTO reports.daily VALUES ('2030-01-01', 5);"
    )
    changed = fingerprint(pg)

    report = vault.restore("latest", dump_options={"db": {"only_tables": ["public.orders"]}})
    assert report.ok, report.cells[0].error
    now = fingerprint(pg)
    assert now["orders"] == original["orders"]
    for table in ("customers", "audit", "reports.daily"):
        assert now[table] == changed[table], table
    # What belongs to the table came back with it: index, constraints, trigger, identity.
    assert pg.sql("SELECT indexname FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1;") == (
        "orders_amount\norders_pkey"
    )
    assert pg.sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'orders_audit';") == "1"
    assert (
        pg.sql("SELECT count(*) FROM pg_constraint WHERE conname = 'orders_customer_id_fkey';")
        == "1"
    )
    assert pg.sql("SELECT last_value FROM orders_id_seq;") == "3000"


def test_a_failed_load_rolls_back_and_leaves_the_files(pg: PgDb, tmp_path: Path) -> None:
    pg.sql(SCHEMA)
    vault = vault_for(tmp_path, [pg_dumper(pg)], clock=clock())
    assert vault.backup().ok
    pg.sql("DELETE FROM orders WHERE id > 10; CREATE VIEW big_orders AS SELECT * FROM orders;")
    changed = fingerprint(pg)
    crm = tmp_path / "cells" / "crm"
    (crm / "config.yaml").write_text("live\n")
    live = snapshot(crm)
    # The view depends on orders, so pg_restore --clean cannot drop it: the load fails.
    report = vault.restore("latest")
    assert not report.ok
    (cell,) = report.cells
    assert cell.stage == "load"
    assert "big_orders" in (cell.error or "") or "depend" in (cell.error or "")
    assert fingerprint(pg) == changed  # one transaction: rolled back
    assert snapshot(crm) == live


def test_replace_mode_makes_the_database_exactly_the_dump(pg: PgDb, tmp_path: Path) -> None:
    pg.sql(SCHEMA)
    original = fingerprint(pg)
    vault = vault_for(tmp_path, [pg_dumper(pg)], clock=clock())
    assert vault.backup().ok
    pg.sql(
        "CREATE TABLE added_later (x int); DELETE FROM customers WHERE id > 400 AND id NOT IN (SELECT customer_id FROM orders);"
    )
    # clean mode keeps what the dump does not know...
    assert vault.restore("latest").ok
    assert pg.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'added_later';") == "1"
    # ...replace mode swaps in a database restored from scratch.
    report = vault.restore("latest", dump_options={"db": {"mode": "replace"}})
    assert report.ok, report.cells[0].error
    assert pg.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'added_later';") == "0"
    assert fingerprint(pg) == original
    siblings = psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{pg.name}_cv%';")  # noqa: S608 - generated name
    assert siblings == ""  # the old database was dropped, no scratch one left


def test_restore_into_another_database_and_after_the_database_is_gone(
    pg: PgDb, tmp_path: Path
) -> None:
    pg.sql(SCHEMA)
    original = fingerprint(pg)
    vault = vault_for(tmp_path, [pg_dumper(pg)], clock=clock())
    assert vault.backup().ok
    other = f"{pg.name}_copy"
    report = vault.restore("latest", dump_options={"db": {"restore_database": other}})
    assert report.ok, report.cells[0].error
    assert fingerprint(pg, other) == original
    psql(f'DROP DATABASE "{pg.name}" WITH (FORCE);')
    report = vault.restore("latest")
    assert report.ok, report.cells[0].error
    assert fingerprint(pg) == original


def test_a_wrong_dsn_fails_that_cell_only_with_an_alert(
    pg: PgDb, tmp_path: Path, alerts: Alerts
) -> None:
    secret = "Wr0ng-pa55word"
    bad_db = {
        "type": "postgres",
        "name": "db",
        "dsn": f"postgresql://postgres:{secret}@127.0.0.1:5432/{pg.name}_nope",
    }
    bad_port = {
        "type": "postgres",
        "name": "db",
        "dsn": f"postgresql://postgres:{secret}@127.0.0.1:1/{pg.name}",
    }
    cells = [
        Cell(
            "billing",
            [write_tree(tmp_path / "cells" / "billing", {"a": "b"})],
            dumpers=[pg_dumper(pg)],
        ),
        Cell("erp", [write_tree(tmp_path / "cells" / "erp", {"a": "b"})], dumpers=[bad_port]),
    ]
    vault = vault_for(tmp_path, [bad_db], cells=cells, plugins=[alerts], clock=clock())
    report = vault.backup()
    by_cell = {c.cell: c for c in report.cells}
    assert by_cell["billing"].ok, by_cell["billing"].error
    for name, why in (("crm", "does not exist"), ("erp", "127.0.0.1")):
        cell = by_cell[name]
        assert not cell.ok and cell.stage == "dump"
        assert f"cell {name}, dumper db: pg_dump: failed" in (cell.error or "")
        assert why in (cell.error or "")
        assert secret not in (cell.error or "")
        (failure,) = [f for f in alerts.failures if f.cell == name]
        assert failure.stage == "dump" and secret not in failure.error


def test_the_password_goes_to_the_child_environment_only(
    pg: PgDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pg.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    secret = "pa55-from-env"
    monkeypatch.setenv("CRM_PG_PASSWORD", secret)
    calls = argv_log(monkeypatch)
    caplog.set_level("DEBUG")
    vault = vault_for(tmp_path, [pg_dumper(pg, password_env="CRM_PG_PASSWORD")], clock=clock())
    assert vault.backup().ok
    assert vault.restore("latest").ok
    tools = [(argv, env) for argv, env in calls if argv[0] in ("pg_dump", "pg_restore", "psql")]
    assert {argv[0] for argv, _ in tools} >= {"pg_dump", "pg_restore", "psql"}
    for argv, env in tools:
        assert not any(secret in a for a in argv)
        if "--version" not in argv:
            assert env["PGPASSWORD"] == secret and env["PGHOST"] == "127.0.0.1"
    assert "PGPASSWORD" not in os.environ or os.environ["PGPASSWORD"] != secret
    assert secret not in caplog.text
    # The backup's archive and the restore's safety backup alike.
    archives = sorted((tmp_path / "backup" / "crm").glob("*.tar.zst"))
    assert len(archives) == 2
    for archive in archives:
        assert secret.encode() not in members(archive)["dumps/db/dumper.json"]


def test_dsn_forms() -> None:
    assert parse_dsn("postgresql://u:p%40ss@h1:5433,h2/db?sslmode=require") == {
        "user": "u",
        "password": "p@ss",
        "host": "h1,h2",
        "port": "5433,",
        "dbname": "db",
        "sslmode": "require",
    }
    assert parse_dsn("host=/run/pg dbname='my db' password='it\\'s'") == {
        "host": "/run/pg",
        "dbname": "my db",
        "password": "it's",
    }
    with pytest.raises(ValueError, match="'colour'"):
        parse_dsn("host=x colour=blue")
    dumper = PostgresDumper(name="x", dsn="postgresql://u:topsecret@h/db")
    assert "topsecret" not in json.dumps(dumper.describe())
    assert "topsecret" not in repr(dumper)
    other = PostgresDumper(name="x", dsn="host=h dbname=db password='top secret'")
    assert other.describe()["dsn"] == "host=h dbname=db password=***"
