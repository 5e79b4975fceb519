"""The packer's walk: string paths, exclusions compiled once, unchanged entries kept."""

from __future__ import annotations

import os
import random
import socket
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pytest

import cellvault.readahead as readahead
from cellvault import Cell, Manifest, Vault
from cellvault.cell import excluder as _excluder
from cellvault.cell import is_excluded
from tests.system_tools import needs_root, unavailable

from .archive_helpers import archive_files, make_vault, read_members

PATTERNS = [
    "*.tmp",
    "cache",
    "cache/",
    "logs/*.gz",
    "/logs/*.gz",
    "a/b/c",
    "[ab]?",
    "*",
    "**/x",
    "é*",
    "",
    "/",
    "sub/",
    "d*/e*/f*",
    "[!a]*.log",
]


def random_rel(rnd: random.Random) -> str:
    parts = rnd.choices(
        ["logs", "cache", "a", "b", "c", "x.tmp", "y.gz", "é1", "ab", "sub", "d1", "e2", "f3"],
        k=rnd.randrange(1, 5),
    )
    return "/".join(parts)


@pytest.mark.parametrize("patterns", [[p] for p in PATTERNS] + [PATTERNS, PATTERNS[:5]])
def test_compiled_exclusions_agree_with_is_excluded(patterns: list[str]) -> None:
    cell = Cell("crm", ["/srv/crm"], exclude=tuple(patterns))
    excludes = _excluder(cell)
    assert excludes is not None
    rnd = random.Random(len(patterns))
    for _ in range(500):
        rel = random_rel(rnd)
        path = PurePosixPath(rel)
        assert excludes(rel, path.name) == is_excluded(path, cell.exclude), (rel, patterns)


def test_a_cell_with_its_own_exclusion_rules_is_asked(tmp_path: Path) -> None:
    @attrs.frozen
    class Picky(Cell):
        def excludes(self, relpath: PurePosixPath) -> bool:
            return relpath.name.startswith("skip")

    cell = Picky("crm", [str(tmp_path)])  # no patterns: its rules still apply
    excludes = _excluder(cell)
    assert excludes is not None
    assert excludes("a/skip-me", "skip-me")
    assert not excludes("a/keep", "keep")
    assert _excluder(Cell("crm", [str(tmp_path)])) is None


def members_backed_up(tmp_path: Path, src: Path, exclude: list[str]) -> list[str]:
    """The member names of the one archive a backup of *src* with *exclude* makes."""
    vault = make_vault(tmp_path / "backup", [src], exclude=exclude)
    assert vault.backup().ok
    (data,) = archive_files(tmp_path / "backup")
    return [info.name for info, _ in read_members(data)]


def test_excluded_paths_are_not_walked(tmp_path: Path) -> None:
    src = tmp_path / "crm"
    (src / "logs").mkdir(parents=True)
    (src / "logs" / "old.gz").write_text("old")
    (src / "logs" / "now.log").write_text("now")
    (src / "cache" / "deep").mkdir(parents=True)
    (src / "cache" / "deep" / "x").write_text("x")
    (src / "keep.tmp.txt").write_text("kept")
    (src / "drop.tmp").write_text("dropped")
    assert members_backed_up(tmp_path, src, ["logs/*.gz", "cache", "*.tmp"]) == [
        "meta.json",
        "data/crm",
        "data/crm/keep.tmp.txt",
        "data/crm/logs",
        "data/crm/logs/now.log",
        "manifest.json",
    ]


def old_files(tmp_path: Path) -> tuple[Path, Vault]:
    """A cell of five small files modified long before any backup (not racy), and its vault."""
    src = tmp_path / "crm"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_text(str(i))
    old = 1_600_000_000 * 10**9  # long before the parent's scan: not racy
    for path in src.iterdir():
        os.utime(path, ns=(old, old))
    return src, make_vault(tmp_path / "backup", [src])


def manifests_of(backup_dir: Path) -> list[Manifest]:
    """The manifest inside each archive of cell crm, oldest first."""
    out = []
    for data in archive_files(backup_dir):
        members = dict((info.name, body) for info, body in read_members(data))
        out.append(Manifest.from_json(members["manifest.json"] or b""))
    return out


def test_unchanged_files_keep_the_parents_entries(tmp_path: Path) -> None:
    src, vault = old_files(tmp_path)
    full = vault.backup()
    assert full.ok
    (src / "f2").write_text("changed")
    inc = vault.backup(kind="incremental")
    assert inc.ok
    assert inc.cells[0].files == 1
    first, second = manifests_of(tmp_path / "backup")
    for i in (0, 1, 3, 4):
        name = f"data/crm/f{i}"
        entry = second.get(name)
        assert entry is not None
        assert entry == first.get(name)
        assert entry.archive == first.archive
    changed = second.get("data/crm/f2")
    assert changed is not None
    assert changed.archive == second.archive


def test_a_new_owner_alone_keeps_a_file_unchanged_under_its_new_owner(tmp_path: Path) -> None:
    needs_root("give a file another owner")
    src, vault = old_files(tmp_path)
    assert vault.backup().ok
    os.chown(src / "f1", 1234, 5678)  # both
    os.chown(src / "f3", 1234, -1)  # the user only
    os.chown(src / "f4", -1, 5678)  # the group only
    inc = vault.backup(kind="incremental")
    assert inc.ok
    assert inc.cells[0].files == 0  # no content stored again
    first, second = manifests_of(tmp_path / "backup")
    owners = {}
    for i in range(5):
        entry = second.get(f"data/crm/f{i}")
        assert entry is not None and entry.archive == first.archive
        owners[i] = (entry.uid, entry.gid)
    assert owners == {0: (0, 0), 1: (1234, 5678), 2: (0, 0), 3: (1234, 0), 4: (0, 5678)}


