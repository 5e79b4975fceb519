"""cellvault mount: every file of a point read through FUSE; the view and its bounded cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellvault import ConfigError
from cellvault.ops.mount import MemberCache, load_fuse, open_view
from tests.ops.test_incremental import ChainMachine, snapshot
from tests.system_tools import require, unavailable


@pytest.fixture
def walked():
    """The incremental tests' fixed walk: three points, files held across the chain."""
    machine = ChainMachine()
    machine.seed()
    machine.backup("full")
    machine.create(b"new file")
    machine.create(b"x" * 5000)
    machine.backup("incremental")
    (machine.live / "dir" / "b.bin").rename(machine.live / "moved.bin")
    (machine.live / "ln").symlink_to("moved.bin")
    machine.backup("incremental")
    yield machine
    shutil.rmtree(machine.tmp, ignore_errors=True)


def test_view_reads_every_file_of_every_point_with_a_bounded_cache(walked: ChainMachine) -> None:
    vault = walked.vault
    view = open_view(
        vault.config,
        vault._resources(),
        "crm",
        walked.tmp / "cache",
        select=None,
        cache_bytes=1000,
    )
    for archive, snap in walked.points:
        for rel, value in snap.items():
            path = f"/{archive}/crm/{rel}"
            attrs = view.attributes(path)
            if value[0] == "file":
                assert view.read(path, 1 << 20, 0) == value[2]
                assert attrs["st_size"] == len(value[2])
                # Bounded: never more than the limit, but for one file larger than it.
                assert view.cache.size <= max(1000, len(value[2]))
            elif value[0] == "symlink":
                assert view.lookup(path).target == value[1]
    assert sorted(view.children["/"]) == [a for a, _ in walked.points]
    with pytest.raises(FileNotFoundError):
        view.attributes("/nothing")


def test_cache_drops_the_least_recently_used(tmp_path: Path) -> None:
    cache = MemberCache(tmp_path, limit=10)
    paths = []
    for i in range(3):
        slot = cache.slot()
        slot.write_bytes(b"12345")
        cache.put(("a", str(i)), slot, 5)
        paths.append(slot)
    assert cache.size == 10 and not paths[0].exists()
    assert cache.get(("a", "0")) is None and cache.get(("a", "2")) == paths[2]


def _need_fuse() -> None:
    """FUSE's device, programs and binding, or :func:`unavailable` (a failure under CI=true).

    A missing /dev/fuse (a container started without --device /dev/fuse) cannot be
    installed: CI runs where it exists. A missing fuse3 package or mfusepy (the
    'mount' extra, in noxfile's TEST_EXTRAS) fails there like any dependency.
    """
    if not os.path.exists("/dev/fuse"):
        unavailable("/dev/fuse does not exist on this machine: FUSE cannot mount here")
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        unavailable(f"/dev/fuse exists but cannot be opened here ({exc}): FUSE cannot mount")
    require("fusermount3")
    try:
        load_fuse()
    except ConfigError as exc:
        unavailable(exc.message)


def test_mount_shows_every_file_of_a_point(walked: ChainMachine) -> None:
    _need_fuse()  # the view itself is tested above, without FUSE
    archive, expected = walked.points[1]
    mnt = walked.tmp / "mnt"
    mnt.mkdir()
    env = {
        **os.environ,
        "BACKUP_DIR": str(walked.tmp / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELL_CRM_PATHS": str(walked.live),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellvault", "mount", "crm", str(mnt), "--date", archive],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):
            if os.path.ismount(mnt) or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert os.path.ismount(mnt), (
            proc.stderr.read() if proc.poll() is not None else "not mounted"
        )
        got = snapshot(mnt / "crm")
        want = {
            rel: (v[0], v[1] & 0o7555, *v[2:]) if v[0] in ("file", "dir") else v
            for rel, v in expected.items()
        }
        assert got == want
        with pytest.raises(OSError):
            (mnt / "crm" / "new").write_text("no")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    assert not list((walked.tmp / "backup" / ".cellvault" / "spool").glob("mount-*"))


def test_mount_without_fuse_says_what_is_missing(walked: ChainMachine, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BACKUP_DIR": str(walked.tmp / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELL_CRM_PATHS": str(walked.live),
        # mfusepy finds libfuse through FUSE_LIBRARY_PATH: point it at nothing.
        "FUSE_LIBRARY_PATH": str(tmp_path / "no-libfuse.so"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "cellvault", "mount", "crm", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "libfuse" in done.stderr or "mfusepy" in done.stderr or "/dev/fuse" in done.stderr
    assert "Traceback" not in done.stderr
