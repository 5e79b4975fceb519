"""Dumpers configured in Python, TOML and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellvault import ConfigError, Vault
from cellvault.config import load_env, load_toml, unknown_env
from cellvault.dumpers import DumperSpec
from cellvault.dumpers.mysql import MysqlDumper
from cellvault.dumpers.postgres import PostgresDumper
from cellvault.dumpers.redis import RedisDumper


def env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm billing",
        "BACKUP_CELLS_ROOT": str(tmp_path / "cells"),
        **more,
    }


def test_dumpers_from_the_environment(tmp_path: Path) -> None:
    config = load_env(
        env(
            tmp_path,
            BACKUP_CELL_CRM_DUMPERS="postgres cache",
            BACKUP_CELL_CRM_DUMPER_POSTGRES_DSN="postgresql://crm@127.0.0.1/crm",
            BACKUP_CELL_CRM_DUMPER_POSTGRES_PASSWORD_ENV="CRM_PG_PASSWORD",
            BACKUP_CELL_CRM_DUMPER_CACHE_TYPE="redis",
            BACKUP_CELL_CRM_DUMPER_CACHE_URL="redis://127.0.0.1:6379/3",
            BACKUP_CELL_CRM_DUMPER_CACHE_FLUSH="no",
            BACKUP_CELL_BILLING_DUMPERS="mysql",
            BACKUP_CELL_BILLING_DUMPER_MYSQL_DSN="mysql://billing@127.0.0.1:3306/billing",
            BACKUP_CELL_BILLING_DUMPER_MYSQL_DATABASES="billing,ledger",
            BACKUP_CELL_BILLING_DUMPER_MYSQL_TIMEOUT="120",
        )
    )
    crm, _ = config.cells
    assert crm.dumpers == (
        DumperSpec(
            "postgres",
            "postgres",
            {"dsn": "postgresql://crm@127.0.0.1/crm", "password_env": "CRM_PG_PASSWORD"},
        ),
        DumperSpec("redis", "cache", {"url": "redis://127.0.0.1:6379/3", "flush": "no"}),
    )
    vault = Vault(config, load_entry_points=False)
    pg, cache = vault.dumpers["crm"]
    assert isinstance(pg, PostgresDumper) and pg.password_env == "CRM_PG_PASSWORD"
    assert isinstance(cache, RedisDumper) and cache.db == (3,) and cache.flush is False
    (my,) = vault.dumpers["billing"]
    assert isinstance(my, MysqlDumper)
    assert my.databases == ("billing", "ledger") and my.timeout == 120.0
    # None of these is reported as a mistyped variable.
    assert (
        unknown_env(env(tmp_path, BACKUP_CELL_CRM_DUMPERS="x", BACKUP_CELL_CRM_DUMPER_X_DSN="y"))
        == []
    )


def test_environment_mistakes_are_config_errors(tmp_path: Path) -> None:
    config = load_env(
        env(tmp_path, BACKUP_CELL_CRM_DUMPERS="postgres", BACKUP_CELL_CRM_DUMPER_POSTGRES_DNS="x")
    )
    with pytest.raises(ConfigError, match="unknown option 'dns'") as info:
        Vault(config, load_entry_points=False)
    assert "dsn" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="invalid dumper name"):
        load_env(env(tmp_path, BACKUP_CELL_CRM_DUMPERS="Bad/Name"))
    config = load_env(env(tmp_path, BACKUP_CELL_CRM_DUMPERS="postgres"))
    with pytest.raises(ConfigError, match="no database given"):
        Vault(config, load_entry_points=False)


def test_dumpers_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "cellvault.toml"
    path.write_text(
        f"""
backup_dir = "{tmp_path / "backup"}"
hooks_dir = "/etc/paas/hooks"
restore_hooks_dir = "/etc/paas/restore"
hook_timeout = 120

[cells.crm]
paths = ["{tmp_path / "cells" / "crm"}"]

[[cells.crm.dumpers]]
type = "postgres"
name = "db"
dsn = "postgresql://crm@127.0.0.1:5432/crm"
only_tables = ["public.orders"]
mode = "replace"

[[cells.crm.dumpers]]
type = "sqlite"
path = "/srv/crm/app.sqlite"
autoload = false
"""
    )
    with pytest.raises(ConfigError, match="only_tables and only_schemas need mode = clean"):
        Vault(load_toml(path), load_entry_points=False)
    path.write_text(path.read_text().replace('mode = "replace"', 'mode = "clean"'))
    config = load_toml(path)
    assert config.hooks_dir == Path("/etc/paas/hooks") and config.hook_timeout == 120
    vault = Vault(config, load_entry_points=False)
    db, sqlite = vault.dumpers["crm"]
    assert db.name == "db" and db.only_tables == ("public.orders",)  # type: ignore[attr-defined]
    assert sqlite.name == "sqlite" and sqlite.autoload is False

    path.write_text(path.read_text().replace('type = "sqlite"', 'kind = "sqlite"'))
    with pytest.raises(ConfigError, match=r"\[cells.crm\] dumpers\[1\]: a dumper needs a type"):
        load_toml(path)


def test_an_unset_password_variable_fails_the_dump_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CV_UNSET_PASSWORD", raising=False)
    crm = tmp_path / "cells" / "crm"
    crm.mkdir(parents=True)
    config = load_env(
        env(
            tmp_path,
            BACKUP_CELLS="crm",
            BACKUP_CELL_CRM_DUMPERS="postgres",
            BACKUP_CELL_CRM_DUMPER_POSTGRES_DSN="postgresql://crm@127.0.0.1/crm",
            BACKUP_CELL_CRM_DUMPER_POSTGRES_PASSWORD_ENV="CV_UNSET_PASSWORD",
        )
    )
    report = Vault(config, load_entry_points=False).backup()
    (cell,) = report.cells
    assert not cell.ok and cell.stage == "dump"
    assert cell.error == (
        "cell crm, dumper postgres: dumper postgres (type postgres): environment variable "
        "CV_UNSET_PASSWORD (password_env) is not set"
    )


def test_restore_time_options_start_from_the_configured_ones() -> None:
    """A dsn given for one restore wins over the host and port the configured dsn filled in."""
    spec = DumperSpec("mysql", "db", {"dsn": "mysql://root@db1:3306/crm"})
    dumper = MysqlDumper.from_spec(spec)
    assert (dumper.host, dumper.port) == ("db1", 3306)
    other = dumper.with_options({"dsn": "mysql://admin@db2:3307/crm"})
    assert isinstance(other, MysqlDumper)
    assert (other.host, other.port, other.user) == ("db2", 3307, "admin")
    assert dumper.with_options({"clean": "false"}).host == "db1"  # the rest is kept
