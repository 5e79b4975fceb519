"""The postgres dumper's roles part: a fresh server gets the owners and grantees the dump needs."""

from __future__ import annotations

import uuid
from pathlib import Path

from cellvault.dumpers.pgroles import filter_roles
from tests.dumpers.conftest import PgDb, psql, vault_for
from tests.helpers import clock

DUMPALL = """\
CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN;
CREATE ROLE "Other Tenant";
ALTER ROLE "Other Tenant" WITH LOGIN;
CREATE ROLE reader;
GRANT reader TO app GRANTED BY postgres;
GRANT reader TO "Other Tenant" GRANTED BY postgres;
"""


def test_filter_keeps_only_the_roles_the_database_uses() -> None:
    kept = filter_roles(DUMPALL, {"app", "reader"})
    assert kept.splitlines() == [
        "CREATE ROLE app;",
        "ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN;",
        "CREATE ROLE reader;",
        "GRANT reader TO app GRANTED BY postgres;",
    ]
    assert "Other Tenant" in filter_roles(DUMPALL, {"Other Tenant"})


def test_roles_and_grants_come_back_on_a_server_without_them(pg: PgDb, tmp_path: Path) -> None:
    role = f"cv_role_{uuid.uuid4().hex[:8]}"
    other = f"cv_other_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE ROLE {role} LOGIN; CREATE ROLE {other};")
    try:
        pg.sql(f"CREATE TABLE t (n int); GRANT SELECT ON t TO {role};")
        dumper = {"type": "postgres", "name": "db", "dsn": pg.dsn, "roles": True}
        vault = vault_for(tmp_path, [dumper], clock=clock())
        assert vault.backup().ok
        # A fresh server: the database and the role are gone.
        pg.sql("DROP TABLE t;")
        psql(f"DROP ROLE {role};")
        report = vault.restore("latest")
        assert report.ok, report.to_dict()
        assert psql(f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}';") == "t"  # noqa: S608 - generated name
        assert pg.sql(f"SELECT has_table_privilege('{role}', 't', 'SELECT');") == "t"
        # A role the database does not use was not stored.
        dumps = tmp_path / "into"
        assert vault.restore("latest", into=dumps).ok
        stored = next(dumps.glob("*.dumps")).joinpath("db", "roles.sql").read_text()
        assert role in stored and other not in stored
    finally:
        pg.sql("DROP TABLE IF EXISTS t;")
        psql(f"DROP ROLE IF EXISTS {role}; DROP ROLE IF EXISTS {other};")
