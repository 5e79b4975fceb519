"""doctor probes each dumper: a dead database port fails with the fix; a live one passes."""

from __future__ import annotations

from pathlib import Path

from cellvault import Cell
from cellvault.doctor import run_checks
from tests.dumpers.conftest import (  # noqa: F401 - pg and redis_db are fixtures
    PgDb,
    RedisDb,
    pg,
    redis_db,
)
from tests.helpers import make_vault, write_tree


def vault_with(tmp_path: Path, dumpers: list[dict[str, object]]):  # type: ignore[no-untyped-def]
    crm = write_tree(tmp_path / "cells" / "crm", {"a.txt": "a\n"})
    return make_vault(tmp_path / "backup", [Cell("crm", [crm], dumpers=dumpers)])


def test_postgres_on_a_dead_port_fails_doctor(tmp_path: Path, pg: PgDb) -> None:  # noqa: F811 - the fixture
    dead = pg.dsn.replace(":5432/", ":1/")
    report = run_checks(vault_with(tmp_path, [{"type": "postgres", "name": "db", "dsn": dead}]))
    check = report.check("dumper crm/db")
    assert not check.ok and not report.ok
    assert "dsn" in (check.fix or "")
    good = run_checks(
        vault_with(tmp_path / "g", [{"type": "postgres", "name": "db", "dsn": pg.dsn}])
    )
    check = good.check("dumper crm/db")
    assert check.ok and f"to {pg.name}" in check.detail and "pg_dump" in check.detail


def test_redis_and_sqlite_probes(tmp_path: Path, redis_db: RedisDb) -> None:  # noqa: F811 - the fixture
    dumpers = [
        {"type": "redis", "name": "cache", "url": redis_db.url},
        {"type": "sqlite", "name": "app", "path": str(tmp_path / "missing.sqlite")},
    ]
    report = run_checks(vault_with(tmp_path, dumpers))
    assert report.check("dumper crm/cache").ok
    assert "reachable" in report.check("dumper crm/cache").detail
    app = report.check("dumper crm/app")
    assert not app.ok and "missing.sqlite" in app.detail
