"""The staging tree's folder descriptors and what files are made with, rule by rule.

:class:`DirFds` keeps open the chain of folders down to the last one asked
for, so that files of one folder share it; it must give the right folder
every time, make missing ones private, refuse a link on the way with the
whole message, and close all it opened. The umask and owner a staging
tree makes files with decide whether a restored file needs a chmod or chown.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from cellvault import UnsafeArchive
from cellvault.extract import dirfds, stage
from tests.archive_helpers import dir_entry, file_entry, member
from tests.system_tools import needs_root, require

from .test_stage import open_fds, staged
from .test_tarread import ARCHIVE, DATA, blocks, folder

#: Files get their modes and owners whoever creates them: this process, or the forked writer.
pytestmark = pytest.mark.usefixtures("who_writes")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for rel in ("a/b/c", "a/d", "e"):
        (root / rel).mkdir(parents=True)
    return root


@pytest.fixture(params=[True, False], ids=["openat2", "fallback"])
def openat2(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    if not request.param:
        monkeypatch.setattr(dirfds.openat2, "works", False)
    yield request.param


def test_each_folder_asked_for_is_that_folder_and_the_chain_is_closed_after(tree: Path) -> None:
    before = open_fds()
    dirs = stage.DirFds(str(tree), ARCHIVE)
    for rel in ["a/b/c", "a/b/c", "a/b", "a/d", "a", "", "e", "a/b/c", "a/d", "e", ""]:
        fd = dirs.fd(rel)
        assert os.path.samestat(os.fstat(fd), os.stat(tree / rel)), rel
    # The same folder twice in a row: the same descriptor, not a new one.
    assert dirs.fd("a/d") == dirs.fd("a/d")
    # Open: the root and the chain down to the last folder, no more.
    dirs.fd("a/b/c")
    assert len(open_fds() - before) == 1 + 3
    dirs.fd("e")
    assert len(open_fds() - before) == 1 + 1
    dirs.close()
    assert open_fds() == before


def test_a_missing_folder_is_made_private_or_not_at_all(tree: Path) -> None:
    dirs = stage.DirFds(str(tree), ARCHIVE)
    try:
        fd = dirs.fd("a/new/deeper")
        assert os.path.samestat(os.fstat(fd), os.stat(tree / "a" / "new" / "deeper"))
        for made in (tree / "a" / "new", tree / "a" / "new" / "deeper"):
            assert stat.S_IMODE(made.stat().st_mode) == 0o700 & ~_umask()
        with pytest.raises(FileNotFoundError):
            dirs.fd("a/absent", create=False)
        assert not (tree / "a" / "absent").exists()
        with pytest.raises(FileNotFoundError):
            dirs.open("a/absent")
        # Asked again after a failure, the chain is whole again.
        assert os.path.samestat(os.fstat(dirs.fd("a/b")), os.stat(tree / "a" / "b"))
    finally:
        dirs.close()


def test_open_gives_a_descriptor_of_its_own(tree: Path, openat2: bool) -> None:
    before = open_fds()
    dirs = stage.DirFds(str(tree), ARCHIVE)
    kept = dirs.fd("a/b")
    for rel in ("a/b/c", "a", ""):
        fd = dirs.open(rel)
        assert fd != kept and fd != dirs.root
        assert os.path.samestat(os.fstat(fd), os.stat(tree / rel))
        os.close(fd)
    assert os.path.samestat(os.fstat(kept), os.stat(tree / "a" / "b"))  # still open
    dirs.close()
    assert open_fds() == before


def _swapped_message(path: str) -> str:
    return (
        f"{path} is no longer a directory of the staging tree (replaced by a link or a "
        "file while the restore ran); nothing was written through it"
    )


@pytest.mark.parametrize("by", ["link", "file"])
def test_a_folder_replaced_is_refused_with_the_whole_message(
    tree: Path, openat2: bool, by: str
) -> None:
    outside = tree.parent / "outside"
    (outside / "c").mkdir(parents=True)
    shutil.rmtree(tree / "a" / "b")
    if by == "link":
        (tree / "a" / "b").symlink_to(outside)
    else:
        (tree / "a" / "b").write_bytes(b"")
    before = open_fds()
    dirs = stage.DirFds(str(tree), ARCHIVE)
    for how, rel in (("open", "a/b/c"), ("fd", "a/b/c"), ("fd", "a/b")):
        with pytest.raises(UnsafeArchive) as info:
            getattr(dirs, how)(rel)
        assert info.value.detail == _swapped_message("a/b")
        assert info.value.archive == ARCHIVE
        assert info.value.hint == "find what changes the staging directory, then restore again"
        assert info.value.__cause__ is None and info.value.__suppress_context__
    dirs.close()
    assert open_fds() == before  # what the failed walks opened is closed too
    assert sorted(p.name for p in outside.iterdir()) == ["c"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077, 0])
def test_the_creation_umask_is_the_processes(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert stage._creation_umask(fd) == mask
    finally:
        os.close(fd)
        os.umask(old)


def test_a_default_acl_replaces_the_umask(tmp_path: Path) -> None:
    require("setfacl")
    subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::rx,o::-", str(tmp_path)], check=True)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert stage._creation_umask(fd) is None
    finally:
        os.close(fd)


def test_the_creation_owner_is_the_processes_unless_a_folder_hands_down_its_group(
    tmp_path: Path,
) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert stage._creation_owner(fd) == (os.geteuid(), os.getegid())
        os.chmod(tmp_path, 0o2755)  # noqa: S103 - the test of it
        assert stage._creation_owner(fd) is None
    finally:
        os.close(fd)


# 022, 070 and 007: bits a umask takes away and nothing else, so that a file made with
# its mode differs from its mode exactly where the umask says.
MODES = [0o644, 0o666, 0o777, 0o600, 0o640, 0o400, 0o000, 0o755, 0o4755, 0o2750, 0o1777]
MODES += [0o022, 0o070, 0o007]


def _restore_every_mode(where: Path) -> None:
    """Restore a file of each of MODES into a staging tree below *where*; each has its mode."""
    names = [f"data/crm/m{mode:o}" for mode in MODES]
    middle = folder() + b"".join(
        blocks(*member(name, DATA, mode=mode)) for name, mode in zip(names, MODES, strict=True)
    )
    entries = [dir_entry("data/crm")] + [
        file_entry(name, DATA, ARCHIVE, mode=mode) for name, mode in zip(names, MODES, strict=True)
    ]
    tree, stream = staged(middle, entries, where)
    tree.prepare()
    tree.take(stream)
    tree.finish()
    for name, mode in zip(names, MODES, strict=True):
        path = where / "staging" / name.removeprefix("data/")
        assert stat.S_IMODE(path.stat().st_mode) == mode, name


@pytest.mark.parametrize("mask", [0o022, 0o077, 0])
def test_every_file_gets_its_mode_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        _restore_every_mode(tmp_path)
    finally:
        os.umask(old)


def test_as_root_files_get_their_owner_in_a_plain_or_a_group_handing_folder(
    tmp_path: Path,
) -> None:
    needs_root("give files another owner")
    owners = [(0, 0), (1234, 0), (0, 4321), (1234, 4321)]
    names = [f"data/crm/o{uid}_{gid}" for uid, gid in owners]
    middle = folder() + b"".join(blocks(*member(name, DATA)) for name in names)
    entries = [dir_entry("data/crm")]
    for name, (uid, gid) in zip(names, owners, strict=True):
        entries.append(attrs.evolve(file_entry(name, DATA, ARCHIVE), uid=uid, gid=gid))
    for handing in (False, True):
        where = tmp_path / ("sgid" if handing else "plain")
        where.mkdir()
        if handing:
            os.chown(where, 0, 555)
            os.chmod(where, 0o2755)  # noqa: S103 - the test of it
        tree, stream = staged(middle, entries, where)
        tree.prepare()
        tree.take(stream)
        tree.finish()
        for name, (uid, gid) in zip(names, owners, strict=True):
            st = (where / "staging" / name.removeprefix("data/")).stat()
            assert (st.st_uid, st.st_gid) == (uid, gid), (handing, name)


def test_every_file_gets_its_mode_below_a_default_acl(tmp_path: Path) -> None:
    """A default ACL above replaces the umask: each file is then chmod-ed to its mode."""
    require("setfacl")
    subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::rx,o::-", str(tmp_path)], check=True)
    _restore_every_mode(tmp_path)


@pytest.mark.parametrize("rel", ["..", "a/..", "a/../e", ".", "a/./b", "a//b", "a/", "/a"])
def test_a_folder_path_is_walked_down_only(tree: Path, openat2: bool, rel: str) -> None:
    """No checked name holds '..', '.' or an empty part; a path that does is refused, not walked."""
    dirs = stage.DirFds(str(tree), ARCHIVE)
    try:
        for how in ("fd", "open"):
            with pytest.raises(UnsafeArchive) as info:
                getattr(dirs, how)(rel)
            assert info.value.detail == (
                f"folder path {rel!r} has '..', '.' or empty components; refused"
            )
            assert info.value.archive == ARCHIVE
    finally:
        dirs.close()
    assert sorted(p.name for p in tree.iterdir()) == ["a", "e"]


def test_as_root_dump_files_get_their_owner_in_a_group_handing_dumps_folder(
    tmp_path: Path,
) -> None:
    """The dumps folder outside the staging tree may hand down its group: its files are chown-ed."""
    needs_root("give files another owner")
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 0, 555)
    os.chmod(out, 0o2755)  # noqa: S103 - the test of it
    sql = b"create table t (x int);\n"
    entries = [
        dir_entry("data/crm"),
        dir_entry("dumps", mode=0o750),
        dir_entry("dumps/pg", mode=0o700),
        file_entry("dumps/pg/db.sql", sql, ARCHIVE, mode=0o600),
        attrs.evolve(file_entry("dumps/pg/other.sql", sql, ARCHIVE), uid=1234, gid=4321),
    ]
    middle = (
        folder()
        + blocks(*member("dumps/pg", kind=tarfile.DIRTYPE, mode=0o700))
        + blocks(*member("dumps/pg/db.sql", sql, mode=0o600))
        + blocks(*member("dumps/pg/other.sql", sql))
    )
    tree, stream = staged(middle, entries, tmp_path, dumps=out / "crm" / "dumps")
    tree.prepare()
    tree.take(stream)
    tree.finish()
    for name, owner in (("db.sql", (0, 0)), ("other.sql", (1234, 4321))):
        st = (out / "crm" / "dumps" / "pg" / name).stat()
        assert (st.st_uid, st.st_gid) == owner, name
