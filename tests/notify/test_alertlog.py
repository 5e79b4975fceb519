"""The alert log: JSON lines, the manual's default path, and exit codes that alerts never change."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from cellvault import Failure, Vault, load_env, load_toml
from cellvault.cli import cli
from cellvault.notify import DEFAULT_ALERT_LOG, alert_for, alert_settings
from cellvault.notify.alertlog import append
from tests.helpers import SAMPLE, write_tree
from tests.servers.webhook import closed_port


def test_each_failure_is_one_json_line(failing_vault: Callable[..., Vault], tmp_path: Path) -> None:
    vault = failing_vault()
    first = vault.backup()
    second = vault.backup()
    lines = (tmp_path / "alerts.log").read_text().splitlines()
    assert len(lines) == 2
    alerts = [json.loads(line) for line in lines]
    assert [a["run"] for a in alerts] == [first.run, second.run]
    alert = alerts[0]
    assert set(alert) >= {
        "time",
        "status",
        "operation",
        "stage",
        "cell",
        "target",
        "archive",
        "run",
        "host",
        "error",
        "log",
    }
    assert (alert["status"], alert["operation"], alert["stage"]) == ("failed", "backup", "upload")
    assert (alert["cell"], alert["target"], alert["host"]) == ("crm", "nas", vault.host)
    assert alert["time"].endswith("Z")
    # The run's log names the same failure.
    run_log = Path(alert["log"]).read_text()
    assert first.run in run_log and '"stage": "upload"' in run_log


def test_default_path_is_under_the_backup_dir_never_the_current_directory(
    failing_vault: Callable[..., Vault], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    vault = failing_vault()
    # Drop the fixture's explicit path: the default applies.
    vault.config = attrs.evolve(vault.config, extra={})
    vault.backup()
    log = tmp_path / "backup" / "logs" / "backup_alerts.log"
    assert json.loads(log.read_text().splitlines()[0])["target"] == "nas"
    assert list(cwd.iterdir()) == []


def test_default_path_follows_the_manuals_layout_beside_the_env_file(tmp_path: Path) -> None:
    scripts = tmp_path / "platform" / "deploy" / "scripts"
    scripts.mkdir(parents=True)
    env_file = scripts / "backup_config.env"
    env_file.write_text(f"BACKUP_DIR={tmp_path / 'backup'}\n")
    settings = alert_settings(load_env({}, env_file))
    assert settings.log == tmp_path / "platform" / "deploy" / "backup" / "backup_alerts.log"
    assert settings.log == tmp_path / "platform" / DEFAULT_ALERT_LOG
    # A relative value is taken from the env file's folder; an absolute one as it is.
    env_file.write_text(f"BACKUP_DIR={tmp_path / 'backup'}\nBACKUP_ALERT_LOG=../logs/a.log\n")
    assert alert_settings(load_env({}, env_file)).log == scripts.parent / "logs" / "a.log"
    env_file.write_text(f"BACKUP_DIR={tmp_path / 'backup'}\nBACKUP_ALERT_LOG=/var/log/a.log\n")
    assert alert_settings(load_env({}, env_file)).log == Path("/var/log/a.log")


def test_default_path_follows_the_toml_file_and_relative_values_the_backup_dir(
    tmp_path: Path,
) -> None:
    toml = tmp_path / "deploy" / "scripts" / "cellvault.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text(f'backup_dir = "{tmp_path / "backup"}"\n')
    assert alert_settings(load_toml(toml)).log == tmp_path / DEFAULT_ALERT_LOG
    # Without a configuration file a relative value is relative to BACKUP_DIR.
    env = {"BACKUP_DIR": str(tmp_path / "backup"), "BACKUP_ALERT_LOG": "alerts/a.log"}
    assert alert_settings(load_env(env)).log == tmp_path / "backup" / "alerts" / "a.log"


def test_the_command_line_puts_the_alert_log_beside_its_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = tmp_path / "platform" / "deploy" / "scripts"
    scripts.mkdir(parents=True)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the NAS folder should be\n")
    write_tree(tmp_path / "cells" / "crm", SAMPLE)
    (scripts / "backup_config.env").write_text(
        f"BACKUP_DIR={tmp_path / 'backup'}\nBACKUP_CELLS=crm\n"
        f"BACKUP_CELLS_ROOT={tmp_path / 'cells'}\n"
        f"BACKUP_TARGETS=local,nas\nBACKUP_NAS_PATH={blocked}\n"
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(cli, ["--env-file", str(scripts / "backup_config.env"), "backup"])
    assert result.exit_code == 1, result.output
    alerts = tmp_path / "platform" / "deploy" / "backup" / "backup_alerts.log"
    assert json.loads(alerts.read_text().splitlines()[0])["target"] == "nas"
    assert list(cwd.iterdir()) == []


def test_off_writes_nothing(
    failing_vault: Callable[..., Vault], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    failing_vault(BACKUP_ALERT_LOG="off").backup()
    assert not (tmp_path / "deploy").exists()
    assert not (tmp_path / "alerts.log").exists()


def test_unwritable_alert_log_changes_nothing(
    failing_vault: Callable[..., Vault], tmp_path: Path
) -> None:
    (tmp_path / "blocked").write_text("a file, not a directory")
    report = failing_vault(BACKUP_ALERT_LOG=str(tmp_path / "blocked" / "alerts.log")).backup()
    assert not report.ok
    assert [t.ok for t in report.cells[0].targets] == [True, False]
    run_log = next((tmp_path / "backup" / "logs").glob("backup_*.log")).read_text()
    assert "alert.log_failed" in run_log


def test_lines_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "alerts.log"
    failure = Failure(stage="pack", error="x" * 3000, cell="crm", run="r1", host="h")

    def write() -> None:
        for _ in range(50):
            assert append(path, alert_for(failure))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    assert all(json.loads(line)["error"] == "x" * 3000 for line in lines)


def test_secrets_in_errors_are_masked(tmp_path: Path) -> None:
    path = tmp_path / "alerts.log"
    failure = Failure(
        stage="upload",
        error="cannot reach https://user:hunter2@nas.example/x?Signature=abc123",
        cell="crm",
    )
    append(path, alert_for(failure))
    text = path.read_text()
    assert "hunter2" not in text and "abc123" not in text


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    cells = tmp_path / "cells"
    write_tree(cells / "crm", SAMPLE)
    (tmp_path / "blocked").write_text("not a directory")
    return {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(cells),
        "BACKUP_ALERT_LOG": str(tmp_path / "alerts.log"),
        **extra,
    }


@pytest.mark.parametrize("webhook", [False, True])
def test_exit_codes_do_not_depend_on_the_webhook(tmp_path: Path, webhook: bool) -> None:
    down = {"BACKUP_ALERT_WEBHOOK": f"http://127.0.0.1:{closed_port()}/hook"} if webhook else {}
    runner = CliRunner()
    ok_env = _cli_env(tmp_path, BACKUP_ALERT_ON="always", BACKUP_ALERT_TIMEOUT="0.2", **down)
    ok = runner.invoke(cli, ["backup"], env=ok_env)
    assert ok.exit_code == 0, ok.output
    # A second target on a NAS path that cannot exist: that target fails, the run exits 1.
    bad_env = {
        **ok_env,
        "BACKUP_ALERT_ON": "failure",
        "BACKUP_TARGETS": "local,nas",
        "BACKUP_NAS_PATH": str(tmp_path / "blocked" / "nas"),
    }
    bad = runner.invoke(cli, ["--json", "backup"], env=bad_env)
    assert bad.exit_code == 1, bad.output
    report = json.loads(bad.stdout)
    assert [t["ok"] for t in report["cells"][0]["targets"]] == [True, False]
    alerts = [json.loads(line) for line in (tmp_path / "alerts.log").read_text().splitlines()]
    assert [a["status"] for a in alerts] == ["ok", "failed"]
    assert alerts[1]["target"] == "nas"
    assert alerts[1]["run"] == report["run"]
    assert os.environ.get("BACKUP_ALERT_WEBHOOK") is None
