"""Local targets with BACKUP_OBJECT_LOCK: archives immutable (chattr +i) until their date.

Real ext4 (or any file system with the attribute) and real ioctls, as root.
The vault's clock is the real time: the dates are compared with it. Every
immutable file is cleared at the end, so the temporary tree can be removed.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellvault import Cell, Config, Vault
from cellvault.retention import RetentionPolicy
from cellvault.targets.local import is_immutable, set_immutable
from tests.system_tools import needs_root, require, unavailable


class Clock:
    def __init__(self) -> None:
        self.ticks = 0

    def __call__(self) -> dt.datetime:
        self.ticks += 1
        return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=self.ticks)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    needs_root("set the immutable attribute")
    require("lsattr")
    probe = tmp_path / "probe"
    probe.write_text("x")
    if set_immutable(probe, True) is not None:
        unavailable(f"{tmp_path} has no immutable attribute (not ext4, xfs, btrfs or tmpfs)")
    set_immutable(probe, False)
    (tmp_path / "cells" / "crm").mkdir(parents=True)
    (tmp_path / "cells" / "crm" / "a.txt").write_text("a\n")
    try:
        yield tmp_path
    finally:
        for path in tmp_path.rglob("*"):
            if path.is_file() and not path.is_symlink():
                set_immutable(path, False)


def _vault(site: Path, clock: Clock, **retention: Any) -> Vault:
    return Vault(
        Config(
            backup_dir=site / "backup",
            cells=[Cell("crm", [site / "cells" / "crm"])],
            retention=RetentionPolicy(
                **{"keep_full_days": 7, "keep_incremental_days": 3, **retention}
            ),
            object_lock="governance",
        ),
        load_entry_points=False,
        clock=clock,
    )


def test_archives_are_immutable_and_prune_waits_then_deletes(site: Path) -> None:
    clock = Clock()
    vault = _vault(site, clock, keep_incremental_days=10)
    full = vault.backup(kind="full").cells[0].archive
    folder = site / "backup" / "crm"
    files = sorted(folder.glob(f"{full}*"))
    assert len(files) == 3 and all(is_immutable(p) for p in files)
    # lsattr, the stock tool, says so too; and not even root may delete or change one.
    shown = subprocess.run(["lsattr", str(files[0])], capture_output=True, text=True, check=True)
    assert "i" in shown.stdout.split()[0]
    with pytest.raises(PermissionError):
        files[0].unlink()
    with pytest.raises(PermissionError):
        files[0].open("ab")
    # The spool's copy is not the target's inode: the spool is emptied as usual.
    spool = site / "backup" / ".cellvault" / "spool"
    assert not any(p.is_file() for p in spool.rglob("*"))
    # An incremental, then a second full: the policy alone would delete the first
    # chain only after its days; a prune now keeps it, saying until when.
    (site / "cells" / "crm" / "b.txt").write_text("b\n")
    incr = vault.backup(kind="incremental").cells[0].archive
    # The chain rule: the full is kept as long as its incremental (10 days, not 7).
    incr_when = dt.datetime.strptime(incr[-15:], "%Y%m%d_%H%M%S").replace(tzinfo=dt.UTC)
    for path in folder.glob("cell_*"):
        kept = os.getxattr(path, "user.cellvault.retain_until").decode()
        assert dt.datetime.fromisoformat(kept) == incr_when + dt.timedelta(days=10), path
    report = _vault(site, clock, keep_full_days=None, keep_incremental_days=None, keep_last=1)
    newer = report.backup(kind="full").cells[0].archive
    pruned = report.prune()
    assert pruned.ok, pruned
    decisions = {str(d.id): d for d in pruned.results[0].decisions}
    for ident in (full, incr):
        assert decisions[ident].keep, decisions[ident]
        assert any(r.startswith("locked on the store until ") for r in decisions[ident].reasons)
    assert decisions[newer].keep
    assert all(p.exists() for p in files)
    # Once their date has passed (set back here, as root, for the test), the same prune
    # clears the attribute and deletes them.
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat().encode()
    for path in folder.glob("cell_*"):
        if not path.name.startswith(newer):
            set_immutable(path, False)
            os.setxattr(path, "user.cellvault.retain_until", past)
            set_immutable(path, True)
    short = _vault(site, clock, keep_full_days=None, keep_incremental_days=None, keep_last=1)
    gone = short.prune()
    assert gone.ok, gone
    assert sorted(str(d.id) for d in gone.results[0].removed) == [full, incr]
    assert not any(p.exists() for p in files)
    assert short.restore(into=site / "out", skip_prebackup=True).ok


def test_where_the_attribute_cannot_be_set_it_is_said_once(site: Path) -> None:
    # A process without CAP_LINUX_IMMUTABLE (a container's usual lot): two cells, one
    # target, one warning; the archives are stored, unprotected.
    require("setpriv")
    (site / "cells" / "billing").mkdir()
    (site / "cells" / "billing" / "b.txt").write_text("b\n")
    env = {
        **os.environ,
        "BACKUP_DIR": str(site / "backup"),
        "BACKUP_CELLS": "crm billing",
        "BACKUP_CELLS_ROOT": str(site / "cells"),
        "BACKUP_OBJECT_LOCK": "compliance",
    }
    drop = ["setpriv", "--bounding-set=-linux_immutable", "--inh-caps=-linux_immutable"]
    done = subprocess.run(
        [*drop, sys.executable, "-m", "cellvault", "backup"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("target.lock_unavailable") == 1, done.stderr
    assert "CAP_LINUX_IMMUTABLE" in done.stderr
    stored = list((site / "backup").rglob("cell_*.json"))
    assert len(stored) == 2 and not any(is_immutable(p) for p in stored)


def test_an_uncommitted_locked_copy_is_debris_that_a_later_run_clears(site: Path) -> None:
    vault = _vault(site, Clock())
    full = vault.backup(kind="full").cells[0].archive
    target = vault.targets[0]
    (sidecar,) = target.archives("crm")
    # What a backup does when the copy it just stored fails its check.
    target.uncommit(sidecar)
    assert target.archives("crm") == []
    debris = target.debris("crm")
    assert sorted(debris) == sorted(
        f"crm/{p.name}" for p in (site / "backup" / "crm").glob(f"{full}*")
    )
    assert all(is_immutable(site / "backup" / key) for key in debris)
    assert sorted(target.clear_debris("crm")) == sorted(debris)
    assert not list((site / "backup" / "crm").glob(f"{full}*"))


def test_rekey_leaves_a_locked_archive_whole_and_rekeys_it_once_its_date_has_passed(
    site: Path,
) -> None:
    require("age-keygen")
    keys = {}
    for name in ("old", "new"):
        path = site / f"{name}.key"
        subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
        keys[name] = (path, path.read_text().split("public key: ")[1].split()[0])

    def vault(recipient: str, **extra: Any) -> Vault:
        config = Config(
            backup_dir=site / "backup",
            cells=[Cell("crm", [site / "cells" / "crm"])],
            retention=RetentionPolicy(keep_full_days=7),
            object_lock="governance",
            encrypt_recipients=(recipient,),
            **extra,
        )
        return Vault(config, load_entry_points=False, clock=Clock())

    archive = vault(keys["old"][1]).backup(kind="full").cells[0].archive
    folder = site / "backup" / "crm"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    rotated = vault(keys["new"][1], age_identity=keys["old"][0])
    report = rotated.rekey()
    assert not report.ok
    (result,) = report.results
    assert (result.archive, result.outcome) == (archive, "locked")
    assert "under object lock until " in (result.error or "")
    assert "keep the old identity until that date, then run rekey again" in (result.error or "")
    # Nothing written, nothing left behind: the same files, still immutable.
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert all(is_immutable(folder / name) for name in before)
    assert not any(p.is_file() for p in (site / "backup" / ".cellvault" / "spool").rglob("*"))
    # Once its date has passed (set back here, as root), rekey clears the attribute
    # itself and rewrites the archive, which the new identity alone then restores.
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat().encode()
    for name in before:
        set_immutable(folder / name, False)
        os.setxattr(folder / name, "user.cellvault.retain_until", past)
        set_immutable(folder / name, True)
    again = rotated.rekey()
    assert again.ok and [r.outcome for r in again.results] == ["rekeyed"], again
    assert not (folder / f"{archive}.tar.zst.age").exists()
    only_new = vault(keys["new"][1], age_identity=keys["new"][0])
    assert only_new.restore(into=site / "out", skip_prebackup=True).ok
    assert (site / "out" / "crm" / "crm" / "a.txt").read_text() == "a\n"
