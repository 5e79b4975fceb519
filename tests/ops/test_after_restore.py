"""Incrementals that survive a restore, and hard-link groups across a chain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..archive_helpers import make_vault

#: Well before the (fake) backup clock: no file is "racy".
OLD_NS = 1_600_000_000 * 10**9


def _tree(src: Path, files: int = 20) -> None:
    (src / "sub").mkdir(parents=True)
    for i in range(files):
        (src / "sub" / f"f{i}.txt").write_text(f"file {i}\n")
    (src / "group-a").write_text("one inode\n")
    os.link(src / "group-a", src / "sub" / "group-b")
    os.setxattr(src / "sub" / "f0.txt", "user.tag", b"x")
    _age(src)


def _age(src: Path) -> None:
    for dirpath, _dirs, names in os.walk(src):
        for name in names:
            os.utime(Path(dirpath, name), ns=(OLD_NS, OLD_NS), follow_symlinks=False)


def test_the_first_incremental_after_a_restore_stores_nothing_new(tmp_path: Path) -> None:
    src = tmp_path / "cells" / "crm"
    _tree(src)
    vault = make_vault(tmp_path / "backup", [src])
    full = vault.backup()
    assert full.ok
    restored = vault.restore(full.cells[0].archive, skip_prebackup=True)
    assert restored.ok, restored.cells[0].error
    assert os.stat(src / "group-a").st_ino == os.stat(src / "sub" / "group-b").st_ino

    after = vault.backup(kind="incremental")

    (cell,) = after.cells
    assert cell.ok, cell.error
    assert cell.kind == "incremental"
    assert cell.files == 0  # every inode is new; nothing else changed
    assert cell.bytes_read == 0


@pytest.mark.parametrize("checksum", [False, True], ids=["stat", "checksum"])
def test_an_extended_attribute_change_alone_stores_the_file_again(
    tmp_path: Path, checksum: bool
) -> None:
    src = tmp_path / "cells" / "crm"
    _tree(src)
    vault = make_vault(tmp_path / "backup", [src], checksum=checksum)
    assert vault.backup().ok
    os.setxattr(src / "sub" / "f1.txt", "user.tag", b"new")
    _age(src)
    after = vault.backup(kind="incremental")
    assert after.cells[0].files == 1
    out = vault.restore(after.cells[0].archive, into=tmp_path / "out")
    assert out.ok, out.cells[0].error
    assert os.getxattr(tmp_path / "out" / "crm" / "crm" / "sub" / "f1.txt", "user.tag") == b"new"


def test_hard_link_groups_survive_a_chain_of_incrementals(tmp_path: Path) -> None:
    src = tmp_path / "cells" / "crm"
    _tree(src)
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    # The group gains a name; its first name's bytes stay in the full archive.
    os.link(src / "group-a", src / "sub" / "group-c")
    (src / "sub" / "f3.txt").write_text("changed\n")
    _age(src)
    first = vault.backup(kind="incremental")
    assert first.ok
    (src / "sub" / "f4.txt").write_text("changed again\n")
    _age(src)
    second = vault.backup(kind="incremental")
    assert second.ok and second.cells[0].kind == "incremental"
    assert vault.verify().ok

    out = vault.restore(second.cells[0].archive, into=tmp_path / "out")

    assert out.ok, out.cells[0].error
    root = tmp_path / "out" / "crm" / "crm"
    inodes = {os.stat(root / p).st_ino for p in ("group-a", "sub/group-b", "sub/group-c")}
    assert len(inodes) == 1
    assert os.stat(root / "group-a").st_nlink == 3
    assert (root / "sub" / "group-c").read_text() == "one inode\n"
