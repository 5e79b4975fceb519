"""The command traffic switch (DR_SWITCH_COMMAND): arguments, environment, failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellvault import Cell, Config, TargetSpec
from cellvault.errors import DrError
from cellvault.plugins import make_plugin_manager


def config(tmp_path: Path, command: str) -> Config:
    return Config(
        backup_dir=tmp_path / "backup",
        cells=[Cell("crm", [tmp_path / "crm"])],
        targets=[TargetSpec("local", str(tmp_path / "backup"))],
        dr_switch_command=command,
        hook_timeout=30,
    )


def switch(cfg: Config) -> list[object]:
    pm = make_plugin_manager(load_entry_points=False)
    return pm.hook.cellvault_switch_traffic(
        site="dr", previous_site="primary", event="failover", config=cfg
    )


def test_the_command_gets_the_site_and_event_and_the_previous_site(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    script = tmp_path / "switch dns.sh"
    script.write_text(f'#!/bin/sh\necho "$1 $2 $3 $CELLVAULT_SWITCH_PREVIOUS_SITE" > "{out}"\n')
    script.chmod(0o755)
    done = switch(config(tmp_path, f"'{script}' paas.example.com"))
    assert done == [f"command {script} switched the traffic to site dr"]
    assert out.read_text() == "paas.example.com dr failover primary\n"


def test_a_failing_or_missing_command_says_what_and_why(tmp_path: Path) -> None:
    with pytest.raises(DrError, match=r"exited 3: no route to slb"):
        switch(config(tmp_path, "sh -c 'echo no route to slb >&2; exit 3'"))
    with pytest.raises(DrError, match="program /nonexistent/switch not found"):
        switch(config(tmp_path, "/nonexistent/switch"))
    with pytest.raises(DrError, match="cannot be split"):
        switch(config(tmp_path, "'unclosed"))
