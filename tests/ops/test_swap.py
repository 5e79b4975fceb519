"""Swap's own rules, on the file system: a rollback that cannot put old data back keeps it."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellvault import swap as swap_module
from cellvault.errors import RestoreError
from cellvault.swap import Swap, read_owner
from cellvault.tool import run_tool
from tests.helpers import write_tree
from tests.system_tools import needs_root, require, unavailable


def committed(tmp_path: Path) -> tuple[Swap, Path, Path]:
    """A swap of one root, committed: the new tree live, the old one where the staged was."""
    live = write_tree(tmp_path / "srv" / "app", {"config.yaml": "old\n"})
    swap = Swap.create({"app": live}, "cell_crm_20250101_020000")
    write_tree(swap.staging / "app", {"config.yaml": "new\n"})
    swap.place()
    swap.commit()
    old = swap.placed["app"]
    assert ((live / "config.yaml").read_text(), (old / "config.yaml").read_text()) == (
        "new\n",
        "old\n",
    )
    return swap, live, old


def test_a_rollback_puts_the_old_data_back_and_cleans_up(tmp_path: Path) -> None:
    swap, live, _ = committed(tmp_path)
    assert swap.rollback() == {}
    assert (live / "config.yaml").read_text() == "old\n"
    swap.cleanup()
    assert sorted(p.name for p in live.parent.iterdir()) == ["app"]


def test_a_rollback_that_cannot_put_the_old_data_back_keeps_it_and_says_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    swap, live, old = committed(tmp_path)
    live.rename(tmp_path / "moved")  # the destination went away: the exchange back fails
    caplog.set_level(logging.ERROR, logger="cellvault.swap")
    assert swap.rollback() == {"app": old}
    assert swap.stranded == {"app": old}
    (record,) = [r.msg for r in caplog.records if r.name == "cellvault.swap"]
    assert isinstance(record, dict)
    assert record["event"] == "restore.rollback_failed"
    assert (record["destination"], record["kept"]) == (str(live), str(old))
    assert "No such file or directory" in record["error"]
    # Nothing deletes the stranded old data: not the clean-up, not a discard.
    swap.cleanup()
    swap.discard()
    assert (old / "config.yaml").read_text() == "old\n"
    assert [p.name for p in old.parent.iterdir()] == [old.name]


def test_on_linux_the_exchange_is_one_renameat2_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The C library is loaded afresh, as by a new process.
    monkeypatch.setattr(swap_module, "_libc", None)
    tree = write_tree(tmp_path / "tree", {"f": "a folder\n"})
    (tmp_path / "file").write_text("a file\n")
    assert swap_module._renameat2(tree, tmp_path / "file") is True
    assert (tmp_path / "file" / "f").read_text() == "a folder\n"
    assert (tmp_path / "tree").read_text() == "a file\n"
    # A failure other than "the file system cannot" is an error, with its errno: the
    # call's own, not a stale one ctypes kept from an earlier call of this thread (or
    # of the process this one was forked from).
    ctypes.set_errno(errno.EBUSY)
    with pytest.raises(FileNotFoundError) as info:
        swap_module._renameat2(tmp_path / "tree", tmp_path / "missing")
    assert (info.value.errno, info.value.strerror) == (errno.ENOENT, os.strerror(errno.ENOENT))
    assert info.value.filename == str(tmp_path / "missing")


def test_without_renameat2_three_renames_swap_and_undo_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A C library without renameat2 (musl before 1.2.3, another kernel): the fallback.
    monkeypatch.setattr(swap_module, "_libc", False)
    tree = write_tree(tmp_path / "tree", {"f": "a folder\n"})
    (tmp_path / "file").write_text("a file\n")
    swap_module.exchange(tree, tmp_path / "file")
    assert (tmp_path / "file" / "f").read_text() == "a folder\n"
    assert (tmp_path / "tree").read_text() == "a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "tree"]
    # When the second rename fails, the first is undone: both entries as they were.
    with pytest.raises(FileNotFoundError):
        swap_module.exchange(tmp_path / "missing", tmp_path / "file")
    assert (tmp_path / "file" / "f").read_text() == "a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "tree"]


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than *tmp_path* (/dev/shm)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        unavailable("needs /dev/shm on a file system of its own")
    folder = Path(tempfile.mkdtemp(dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_a_root_on_another_file_system_is_copied_beside_it_and_named_first(
    tmp_path: Path, other_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = write_tree(tmp_path / "srv" / "app", {"config.yaml": "old\n"})
    far = write_tree(other_fs / "data", {"big.bin": "old data\n"})
    logs = other_fs / "logs"  # not there yet
    swap = Swap.create(
        {"app": local, "data": far, "logs": logs}, "cell_crm_20250101_020000", cell="crm"
    )
    write_tree(swap.staging / "app", {"config.yaml": "new\n"})
    write_tree(swap.staging / "data", {"big.bin": "new data\n"})
    write_tree(swap.staging / "logs", {"a.log": "new log\n"})
    calls: list[dict[str, object]] = []

    def seen(argv: list[str], **kwargs: Any) -> Any:
        calls.append(kwargs)
        return run_tool(argv, **kwargs)

    monkeypatch.setattr(swap_module, "run_tool", seen)
    swap.place()
    near = swap.placed["data"]
    assert near.parent == other_fs and near.name.startswith(".cellvault-restore-data-")
    assert (near / "big.bin").read_text() == "new data\n"
    assert swap.placed["app"] == swap.staging / "app"
    assert sorted(p.name for p in swap.staging.iterdir()) == ["app"]  # the copied roots moved out
    # Each copy is named in the owner file (written before it was made).
    copies = [str(swap.placed["data"]), str(swap.placed["logs"])]
    assert read_owner(swap.staging)["copies"] == copies  # type: ignore[index]
    # A big tree's copy is not cut short by the tools' time limit.
    assert [c["timeout"] for c in calls] == [None, None]
    swap.commit()
    assert (far / "big.bin").read_text() == "new data\n"
    assert (logs / "a.log").read_text() == "new log\n"
    assert (near / "big.bin").read_text() == "old data\n"
    swap.cleanup()
    assert sorted(p.name for p in other_fs.iterdir()) == ["data", "logs"]
    assert sorted(p.name for p in local.parent.iterdir()) == ["app"]


def across_file_systems(tmp_path: Path, other_fs: Path) -> tuple[Path, Path, Swap]:
    """Live roots app (here) and data (on another file system), and a swap with app staged."""
    local = write_tree(tmp_path / "srv" / "app", {"config.yaml": "old\n"})
    far = write_tree(other_fs / "data", {"big.bin": "old data\n"})
    swap = Swap.create({"app": local, "data": far}, "cell_crm_20250101_020000", cell="crm")
    write_tree(swap.staging / "app", {"config.yaml": "new\n"})
    return local, far, swap


def test_a_copy_to_another_file_system_that_fails_leaves_nothing_there(
    tmp_path: Path, other_fs: Path
) -> None:
    local, far, swap = across_file_systems(tmp_path, other_fs)
    # Nothing staged for "data": cp fails.
    with pytest.raises(RestoreError) as info:
        swap.place()
    assert info.value.message.startswith(
        f"copying the staged tree to {other_fs}: failed with exit code 1: cp: cannot stat"
    )
    assert (
        info.value.hint == "check the free space and permissions of the destination's file system"
    )
    assert sorted(p.name for p in other_fs.iterdir()) == ["data"]
    assert (far / "big.bin").read_text() == "old data\n"
    (copy,) = read_owner(swap.staging)["copies"]  # type: ignore[index]
    assert Path(copy).parent == other_fs
    swap.discard()
    assert sorted(p.name for p in local.parent.iterdir()) == ["app"]


def test_a_commit_says_each_root_it_swapped_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = write_tree(tmp_path / "srv" / "app", {"config.yaml": "old\n"})
    new = tmp_path / "srv" / "new"
    swap = Swap.create({"app": live, "new": new}, "cell_crm_20250101_020000")
    write_tree(swap.staging / "app", {"config.yaml": "new\n"})
    write_tree(swap.staging / "new", {"f": "new\n"})
    swap.place()
    caplog.set_level(logging.INFO, logger="cellvault.swap")
    roots: list[str] = []
    swap.commit(on_root=roots.append)
    swapped = [r.msg for r in caplog.records if r.name == "cellvault.swap"]
    assert [(m["event"], m["destination"]) for m in swapped] == [  # type: ignore[index]
        ("restore.swapped", str(live)),
        ("restore.swapped", str(new)),
    ]
    assert roots == ["app", "new"]
    assert swap.done == [("app", True), ("new", False)]
    swap.cleanup()


def test_an_owner_file_that_is_not_an_owner_s_object_says_nothing(tmp_path: Path) -> None:
    staging = tmp_path / ".cellvault-restore-cell_crm_20250101_020000-0123abcd"
    assert read_owner(staging) is None  # none
    for raw in ('{"cell": "crm"', '["crm"]', '"crm"'):
        swap_module.owner_path(staging).write_text(raw)
        assert read_owner(staging) is None, raw
    swap_module.owner_path(staging).write_text('{"cell": "crm"}')
    assert read_owner(staging) == {"cell": "crm"}


def test_roots_that_are_a_file_and_a_link_on_another_file_system_leave_nothing_behind(
    tmp_path: Path, other_fs: Path
) -> None:
    local = write_tree(tmp_path / "srv" / "app", {"config.yaml": "old\n"})
    conf = other_fs / "app.conf"
    conf.write_text("old\n")
    link = other_fs / "current"
    link.symlink_to("releases/1")
    swap = Swap.create(
        {"app": local, "conf": conf, "link": link}, "cell_crm_20250101_020000", cell="crm"
    )
    write_tree(swap.staging / "app", {"config.yaml": "new\n"})
    (swap.staging / "conf").write_text("new\n")
    (swap.staging / "link").symlink_to("releases/2")
    swap.place()
    swap.commit()
    assert (conf.read_text(), os.readlink(link)) == ("new\n", "releases/2")
    swap.cleanup()
    assert sorted(p.name for p in other_fs.iterdir()) == ["app.conf", "current"]
    assert sorted(p.name for p in local.parent.iterdir()) == ["app"]


def test_old_data_that_cannot_be_removed_does_not_fail_the_clean_up(tmp_path: Path) -> None:
    """The swap is done: a file of the old data that refuses removal (immutable) stays, no error."""
    needs_root("make a file immutable")
    require("chattr")
    swap, live, old = committed(tmp_path)
    stuck = old / "stuck.txt"
    stuck.write_text("immutable\n")
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, check=False).returncode:
        unavailable("the file system of the temporary folder has no immutable flag")
    try:
        swap.cleanup()
        assert [p.name for p in old.iterdir()] == ["stuck.txt"]  # the rest is gone
        assert (live / "config.yaml").read_text() == "new\n"
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)


def test_the_folders_of_a_new_destination_are_made(tmp_path: Path) -> None:
    live = write_tree(tmp_path / "srv" / "app", {"config.yaml": "old\n"})
    deep = tmp_path / "var" / "lib" / "cell" / "data"
    swap = Swap.create({"app": live, "data": deep}, "cell_crm_20250101_020000")
    write_tree(swap.staging / "app", {"config.yaml": "new\n"})
    write_tree(swap.staging / "data", {"f": "new\n"})
    swap.place()
    swap.commit()
    assert (deep / "f").read_text() == "new\n"
    swap.cleanup()


def test_the_owner_file_says_who_made_the_staging_before_it_is_made(tmp_path: Path) -> None:
    live = write_tree(tmp_path / "srv" / "app", {"config.yaml": "old\n"})
    swap = Swap.create({"app": live}, "cell_crm_20250101_020000", cell="crm", in_place=True)
    assert swap.staging.parent == live.parent and swap.staging.is_dir()
    assert swap.staging.stat().st_mode & 0o777 == 0o700  # the restore's own, until swapped in
    assert swap.staging in swap_module.HELD  # held by this process (a running restore)
    assert (
        read_owner(swap.staging)
        == swap.owner
        == {
            "cell": "crm",
            "archive": "cell_crm_20250101_020000",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "copies": [],
            "in_place": True,
        }
    )
    swap.discard()
    assert read_owner(swap.staging) is None
    assert swap.staging not in swap_module.HELD
    assert sorted(p.name for p in live.parent.iterdir()) == ["app"]
    with pytest.raises(ValueError, match=r"^a swap needs a destination or a place to stage near$"):
        Swap.create({}, "cell_crm_20250101_020000")


def test_old_data_stranded_beside_another_file_system_is_kept_by_the_clean_up(
    tmp_path: Path, other_fs: Path
) -> None:
    local, far, swap = across_file_systems(tmp_path, other_fs)
    write_tree(swap.staging / "data", {"big.bin": "new data\n"})
    swap.place()
    near = swap.placed["data"]
    assert near.parent == other_fs
    swap.commit()
    far.rename(other_fs / "moved")  # the exchange back of data fails; app's succeeds
    assert swap.rollback() == {"data": near}
    assert (local / "config.yaml").read_text() == "old\n"
    swap.cleanup()
    # The old data of data, beside it on its own file system, is still there; the rest is gone.
    assert (near / "big.bin").read_text() == "old data\n"
    assert sorted(p.name for p in other_fs.iterdir()) == sorted(["moved", near.name])
    assert sorted(p.name for p in local.parent.iterdir()) == ["app"]


def test_a_clean_up_keeps_stranded_old_data_in_the_staging_and_removes_the_rest(
    tmp_path: Path,
) -> None:
    app = write_tree(tmp_path / "srv" / "app", {"config.yaml": "old app\n"})
    web = write_tree(tmp_path / "srv" / "web", {"index.html": "old web\n"})
    swap = Swap.create({"app": app, "web": web}, "cell_crm_20250101_020000")
    write_tree(swap.staging / "app", {"config.yaml": "new app\n"})
    write_tree(swap.staging / "web", {"index.html": "new web\n"})
    swap.place()
    swap.commit()
    app.rename(tmp_path / "srv" / "moved")  # app's exchange back fails; web's succeeds
    assert swap.rollback() == {"app": swap.staging / "app"}
    assert (web / "index.html").read_text() == "old web\n"
    swap.cleanup()
    # Only the stranded old data of app stays in the staging; web's new tree is removed.
    assert [p.name for p in swap.staging.iterdir()] == ["app"]
    assert (swap.staging / "app" / "config.yaml").read_text() == "old app\n"


def test_a_staging_that_cannot_be_made_leaves_no_owner_file_and_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = write_tree(tmp_path / "srv" / "app", {"config.yaml": "old\n"})
    monkeypatch.setattr(swap_module.secrets, "token_hex", lambda n: "f" * (2 * n))
    taken = live.parent / ".cellvault-restore-cell_crm_20250101_020000-ffffffff"
    taken.write_text("someone else's file\n")  # the staging's name is taken
    held = set(swap_module.HELD)
    with pytest.raises(FileExistsError):
        Swap.create({"app": live}, "cell_crm_20250101_020000", cell="crm")
    assert held == swap_module.HELD
    assert sorted(p.name for p in live.parent.iterdir()) == sorted(["app", taken.name])
    assert taken.read_text() == "someone else's file\n"
