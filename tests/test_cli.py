"""The command line: help, configuration sources, JSON output, logs and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cellvault import Vault, load_env
from cellvault.cli import cli
from tests.helpers import SAMPLE, snapshot, times_clock, utc, write_tree

IDS = ["cell_crm_20250101_020000", "cell_crm_20250101_080000"]


class Setup:
    """Two cells on disk, a seed-style backup_config.env, and a runner."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.cells = tmp_path / "cells"
        self.crm = write_tree(self.cells / "crm", SAMPLE)
        self.billing = write_tree(self.cells / "billing", {"ledger.csv": "a,b\n1,2\n"})
        self.backup_dir = tmp_path / "backup"
        self.env_file = tmp_path / "backup_config.env"
        self.env_file.write_text(
            "# seed style\n"
            f"export BACKUP_DIR={self.backup_dir}\n"
            'export BACKUP_CELLS="crm billing"\n'
            f"export BACKUP_CELLS_ROOT='{self.cells}'\n"
            "BACKUP_TARGETS=local  # only the local directory\n"
        )
        self.runner = CliRunner()

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        result = self.runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert "Traceback" not in result.stderr, result.stderr
        assert "Traceback" not in result.stdout, result.stdout
        return result

    def env_run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return self.run("--env-file", str(self.env_file), *args, env=env)

    def vault(self, times: list[Any] | None = None) -> Vault:
        config = load_env({}, self.env_file)
        return Vault(
            config, load_entry_points=False, clock=times_clock(times or [utc(2025, 1, 1, 2)])
        )

    def history(self) -> None:
        """Two runs of both cells, at 02:00 and 08:00, with different crm data."""
        vault = self.vault([utc(2025, 1, 1, 2), utc(2025, 1, 1, 8)])
        (self.crm / "config.yaml").write_text("version: 1\n")
        assert vault.backup().ok
        (self.crm / "config.yaml").write_text("version: 2\n")
        assert vault.backup().ok


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


# -- help ------------------------------------------------------------------------------


