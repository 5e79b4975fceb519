"""Permission bits of everything cellvault creates: 0600 files in 0700 directories, any umask.

A backup, an incremental, every verify level, a restore, a prune and a
failure's alert run under umask 0022 and 0000 with the backup directory, a
second local target (a NAS path) and the alert log created by cellvault
itself; then every path under them is checked.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellvault import TargetSpec
from cellvault.modes import private_dirs, private_opener
from tests.servers.fixtures import S3Bucket
from tests.system_tools import import_module

from .archive_helpers import TickingClock, make_vault


@pytest.fixture(params=[0o022, 0o000], ids=["umask-0022", "umask-0000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _wrong(root: Path) -> list[str]:
    """Every path under *root* (itself included) whose mode is not 0600 (files) or 0700 (dirs)."""
    out = []
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) != want:
            out.append(f"{path.relative_to(root.parent)}: {stat.S_IMODE(st.st_mode):04o}")
    return out


def test_every_created_path_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    (cell / "a.txt").write_text("a\n")
    os.chmod(cell / "a.txt", 0o644)
    backup = tmp_path / "site" / "backup"  # neither exists: cellvault makes both
    nas = tmp_path / "nas" / "paas"
    alerts = tmp_path / "site" / "alerts" / "alerts.jsonl"
    key = tmp_path / "keys" / "site.key"
    key.parent.mkdir()
    from cellvault.signing import generate_keypair

    generate_keypair(key)
    # Encrypted too: the sealed manifest copy and the manifests a keyless backup host
    # keeps (.cellvault/manifests) are made on paths of their own.
    identity = import_module("pyrage", "'cellvault[crypt]'").x25519.Identity.generate()
    (key.parent / "age.txt").write_text(f"{identity}\n")
    vault = make_vault(
        backup,
        [cell],
        clock=TickingClock(dt.datetime(2025, 1, 1, 2, 0, tzinfo=dt.UTC)),
        targets=[TargetSpec("local", str(backup)), TargetSpec("nas", str(nas))],
        extra={"BACKUP_ALERT_LOG": str(alerts)},
        signing_key=key,
        encrypt_recipients=(str(identity.to_public()),),
        age_identity=key.parent / "age.txt",
    )
    assert vault.backup(kind="full").ok
    assert list(backup.glob("crm/*.tar.zst.age"))  # sealed, so the sealed paths are checked
    (cell / "b.txt").write_text("b\n")
    assert vault.backup(kind="incremental").ok
    for level in ("quick", "read", "full", "drill"):
        assert vault.verify(level=level).ok, level
    restored = vault.restore(into=tmp_path / "restored", skip_prebackup=True)
    assert restored.ok
    # Restored data keeps the modes it was backed up with, not ours.
    assert stat.S_IMODE((tmp_path / "restored" / "crm" / "crm" / "a.txt").stat().st_mode) == 0o644
    assert vault.prune().ok
    # A failure (a cell whose path is gone): its alert is appended to the alert log.
    failing = make_vault(
        backup,
        {"gone": [tmp_path / "cells" / "gone"]},
        targets=[TargetSpec("local", str(backup))],
        extra={"BACKUP_ALERT_LOG": str(alerts)},
    )
    assert not failing.backup(kind="full").ok
    assert alerts.exists()
    assert (backup / "logs").is_dir() and any((backup / ".cellvault" / "state").iterdir())
    assert any(nas.rglob("*.json"))
    problems = _wrong(backup) + _wrong(nas) + _wrong(alerts.parent)
    assert not problems, problems


def test_the_helpers_ignore_the_umask_and_leave_existing_folders_alone(
    tmp_path: Path, umask: int
) -> None:
    mine = tmp_path / "theirs"
    mine.mkdir()
    mine.chmod(0o755)
    private_dirs(mine / "a" / "b")
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755
    assert stat.S_IMODE((mine / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((mine / "a" / "b").stat().st_mode) == 0o700
    with open(mine / "a" / "f", "w", opener=private_opener) as f:
        f.write("x")
    assert stat.S_IMODE((mine / "a" / "f").stat().st_mode) == 0o600


def test_a_standby_prepared_and_pulled_is_private_whatever_the_umask(
    tmp_path: Path, umask: int, s3_bucket: S3Bucket
) -> None:
    from tests.dr.test_dr import make_site, s3_spec, seed_cells

    storage = s3_spec(s3_bucket)
    primary = make_site(tmp_path / "p", "primary", storage, cells=("crm",))
    seed_cells(tmp_path / "p")
    assert primary.vault.backup(kind="full").ok
    assert primary.push().ok
    standby = make_site(tmp_path / "s", "dr", storage, cells=("crm",))
    prepared = standby.prepare()
    assert prepared.ok, prepared
    assert standby.pull().ok
    backup = tmp_path / "s" / "backup"
    assert any(backup.rglob("cell_crm_*.json"))
    problems = _wrong(backup)
    assert not problems, problems
