"""cellvault init: a commented configuration and a schedule for the cells under a root."""

from __future__ import annotations

import configparser
import json
import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellvault import Vault, load_env, load_toml
from cellvault.cli import cli
from cellvault.config import unknown_env
from cellvault.scaffold import find_cells, scaffold
from tests.helpers import SAMPLE, write_tree


@pytest.fixture
def root(tmp_path: Path) -> Path:
    cells = tmp_path / "srv" / "cells"
    write_tree(cells / "crm", SAMPLE)
    write_tree(cells / "billing", {"ledger.csv": "a,b\n1,2\n"})
    for not_a_cell in ("lost+found", ".snapshots", "logs", "Has Spaces"):
        (cells / not_a_cell).mkdir()
    (cells / "README").write_text("a file, not a cell\n")
    return cells


def test_the_cells_are_the_folders_with_cell_names(root: Path) -> None:
    assert find_cells(root) == ["billing", "crm"]


def test_init_writes_an_env_file_and_cron_that_work(root: Path, tmp_path: Path) -> None:
    scripts = tmp_path / "deploy" / "scripts"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["init", str(root), "--dir", str(scripts), "--backup-dir", str(tmp_path / "backup")],
    )
    # Before the first backup only the backup and drill lines of doctor fail: exit 0.
    assert result.exit_code == 0, result.output
    assert "cells under" in result.stdout and "billing, crm" in result.stdout
    assert "[FAIL] backup crm" in result.stdout
    assert "[ok]   target local" in result.stdout
    env_file = scripts / "backup_config.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    text = env_file.read_text()
    assert text.count("\n# ") > 10  # commented
    # Every variable it names, commented out or not, is one cellvault reads.
    named = set(re.findall(r"\b((?:BACKUP|RESTORE)_[A-Z0-9_]+)=", text))
    assert len(named) > 10
    assert unknown_env(dict.fromkeys(named, "")) == []
    config = load_env({}, env_file)
    assert [c.name for c in config.cells] == ["billing", "crm"]
    assert config.backup_dir == tmp_path / "backup"
    # The schedule runs the same command line with this file.
    cron = (scripts / "cellvault.cron").read_text().splitlines()
    jobs = [line for line in cron if line and not line.startswith("#")]
    assert len(jobs) == 4
    assert all(f"--env-file {env_file}" in line for line in jobs)
    assert any(line.startswith("0 2 * * *") and "backup --type full" in line for line in jobs)
    # And it is a configuration that backs up.
    assert Vault(config, load_entry_points=False).backup().ok
    again = runner.invoke(cli, ["--env-file", str(env_file), "doctor", "--no-probe"])
    assert "[ok]   backup crm" in again.stdout


def test_init_writes_toml_and_systemd_units(root: Path, tmp_path: Path) -> None:
    result = scaffold(
        root, tmp_path / "conf", backup_dir=tmp_path / "backup", fmt="toml", schedule="systemd"
    )
    config = load_toml(result.config)
    assert [c.name for c in config.cells] == ["billing", "crm"]
    assert [t.name for t in config.target_specs] == ["local"]
    units = {p.name: p for p in result.files if p.parent.name == "systemd"}
    assert len(units) == 8
    service = configparser.ConfigParser(interpolation=None)
    service.read(units["cellvault-backup-incremental.service"])
    assert service["Service"]["ExecStart"].endswith(
        f"--config {result.config} backup --type incremental"
    )
    timer = configparser.ConfigParser(interpolation=None)
    timer.read(units["cellvault-drill.timer"])
    assert timer["Timer"]["OnCalendar"].startswith("Sun")


def test_nothing_is_replaced_without_force(root: Path, tmp_path: Path) -> None:
    scaffold(root, tmp_path / "conf", schedule="none")
    (tmp_path / "conf" / "backup_config.env").write_text("# mine\n")
    result = CliRunner().invoke(cli, ["init", str(root), "--dir", str(tmp_path / "conf")])
    assert result.exit_code == 2
    assert "exists already" in result.stderr
    assert (tmp_path / "conf" / "backup_config.env").read_text() == "# mine\n"
    forced = scaffold(root, tmp_path / "conf", schedule="none", force=True)
    assert forced.files == (tmp_path / "conf" / "backup_config.env",)


def test_a_root_without_cells_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "empty"), "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no cell under" in result.stderr


def test_init_json(root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "init",
            str(root),
            "--dir",
            str(tmp_path / "conf"),
            "--backup-dir",
            str(tmp_path / "backup"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["cells"] == ["billing", "crm"]
    assert {c["name"] for c in data["doctor"]["checks"]} >= {"target local", "backup crm"}
