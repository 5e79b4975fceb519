"""cellvault fleet ... on the command line: the settings it needs, the inventory, the status."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cellvault.cli import cli
from tests.fleet.test_fleet import REDIS, _reachable
from tests.helpers import write_tree
from tests.servers.fixtures import require_modules, unavailable


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    write_tree(tmp_path / "cells" / "crm", {"a.txt": "a\n"})
    return {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(tmp_path / "cells"),
        "BACKUP_ALERT_LOG": "off",
        **extra,
    }


def test_without_a_broker_the_fleet_says_what_to_set(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["fleet", "hosts"], env=_env(tmp_path))
    assert result.exit_code == 2
    assert "CELLVAULT_BROKER_URL is not set" in result.stderr
    bad = CliRunner().invoke(
        cli, ["fleet", "hosts"], env=_env(tmp_path, CELLVAULT_BROKER_URL="http://x")
    )
    assert bad.exit_code == 2 and "redis:// or amqp://" in bad.stderr


def test_hosts_warns_of_cells_nobody_owns_and_status_reads_the_targets(tmp_path: Path) -> None:
    require_modules("celery", "redis", install="pip install 'cellvault[fleet]'")
    if not _reachable(6379):
        unavailable("no Redis broker on 127.0.0.1:6379 (see the environment notes)")
    env = _env(tmp_path, CELLVAULT_BROKER_URL=REDIS)
    # A [fleet.hosts]-less coordinator with no live worker for its cell.
    hosts = CliRunner().invoke(cli, ["fleet", "hosts", "--timeout", "0.5", "--json"], env=env)
    assert hosts.exit_code == 1, hosts.output
    data = json.loads(hosts.stdout)
    assert "crm" in data["unowned"]
    assert "cell crm is owned by no host: nobody backs it up" in data["warnings"]
    # Status needs no worker: it reads the targets (here: nothing backed up yet).
    assert CliRunner().invoke(cli, ["backup"], env=env).exit_code == 0
    status = CliRunner().invoke(cli, ["fleet", "status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    (cell,) = json.loads(status.stdout)["cells"]
    assert cell["cell"] == "crm" and cell["targets"][0]["newest"].startswith("cell_crm_")
