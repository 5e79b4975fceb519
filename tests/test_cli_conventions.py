"""One command-line convention: ``--json`` before or after the subcommand; shell completion."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cellvault.cli import cli
from tests.helpers import SAMPLE, write_tree


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


ALL = list(_commands(cli))


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    write_tree(tmp_path / "cells" / "crm", SAMPLE)
    path = tmp_path / "backup_config.env"
    path.write_text(
        f"BACKUP_DIR={tmp_path / 'backup'}\nBACKUP_CELLS=crm\n"
        f"BACKUP_CELLS_ROOT={tmp_path / 'cells'}\nBACKUP_ALERT_LOG=off\n"
    )
    return path


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_every_subcommand_takes_json_after_its_name(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.stdout


def test_json_after_the_subcommand_is_the_same_as_before(env_file: Path) -> None:
    runner = CliRunner()
    base = ["--env-file", str(env_file)]
    assert runner.invoke(cli, [*base, "backup"]).exit_code == 0
    before = runner.invoke(cli, [*base, "--json", "list"])
    after = runner.invoke(cli, [*base, "list", "--json"])
    assert before.exit_code == after.exit_code == 0, after.output
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert json.loads(after.stdout)["archives"][0]["cell"] == "crm"
    # Errors are JSON too, with the same exit code.
    bad = runner.invoke(cli, [*base, "restore", "--cell", "nope", "--json"])
    assert bad.exit_code == 2
    assert json.loads(bad.stdout)["type"] == "ConfigError"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_script_of_each_shell(shell: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert "_CELLVAULT_COMPLETE" in result.stdout
    assert f"{shell}_complete" in result.stdout


def test_completion_completes_commands_and_options() -> None:
    runner = CliRunner()
    env = {"_CELLVAULT_COMPLETE": "bash_complete", "COMP_WORDS": "cellvault li", "COMP_CWORD": "1"}
    result = runner.invoke(cli, [], prog_name="cellvault", env=env)
    assert "plain,list" in result.stdout.splitlines()
    env["COMP_WORDS"], env["COMP_CWORD"] = "cellvault list --j", "2"
    result = runner.invoke(cli, [], prog_name="cellvault", env=env)
    assert "plain,--json" in result.stdout.splitlines()


def test_completion_rejects_an_unknown_shell() -> None:
    result = CliRunner().invoke(cli, ["completion", "tcsh"])
    assert result.exit_code == 2