def test_help_explains_the_tool(s: Setup) -> None:
    result = s.run("--help")
    assert result.exit_code == 0
    text = result.stdout
    for word in (
        "backup",
        "verify",
        "restore",
        "list",
        "demo",
        "--config",
        "--env-file",
        "--json",
        "--log-format",
        "BACKUP_DIR",
        "RESTORE_DATE",
        "Exit codes",
    ):
        assert word in text
    assert s.run("-h").stdout == text


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("backup", ["--type", "full", "incremental", "--cell", "--target", "verify"]),
        ("verify", ["--date", "--all", "sha256", "backed_at"]),
        (
            "restore",
            [
                "--date",
                "20250101_0200",
                "RESTORE_DATE",
                "RESTORE_CELL",
                "--into",
                "--skip-prebackup",
                "RESTORE_SKIP_PREBACKUP",
                "backed up first",
                "--source",
            ],
        ),
        ("list", ["--cell", "--target"]),
        ("demo", ["--dir", "scratch"]),
    ],
)
def test_subcommand_help(s: Setup, command: str, words: list[str]) -> None:
    result = s.run(command, "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for word in words:
        assert word in text, word


def test_version(s: Setup) -> None:
    from cellvault import __version__

    result = s.run("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


# -- backup ------------------------------------------------------------------------------


def test_backup_with_env_file(s: Setup) -> None:
    result = s.env_run("backup")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("ok   cell_crm_") and "full" in line and "local" in line for line in lines
    )
    assert any(line.startswith("ok   cell_billing_") for line in lines)
    assert "backup run" in lines[-1] and "ok" in lines[-1]
    assert len(list((s.backup_dir / "crm").glob("cell_crm_*.json"))) == 1


def test_backup_json(s: Setup) -> None:
    result = s.env_run("--json", "backup", "--cell", "crm")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True
    (cell,) = data["cells"]
    assert cell["cell"] == "crm" and cell["ok"] and cell["archive"].startswith("cell_crm_")
    assert cell["targets"][0]["target"] == "local" and cell["targets"][0]["verified"] is True


def test_backup_with_env_only(s: Setup) -> None:
    env = {
        "BACKUP_DIR": str(s.backup_dir),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(s.cells),
        "BACKUP_TYPE": "incremental",
    }
    result = s.run("--json", "backup", env=env)
    assert result.exit_code == 0
    cell = json.loads(result.stdout)["cells"][0]
    assert cell["kind"] == "full" and cell["note"]  # nothing to be incremental on yet


def test_backup_failure_exits_1(s: Setup) -> None:
    env = {"BACKUP_CELLS": "crm billing orders"}
    result = s.env_run("backup", env=env)
    assert result.exit_code == 1
    assert "FAIL cell orders: pack failed" in result.stderr
    assert "does not exist" in result.stderr
    assert "ok   cell_crm_" in result.stdout
    assert "FAILED" in result.stdout
    json_result = s.env_run("--json", "backup", env=env)
    assert json_result.exit_code == 1
    data = json.loads(json_result.stdout)
    assert data["ok"] is False
    assert [c["ok"] for c in data["cells"]] == [True, True, False]


def test_backup_to_a_broken_target_names_it(s: Setup) -> None:
    blocker = s.tmp / "blocker"
    blocker.write_text("x")
    env = {"BACKUP_TARGETS": "local,nas", "BACKUP_NAS_PATH": str(blocker / "nas")}
    result = s.env_run("backup", "--cell", "crm", env=env)
    assert result.exit_code == 1
    assert "FAIL cell crm: lock to target nas failed" in result.stderr
    assert "ok" not in result.stdout.splitlines()[-1].split(":")[-1]


def test_backup_with_toml(s: Setup) -> None:
    toml = s.tmp / "cellvault.toml"
    toml.write_text(f'backup_dir = "{s.backup_dir}"\n[cells.crm]\npaths = ["{s.crm}"]\n')
    result = s.run("--config", str(toml), "--json", "backup")
    assert result.exit_code == 0
    assert [c["cell"] for c in json.loads(result.stdout)["cells"]] == ["crm"]
    # CELLVAULT_CONFIG names the file too.
    listed = s.run("--json", "list", env={"CELLVAULT_CONFIG": str(toml)})
    assert listed.exit_code == 0
    assert json.loads(listed.stdout)["ok"] is True
    assert [a["cell"] for a in json.loads(listed.stdout)["archives"]] == ["crm"]


# -- verify and list -----------------------------------------------------------------------


def test_verify_and_list(s: Setup) -> None:
    s.history()
    result = s.env_run("verify")
    assert result.exit_code == 0
    assert "ok   cell_crm_20250101_080000 on local" in result.stdout
    result = s.env_run("--json", "verify", "--all")
    data = json.loads(result.stdout)
    assert data["ok"] is True and len(data["results"]) == 4

    listed = s.env_run("list")
    assert listed.exit_code == 0
    assert (
        "cell_crm_20250101_020000" in listed.stdout
        and "cell_billing_20250101_080000" in listed.stdout
    )
    data = json.loads(s.env_run("--json", "list", "--cell", "crm").stdout)
    assert data["ok"] is True
    assert [a["id"] for a in data["archives"]] == IDS
    assert data["archives"][0]["targets"] == ["local"] and data["archives"][0]["kind"] == "full"


def test_list_with_nothing(s: Setup) -> None:
    result = s.env_run("list")
    assert result.exit_code == 0 and "no archives" in result.stdout


def test_verify_failure_exits_1(s: Setup) -> None:
    s.history()
    data = s.backup_dir / "crm" / f"{IDS[1]}.tar.zst"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.unlink()
    data.write_bytes(bytes(raw))
    result = s.env_run("verify", "--cell", "crm")
    assert result.exit_code == 1
    assert f"FAIL {IDS[1]} on local" in result.stderr
    result = s.env_run("--json", "verify")
    assert result.exit_code == 1 and json.loads(result.stdout)["ok"] is False


# -- restore --------------------------------------------------------------------------------


def test_restore_from_the_seed_variables(s: Setup) -> None:
    s.history()
    (s.crm / "config.yaml").write_text("damaged\n")
    billing = snapshot(s.billing)
    env = {"RESTORE_DATE": "20250101_0200", "RESTORE_CELL": "crm"}
    result = s.env_run("restore", env=env)
    assert result.exit_code == 0, result.stderr
    assert f"ok   crm: {IDS[0]} from local -> {s.crm}" in result.stdout
    assert "safety backup cell_crm_" in result.stdout
    assert (s.crm / "config.yaml").read_text() == "version: 1\n"
    assert snapshot(s.billing) == billing  # RESTORE_CELL: only crm

    # RESTORE_SKIP_PREBACKUP=1 takes no safety backup.
    before = len(list((s.backup_dir / "crm").glob("*.json")))
    result = s.env_run(
        "--json",
        "restore",
        env={"RESTORE_DATE": IDS[1], "RESTORE_CELL": "crm", "RESTORE_SKIP_PREBACKUP": "1"},
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["cells"][0]["safety_backup"] is None
    assert len(list((s.backup_dir / "crm").glob("*.json"))) == before
    assert (s.crm / "config.yaml").read_text() == "version: 2\n"


def test_restore_options_win_over_the_environment(s: Setup) -> None:
    s.history()
    out = s.tmp / "out"
    env = {"RESTORE_DATE": "20250101_0800", "RESTORE_CELL": "billing"}
    result = s.env_run(
        "--json", "restore", "--date", "20250101_0200", "--cell", "crm", "--into", str(out), env=env
    )
    assert result.exit_code == 0
    (cell,) = json.loads(result.stdout)["cells"]
    assert (cell["cell"], cell["archive"]) == ("crm", IDS[0])
    assert (out / "crm" / "crm" / "config.yaml").read_text() == "version: 1\n"


def test_restore_env_applies_with_a_toml_config(s: Setup) -> None:
    s.history()
    toml = s.tmp / "cellvault.toml"
    toml.write_text(
        f'backup_dir = "{s.backup_dir}"\n'
        f'[cells.crm]\npaths = ["{s.crm}"]\n[cells.billing]\npaths = ["{s.billing}"]\n'
    )
    out = s.tmp / "out"
    env = {"RESTORE_DATE": "20250101_0200", "RESTORE_CELL": "crm", "RESTORE_INTO": str(out)}
    result = s.run("--config", str(toml), "--json", "restore", env=env)
    assert result.exit_code == 0, result.stdout
    (cell,) = json.loads(result.stdout)["cells"]
    assert (cell["cell"], cell["archive"]) == ("crm", IDS[0])
    assert (out / "crm" / "crm" / "config.yaml").read_text() == "version: 1\n"


def test_restore_failure_exits_1(s: Setup) -> None:
    s.history()
    data = s.backup_dir / "crm" / f"{IDS[1]}.tar.zst"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.unlink()
    data.write_bytes(bytes(raw))
    live = snapshot(s.cells)
    result = s.env_run("restore", "--skip-prebackup")
    assert result.exit_code == 1
    assert "FAIL crm:" in result.stderr
    assert "FAIL billing: aborted" in result.stderr
    assert snapshot(s.cells) == live


def test_safety_backup_failure_exits_1(s: Setup) -> None:
    s.history()
    (s.backup_dir / ".locks").rmdir()
    (s.backup_dir / ".locks").write_text("not a directory")
    result = s.env_run("restore", "--cell", "crm")
    assert result.exit_code == 1
    assert "safety backup of cell crm failed" in result.stderr
    assert "RESTORE_SKIP_PREBACKUP=1" in result.stderr


# -- usage and configuration errors: exit 2 ----------------------------------------------------


def expect_usage_error(result: Result, *words: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.strip(), "an error message on stderr"
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def test_no_configuration(s: Setup) -> None:
    expect_usage_error(s.run("backup"), "no configuration", "BACKUP_DIR", "hint:")
    expect_usage_error(s.run("list"), "no configuration")


def test_config_errors(s: Setup) -> None:
    s.history()
    expect_usage_error(s.env_run("restore", "--date", "2025-13-45"), "malformed restore date")
    expect_usage_error(s.env_run("restore", "--date", "20251301"), "malformed restore date")
    expect_usage_error(s.env_run("verify", "--date", "soon"), "malformed restore date")
    expect_usage_error(
        s.env_run("restore", "--cell", "orders"), "unknown cell 'orders'", "crm, billing"
    )
    expect_usage_error(
        s.env_run("restore", env={"RESTORE_CELL": "orders"}), "unknown cell 'orders'"
    )
    expect_usage_error(s.env_run("backup", "--cell", "orders"), "unknown cell")
    expect_usage_error(s.env_run("backup", "--target", "s3"), "unknown target")
    expect_usage_error(s.env_run("backup", env={"BACKUP_TYPE": "weekly"}), "BACKUP_TYPE")
    expect_usage_error(s.env_run("backup", env={"BACKUP_TARGETS": "local,s3"}), "BACKUP_S3_BUCKET")
    bad = s.tmp / "bad.toml"
    bad.write_text("backup_dir = [\n")
    expect_usage_error(s.run("--config", str(bad), "backup"), "not valid TOML")
    bad.write_text('backup_dir = "/b"\nbackupdir = "/c"\n')
    expect_usage_error(
        s.run("--config", str(bad), "list"), "unknown key 'backupdir'", "did you mean"
    )
    expect_usage_error(s.run("--config", str(s.tmp / "missing.toml"), "list"), "does not exist")
    expect_usage_error(s.run("--env-file", str(s.tmp / "missing.env"), "list"), "does not exist")
    # click's own usage errors exit 2 as well.
    expect_usage_error(s.env_run("backup", "--type", "weekly"), "weekly")
    expect_usage_error(s.run("frobnicate"), "No such command")


def test_json_errors(s: Setup) -> None:
    result = s.run("--json", "backup")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert (
        data["ok"] is False
        and data["type"] == "ConfigError"
        and "no configuration" in data["error"]
    )
    s.history()
    result = s.env_run("--json", "restore", "--date", "20240101")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["type"] == "ArchiveNotFound" and "nearest available" in data["hint"]


def test_no_archive_for_the_date_exits_1_with_the_nearest(s: Setup) -> None:
    s.history()
    result = s.env_run("restore", "--date", "20250101_0300", "--cell", "crm")
    assert result.exit_code == 1
    assert "no archive of cell crm matches 20250101_0300" in result.stderr
    assert IDS[0] in result.stderr and IDS[1] in result.stderr


def test_unknown_variables_are_warned_about(s: Setup) -> None:
    result = s.env_run("list", env={"BACKUP_TARGET": "s3"})
    assert result.exit_code == 0
    assert "config.unknown_variable" in result.stderr
    assert "did_you_mean=BACKUP_TARGETS" in result.stderr
    assert "variable=BACKUP_TARGET\n" in result.stderr
    result = s.env_run("--log-format", "json", "list", env={"RESTORE_CEL": "crm"})
    (event,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert event["event"] == "config.unknown_variable"
    assert (event["variable"], event["did_you_mean"]) == ("RESTORE_CEL", "RESTORE_CELL")


# -- logs -----------------------------------------------------------------------------------


def test_log_format_json(s: Setup) -> None:
    result = s.env_run("--log-format", "json", "backup", "--cell", "crm")
    assert result.exit_code == 0
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    names = [e["event"] for e in events]
    assert "backup.started" in names and "archive.stored" in names and "backup.finished" in names
    assert all("timestamp" in e and "level" in e for e in events)


def test_console_logs_have_no_traceback_for_crashes(s: Setup) -> None:
    """An unexpected error inside a cell's backup is one line, unless --debug."""
    (s.backup_dir).mkdir()
    (s.backup_dir / ".cellvault").write_text("not a directory: the spool cannot be made")
    result = s.env_run("backup", "--cell", "crm")
    assert result.exit_code == 1
    assert "backup.crashed" in result.stderr
    assert "NotADirectoryError" in result.stderr
    debug = s.runner.invoke(
        cli, ["--debug", "--env-file", str(s.env_file), "backup", "--cell", "crm"]
    )
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr


def test_repeated_invocations_do_not_stack_log_handlers(s: Setup) -> None:
    for _ in range(3):
        result = s.env_run("--log-format", "json", "list")
        assert result.exit_code == 0
    import logging

    from cellvault import cli as cli_module

    handlers = [
        h for h in logging.getLogger("cellvault").handlers if not isinstance(h, logging.NullHandler)
    ]
    assert handlers == [cli_module._handler]


# -- demo -------------------------------------------------------------------------------------


def test_demo(s: Setup) -> None:
    where = s.tmp / "demo"
    result = s.run("demo", "--dir", str(where))
    assert result.exit_code == 0, result.stderr
    assert str(where / "cells") in result.stdout
    assert str(where / "backup") in result.stdout
    assert str(where / "restored") in result.stdout
    assert "identical to the originals: yes" in result.stdout
    assert result.stdout.strip().endswith("demo ok")
    data = json.loads(s.run("--json", "demo", "--dir", str(s.tmp / "demo2")).stdout)
    assert data["ok"] is True and data["identical"] is True


# -- real processes --------------------------------------------------------------------------


def run_process(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKUP_", "RESTORE_", "AWS_", "CELLVAULT_"))
    }
    base["CELLVAULT_LOAD_PLUGINS"] = ""
    proc = subprocess.run(
        [sys.executable, "-m", "cellvault", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def test_process_exit_codes(s: Setup) -> None:
    # 2: no configuration at all
    proc = run_process("backup", cwd=s.tmp)
    assert proc.returncode == 2 and "no configuration" in proc.stderr

    # 0: a backup from the seed's env file, with JSON on stdout
    proc = run_process("--env-file", str(s.env_file), "--json", "backup")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True

    # 1: a cell whose path is missing, with JSON logs on stderr
    proc = run_process(
        "--env-file",
        str(s.env_file),
        "--log-format",
        "json",
        "backup",
        env={"BACKUP_CELLS": "crm ghost"},
    )
    assert proc.returncode == 1
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "backup.failed"]
    assert failed and failed[0]["cell"] == "ghost" and failed[0]["stage"] == "pack"
    assert "FAIL cell ghost" in proc.stderr

    # 2: a malformed RESTORE_DATE from the environment
    proc = run_process("--env-file", str(s.env_file), "restore", env={"RESTORE_DATE": "2025-02-30"})
    assert proc.returncode == 2 and "malformed restore date" in proc.stderr

    # 0: restore one cell with the seed's variables, skipping the safety backup
    (s.crm / "config.yaml").write_text("changed\n")
    proc = run_process(
        "--env-file",
        str(s.env_file),
        "restore",
        env={"RESTORE_DATE": "latest", "RESTORE_CELL": "crm", "RESTORE_SKIP_PREBACKUP": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert (s.crm / "config.yaml").read_text() == SAMPLE["config.yaml"]


def test_process_demo(tmp_path: Path) -> None:
    proc = run_process("demo", "--dir", "scratch", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "scratch") in proc.stdout
    assert (tmp_path / "scratch" / "backup" / "crm").is_dir()
    proc = run_process("--help")
    assert proc.returncode == 0 and "Usage: cellvault" in proc.stdout
