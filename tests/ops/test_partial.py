"""Restoring chosen paths: in place and --into, the rest of the live tree untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellvault import RestoreError, Vault
from cellvault.targets.base import Target
from tests.ops.test_incremental import age, make_vault, snapshot


def without(snap: dict[str, tuple], *paths: str) -> dict[str, tuple]:
    """*snap* without *paths*, what lies under them, and the mtimes of their parent folders."""
    out = {}
    parents = {p.rpartition("/")[0] for p in paths}
    for rel, value in snap.items():
        if any(rel == p or rel.startswith(p + "/") for p in paths):
            continue
        out[rel] = value[:2] if rel in parents else value
    return out


@pytest.fixture
def history(tmp_path: Path):
    """Four points of a cell with files, folders and links; returns (vault, live, ids, snaps)."""
    live = tmp_path / "crm"
    (live / "config").mkdir(parents=True)
    (live / "uploads" / "2025").mkdir(parents=True)
    (live / "config" / "app.yml").write_text("version: 1\n")
    (live / "config" / "db.yml").write_text("host: db\n")
    (live / "uploads" / "2025" / "a.bin").write_bytes(os.urandom(50_000))
    (live / "big.bin").write_bytes(os.urandom(300_000))
    (live / "current").symlink_to("uploads/2025")
    (live / "config" / "app.yml").chmod(0o640)
    age(live, 400)
    vault = make_vault(tmp_path, live)
    ids, snaps = [], []

    def point(kind: str) -> None:
        report = vault.backup(kind=kind)
        assert report.ok, report
        ids.append(report.cells[0].archive)
        snaps.append(snapshot(live))

    point("full")
    # Only what changed is aged (out of the racy window): the rest stays in older archives.
    (live / "uploads" / "2025" / "b.bin").write_bytes(b"second upload")
    age(live / "uploads" / "2025" / "b.bin", 300)
    point("incremental")
    (live / "config" / "app.yml").write_text("version: 2\n")
    (live / "current").unlink()
    (live / "current").symlink_to("config")
    age(live / "config" / "app.yml", 200)
    age(live / "current", 200)
    point("incremental")
    (live / "config" / "app.yml").unlink()
    (live / "uploads" / "2025" / "c.bin").write_bytes(b"third")
    (live / "uploads" / "2025" / "a.bin").write_bytes(b"overwritten")
    age(live / "uploads" / "2025" / "c.bin", 100)
    age(live / "uploads" / "2025" / "a.bin", 100)
    point("incremental")
    return vault, live, ids, snaps


def test_a_file_deleted_three_points_ago_comes_back_in_place(history, monkeypatch) -> None:
    vault, live, ids, snaps = history
    # Find it: the newest point that still had it.
    found = list(vault.find("crm", "app.yml"))
    assert [f.archive for f in found] == [ids[2], ids[1], ids[0]]
    before = snapshot(live)
    opened: list[str] = []
    real = Target.open_archive

    def spy(self: Target, sidecar):
        opened.append(str(sidecar.id))
        return real(self, sidecar)

    monkeypatch.setattr(Target, "open_archive", spy)
    report = vault.restore_paths("crm", "crm/config/app.yml", ids[2])
    assert report.ok, report
    # Only the archive that holds its bytes was read.
    assert opened == [ids[2]] and report.archives_read == (ids[2],)
    after = snapshot(live)
    assert after["config/app.yml"] == snaps[2]["config/app.yml"]
    assert without(after, "config/app.yml") == without(before, "config/app.yml")
    assert report.replaced_kept_in is None  # nothing was there
    assert not [p for p in live.parent.iterdir() if p.name.startswith(".cellvault-restore")]


def test_a_directory_is_replaced_whole_and_the_old_one_kept(history) -> None:
    vault, live, ids, snaps = history
    before = snapshot(live)
    report = vault.restore_paths("crm", [str(live / "uploads")], ids[1])
    assert report.ok, report
    assert report.paths == ("crm/uploads",)
    after = snapshot(live)
    restored = {k: v for k, v in after.items() if k.startswith("uploads")}
    assert restored == {k: v for k, v in snaps[1].items() if k.startswith("uploads")}
    assert without(after, "uploads") == without(before, "uploads")
    # a.bin is read from the full, b.bin from the first incremental: those two only.
    assert set(report.archives_read) == {ids[0], ids[1]}
    _, entries = vault.ls("crm", select=ids[1], path="crm/uploads")
    assert set(report.archives_read) == {e.archive for e in entries if e.type == "file"}
    kept = Path(report.replaced_kept_in or "")
    assert kept.parent == live.parent and kept.name.startswith(".cellvault-replaced-crm-")
    assert (kept / "crm" / "uploads" / "2025" / "c.bin").read_bytes() == b"third"


def test_links_and_globs(history) -> None:
    vault, live, ids, snaps = history
    before = snapshot(live)
    report = vault.restore_paths("crm", ["current", "crm/config/*.yml"], ids[0])
    assert report.ok, report
    assert report.paths == ("crm/config/app.yml", "crm/config/db.yml", "crm/current")
    after = snapshot(live)
    assert os.readlink(live / "current") == "uploads/2025"
    for rel in ("current", "config/app.yml", "config/db.yml"):
        assert after[rel] == snaps[0][rel]
    assert without(after, "current", "config/app.yml", "config/db.yml") == without(
        before, "current", "config/app.yml", "config/db.yml"
    )


def test_into_leaves_the_live_tree_alone(history, tmp_path: Path) -> None:
    vault, live, ids, snaps = history
    before = snapshot(live)
    out = tmp_path / "out"
    report = vault.restore_paths("crm", ["crm/config", "crm/current"], ids[2], into=out)
    assert report.ok, report
    assert snapshot(live) == before
    got = snapshot(out / "crm" / "crm")
    assert got["config/app.yml"] == snaps[2]["config/app.yml"]
    assert got["current"] == snaps[2]["current"]
    assert {k for k in got if not k.startswith("config/")} == {"config", "current"}


def test_nothing_matching_or_a_file_in_the_way_touches_nothing(history) -> None:
    vault, live, ids, _ = history
    before = snapshot(live)
    with pytest.raises(RestoreError, match="no path of archive"):
        vault.restore_paths("crm", "crm/nothing/*", ids[0])
    # A link where the archive had a folder: refused, nothing written through it.
    with pytest.raises(RestoreError, match="not a directory in the live tree"):
        _restore_under(vault, live, ids[0])
    assert snapshot(live) == before


def _restore_under(vault: Vault, live: Path, archive: str) -> None:
    # crm/uploads/2025/a.bin lies under crm/uploads; make crm/uploads a link first.
    target = live.parent / "elsewhere"
    target.mkdir()
    os.rename(live / "uploads", live.parent / "uploads-moved")
    (live / "uploads").symlink_to(target)
    try:
        vault.restore_paths("crm", "crm/uploads/2025/a.bin", archive)
    finally:
        assert list(target.iterdir()) == []
        (live / "uploads").unlink()
        os.rename(live.parent / "uploads-moved", live / "uploads")
        target.rmdir()


def test_damaged_archive_fails_and_leaves_everything(history) -> None:
    vault, live, ids, _ = history
    data = next(
        p for p in (live.parent / "backup").rglob(f"{ids[0]}.tar*") if "manifest" not in p.name
    )
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    before = snapshot(live)
    report = vault.restore_paths("crm", "crm/big.bin", ids[0])
    assert not report.ok and "left as it was" in (report.error or "")
    assert snapshot(live) == before
    assert not [p for p in live.parent.iterdir() if p.name.startswith(".cellvault-")]


def test_command_line(history) -> None:
    vault, live, ids, _ = history
    env = {
        **os.environ,
        "BACKUP_DIR": str(vault.config.backup_dir),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELL_CRM_PATHS": str(live),
    }
    cmd = [sys.executable, "-m", "cellvault", "restore", "--cell", "crm", "--date", ids[2]]
    done = subprocess.run(
        [*cmd, "--path", "crm/config/app.yml", "--json"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["paths"] == ["crm/config/app.yml"]
    assert (live / "config" / "app.yml").read_text() == "version: 2\n"
    no_cell = subprocess.run(
        [sys.executable, "-m", "cellvault", "restore", "--path", "x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert no_cell.returncode == 2 and "--cell" in no_cell.stderr
    dumps = subprocess.run(
        [*cmd, "--path", "x", "--no-dumps"], env=env, capture_output=True, text=True
    )
    assert dumps.returncode == 2 and "files only" in dumps.stderr


def test_the_rest_of_a_stream_is_skipped(tmp_path: Path) -> None:
    """A file near the start of a large archive: the archive is read only up to it."""
    live = tmp_path / "crm"
    live.mkdir()
    (live / "a.txt").write_text("first member")
    (live / "z.bin").write_bytes(os.urandom(16 << 20))
    age(live, 100)
    vault = make_vault(tmp_path, live)
    report = vault.backup(kind="full")
    assert report.ok, report
    size = vault.list()[0].size
    (live / "a.txt").unlink()
    before = snapshot(live)
    done = vault.restore_paths("crm", "a.txt")
    assert done.ok, done
    assert (live / "a.txt").read_text() == "first member"
    assert 0 < done.bytes_read < size // 2
    assert without(snapshot(live), "a.txt") == without(before, "a.txt")