def test_a_socket_is_skipped_with_why(tmp_path: Path) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    (src / "kept").write_text("kept")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(src / "s"))
        report = make_vault(tmp_path / "backup", [src]).backup()
    finally:
        sock.close()
    assert report.ok
    assert report.cells[0].warnings == (
        f"{src}/s is a socket; skipped (a socket is made anew by the program that listens on it)",
    )
    (data,) = archive_files(tmp_path / "backup")
    assert "data/crm/s" not in [info.name for info, _ in read_members(data)]


def scandir_failing(monkeypatch: pytest.MonkeyPatch, where: Path, error: OSError) -> None:
    """os.scandir raises *error* for *where*, as the file system would."""
    real = os.scandir

    def scandir(path: Any = ".") -> Any:
        if not isinstance(path, int) and os.fspath(path) == str(where):
            raise error
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_a_folder_that_cannot_be_listed_fails_the_cell_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "crm"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "x").write_text("x")
    scandir_failing(monkeypatch, src / "locked", PermissionError(13, "Permission denied"))
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert not report.ok
    cell = report.cells[0]
    assert cell.error == (
        f"cell crm: cannot list {src}/locked: permission denied"
        " (run the backup as a user that can read the cell's data)"
    )
    assert vault.list() == []


def test_a_folder_gone_before_it_is_listed_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "crm"
    (src / "gone").mkdir(parents=True)
    (src / "later").mkdir()
    (src / "later" / "y").write_text("y")
    scandir_failing(monkeypatch, src / "gone", FileNotFoundError(2, "No such file or directory"))
    report = make_vault(tmp_path / "backup", [src]).backup()
    assert report.ok
    assert report.cells[0].warnings == (
        f"{src}/gone vanished during the scan; its contents are not in this archive",
    )
    (data,) = archive_files(tmp_path / "backup")
    names = [info.name for info, _ in read_members(data)]
    assert "data/crm/later/y" in names  # the rest of the cell is there


def test_files_around_an_excluded_one_go_to_the_readers_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Readers from the first file on: regular files go over in runs, and an excluded
    # name in the middle of a folder must not cut the run before it.
    monkeypatch.setattr(readahead, "FORK_MIN_FILES", 0)
    monkeypatch.setattr(readahead, "FORK_MAX_RSS", 1 << 62)
    src = tmp_path / "crm"
    src.mkdir()
    for name in ("a", "b", "c.tmp", "d", "e.tmp", "f"):
        (src / name).write_text(name)
    assert members_backed_up(tmp_path, src, ["*.tmp"]) == [
        "meta.json",
        "data/crm",
        "data/crm/a",
        "data/crm/b",
        "data/crm/d",
        "data/crm/f",
        "manifest.json",
    ]


def test_an_unchanged_file_with_attributes_is_unchanged_and_a_link_made_a_file_is_stored(
    tmp_path: Path,
) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    (src / "noted").write_text("noted")
    try:
        os.setxattr(src / "noted", "user.note", b"kept")
    except OSError:
        unavailable("this file system keeps no user.* attributes")
    (src / "was-link").symlink_to("noted")
    old = 1_600_000_000 * 10**9  # long before the parent's scan: not racy
    os.utime(src / "noted", ns=(old, old))
    os.utime(src / "was-link", ns=(old, old), follow_symlinks=False)
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    (src / "was-link").unlink()
    (src / "was-link").write_text("now a file")
    os.utime(src / "was-link", ns=(old, old))
    inc = vault.backup(kind="incremental")
    assert inc.ok
    assert inc.cells[0].files == 1  # the file that was a link; not the unchanged one
    first, second = manifests_of(tmp_path / "backup")
    noted = second.get("data/crm/noted")
    assert noted is not None and noted.archive == first.archive
    made = second.get("data/crm/was-link")
    assert made is not None and made.type == "file" and made.archive == second.archive


def test_a_root_that_is_a_file_and_hard_link_groups_are_walked_as_such(tmp_path: Path) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    (src / "a1").write_text("first group")
    os.link(src / "a1", src / "a2")
    (src / "b1").write_text("second group")
    os.link(src / "b1", src / "b2")
    single = tmp_path / "settings.conf"
    single.write_text("a root that is one file")
    vault = make_vault(tmp_path / "backup", [src, single])
    assert vault.backup().ok
    (data,) = archive_files(tmp_path / "backup")
    found = {info.name: (info.type, info.linkname, body) for info, body in read_members(data)}
    roots = [name for name in found if name.count("/") == 1]
    file_root = [name for name in roots if found[name][0] == tarfile.REGTYPE]
    assert len(file_root) == 1 and found[file_root[0]][2] == b"a root that is one file"
    dir_root = next(name for name in roots if found[name][0] == tarfile.DIRTYPE)
    # Each second name is a hard link to its own group's first, which holds the bytes.
    assert found[f"{dir_root}/a1"] == (tarfile.REGTYPE, "", b"first group")
    assert found[f"{dir_root}/a2"][:2] == (tarfile.LNKTYPE, f"{dir_root}/a1")
    assert found[f"{dir_root}/b1"] == (tarfile.REGTYPE, "", b"second group")
    assert found[f"{dir_root}/b2"][:2] == (tarfile.LNKTYPE, f"{dir_root}/b1")
