"""The local target on a NAS mount: a full file system, a read-only remount (real tmpfs mounts)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellvault import TargetSpec
from tests.system_tools import unavailable
from tests.targets.helpers import make_cell, vault_for


@pytest.fixture
def tiny_mount(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a NAS that fills up."""
    mount = tmp_path / "nas"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        unavailable(f"cannot mount a tmpfs for the full-NAS test: {proc.stderr.decode()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_nas_mount_commits_nothing_there(tmp_path: Path, tiny_mount: Path) -> None:
    live = make_cell(tmp_path, big=3 << 20)
    vault = vault_for(tmp_path, live, TargetSpec("nas", str(tiny_mount)))
    report = vault.backup()
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert outcomes["local"].ok
    assert not outcomes["nas"].ok
    assert "No space left" in (outcomes["nas"].error or ""), outcomes["nas"].error
    assert list(tiny_mount.rglob("cell_*.json")) == []
    assert [
        p.name for p in tiny_mount.rglob("*") if p.is_file() and not p.name.endswith(".lock")
    ] == []


def test_read_only_nas_mount_is_a_clear_error(tmp_path: Path, tiny_mount: Path) -> None:
    live = make_cell(tmp_path)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    vault = vault_for(tmp_path, live, TargetSpec("nas", str(tiny_mount)))
    report = vault.backup()
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert outcomes["local"].ok
    assert not outcomes["nas"].ok
    assert "Read-only" in (outcomes["nas"].error or ""), outcomes["nas"].error
