"""Fixtures for the dumper tests: a fresh database of its own on each real server.

PostgreSQL, MariaDB and Redis run on the machine (127.0.0.1, standard ports;
see the environment notes). A server or client program that is missing
skips the test with the reason, except under ``CI=true``, where it fails it.
Every database a test creates has a unique name and is dropped afterwards;
Redis tests use database 9 only, emptied before and after.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cellvault import Cell, Failure, Vault, hookimpl
from tests.helpers import make_vault, write_tree
from tests.servers.fixtures import unavailable

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
MY_HOST, MY_PORT, MY_USER = "127.0.0.1", 3306, "root"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: The only Redis database these tests write to.
REDIS_DB = 9


def _require(*programs: str, package: str) -> None:
    for program in programs:
        if shutil.which(program) is None:
            unavailable(f"the program {program} is missing; apt-get install {package}")


def _run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{argv[0]} failed: {result.stderr.strip()}")
    return result.stdout.strip()


# -- PostgreSQL ---------------------------------------------------------------------


@dataclass
class PgDb:
    """A database of its own on the local PostgreSQL."""

    name: str

    @property
    def dsn(self) -> str:
        return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"

    def sql(self, query: str, db: str | None = None) -> str:
        """Run *query* (psql, ON_ERROR_STOP) and return its unaligned output."""
        return psql(query, db or self.name)


def psql(query: str, db: str = "postgres") -> str:
    return _run(
        [
            "psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
            "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", db,
        ],
        stdin=query,
    )  # fmt: skip


def _drop_pg(name: str) -> None:
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')


@pytest.fixture
def pg() -> Iterator[PgDb]:
    """A fresh, empty PostgreSQL database, dropped after the test (and any *_cv* sibling)."""
    _require("psql", "pg_dump", "pg_restore", package="postgresql-client")
    try:
        psql("SELECT 1;")
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        unavailable(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}")
    db = PgDb(f"cv_{uuid.uuid4().hex[:12]}")
    psql(f'CREATE DATABASE "{db.name}";')
    yield db
    leftovers = psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{db.name}%';")  # noqa: S608 - a generated name
    for name in leftovers.split():
        _drop_pg(name)


# -- MariaDB ------------------------------------------------------------------------


@dataclass
class MyDb:
    """A database of its own on the local MariaDB (or MySQL)."""

    name: str
    extra: list[str] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return f"mysql://{MY_USER}@{MY_HOST}:{MY_PORT}/{self.name}"

    def sql(self, query: str, db: str | None = None) -> str:
        return mysql(query, db or self.name)

    def other(self, suffix: str) -> str:
        """Another database name dropped with this one."""
        name = f"{self.name}_{suffix}"
        self.extra.append(name)
        return name


def mysql(query: str, db: str | None = None) -> str:
    client = shutil.which("mariadb") or "mysql"
    argv = [client, "-h", MY_HOST, "-P", str(MY_PORT), "-u", MY_USER, "-N", "-B"]
    return _run([*argv, *([db] if db else [])], stdin=query)


@pytest.fixture
def my() -> Iterator[MyDb]:
    """A fresh, empty MariaDB database, dropped after the test."""
    if shutil.which("mariadb-dump") is None:
        _require("mysqldump", "mysql", package="mariadb-client")
    try:
        mysql("SELECT 1;")
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        unavailable(f"MariaDB is not reachable on {MY_HOST}:{MY_PORT} as {MY_USER}: {exc}")
    db = MyDb(f"cv_{uuid.uuid4().hex[:12]}")
    mysql(f"CREATE DATABASE `{db.name}`;")
    yield db
    for name in [db.name, *db.extra]:
        mysql(f"DROP DATABASE IF EXISTS `{name}`;")


# -- Redis --------------------------------------------------------------------------


@dataclass
class RedisDb:
    """Database 9 of the local Redis, empty at the start."""

    db: int = REDIS_DB

    @property
    def url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.db}"

    def cli(self, *args: str, db: int | None = None) -> str:
        return _run(
            [
                "redis-cli",
                "-h",
                REDIS_HOST,
                "-p",
                str(REDIS_PORT),
                "-n",
                str(self.db if db is None else db),
                *args,
            ]
        )


@pytest.fixture
def redis_db() -> Iterator[RedisDb]:
    """The machine's Redis, database 9 emptied, held by this test alone.

    The tests use fixed databases (9, 10, 11, 15) of the one server: two
    run at once (``pytest -n 2``, or two sessions on one machine) would
    empty and fill them under each other. A lock in the temporary folder
    takes them in turn.
    """
    _require("redis-cli", package="redis-tools")
    _require("redis-server", package="redis-server")
    r = RedisDb()
    try:
        pong = r.cli("PING")
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        unavailable(f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT}: {exc}")
    if pong != "PONG":
        unavailable(f"Redis on {REDIS_HOST}:{REDIS_PORT} answers {pong!r} to PING")
    lock = Path(tempfile.gettempdir()) / "cellvault-tests-redis.lock"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r.cli("FLUSHDB")
        yield r
        r.cli("FLUSHDB")


# -- vaults -------------------------------------------------------------------------


class Alerts:
    """A cellvault_backup_failed plugin that keeps what it receives."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    @hookimpl
    def cellvault_backup_failed(self, failure: Failure) -> None:
        self.failures.append(failure)


@pytest.fixture
def alerts() -> Alerts:
    return Alerts()


@pytest.fixture
def cell_dir(tmp_path: Path) -> Path:
    """The files of cell ``crm``."""
    return write_tree(
        tmp_path / "cells" / "crm", {"config.yaml": "db: crm\n", "uploads/a.txt": "a\n"}
    )


def vault_for(
    tmp_path: Path,
    dumpers: list[Any],
    *,
    cells: list[Cell] = (),  # type: ignore[assignment]
    plugins: list[object] = (),  # type: ignore[assignment]
    **kwargs: Any,
) -> Vault:
    """A vault with cell ``crm`` (files plus *dumpers*) and any other *cells*."""
    crm = tmp_path / "cells" / "crm"
    if not crm.exists():
        write_tree(crm, {"config.yaml": "db: crm\n", "uploads/a.txt": "a\n"})
    return make_vault(
        tmp_path / "backup",
        [Cell("crm", [crm], dumpers=dumpers), *cells],
        plugins=list(plugins),
        **kwargs,
    )


def argv_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """Record the argv and environment of every tool cellvault starts."""
    import cellvault.tool as tool

    calls: list[tuple[list[str], dict[str, str]]] = []
    real = tool.subprocess.Popen

    def spy(argv: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((list(argv), dict(kwargs.get("env") or os.environ)))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(tool.subprocess, "Popen", spy)
    return calls
