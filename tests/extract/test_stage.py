"""The staging tree's own rules, on hand-made archives: what is missing, what is left, what is refused.

:class:`StagedTree` counts the files each archive of a chain holds, names
those no archive held, refuses a manifest that puts a path below a file, and
says in one warning what the restoring process could not set.
"""

from __future__ import annotations

import base64
import errno
import io
import logging
import os
import stat
import tarfile
from pathlib import Path

import attrs
import pytest

from cellvault import ArchiveCorrupt, UnsafeArchive
from cellvault.extract import ArchiveStream, StagedTree, dirfds
from cellvault.manifest import SPECIAL_TYPES, Entry, Manifest
from tests.archive_helpers import dir_entry, file_entry, hardlink_entry, link_entry, member
from tests.system_tools import needs_root

from .test_tarread import ARCHIVE, DATA, archive_bytes, blocks, folder

#: An archive earlier in the chain, never read here.
OLDER = "cell_crm_20210101_000000"

#: Every rule holds whoever creates the small files (this process, or the forked
#: writers) and however the end of the tree finds its folders and links.
pytestmark = pytest.mark.usefixtures("who_writes", "others_noted")


def staged(
    middle: bytes, entries: list[Entry], tmp_path: Path, **kwargs: object
) -> tuple[StagedTree, ArchiveStream]:
    raw, sidecar, manifest = archive_bytes(middle, entries)
    tree = StagedTree(staging=tmp_path / "staging", manifest=manifest, archive=ARCHIVE, **kwargs)  # type: ignore[arg-type]
    return tree, ArchiveStream(io.BytesIO(raw), sidecar, "t")


def test_the_archives_left_to_read_are_those_with_files_not_yet_written(tmp_path: Path) -> None:
    entries = [
        dir_entry("data/crm"),
        file_entry("data/crm/f", DATA, ARCHIVE),
        file_entry("data/crm/old", DATA, OLDER),
    ]
    tree, stream = staged(folder() + blocks(*member("data/crm/f", DATA)), entries, tmp_path)
    tree.prepare()
    assert tree.holders() == {ARCHIVE, OLDER}
    tree.take(stream)
    assert tree.holders() == {OLDER}
    assert (tree.files, tree.bytes) == (1, len(DATA))
    # Never read: the file it holds is named, with the archive that should hold it.
    with pytest.raises(ArchiveCorrupt) as info:
        tree.finish()
    assert info.value.detail == "1 file(s) were not found in the archives that should hold them"
    assert (info.value.archive, info.value.member) == (OLDER, "data/crm/old")


def test_files_the_archive_lacks_are_named_the_first_by_path(tmp_path: Path) -> None:
    entries = [
        dir_entry("data/crm"),
        file_entry("data/crm/c", DATA, ARCHIVE),  # listed first, named second
        file_entry("data/crm/b", DATA, ARCHIVE),
        file_entry("data/crm/a", DATA, ARCHIVE),
    ]
    tree, stream = staged(folder() + blocks(*member("data/crm/b", DATA)), entries, tmp_path)
    tree.prepare()
    tree.take(stream)
    with pytest.raises(ArchiveCorrupt) as info:
        tree.finish()
    assert info.value.detail == "2 file(s) were not found in the archives that should hold them"
    assert (info.value.archive, info.value.member) == (ARCHIVE, "data/crm/a")
    assert (tmp_path / "staging" / "crm" / "b").read_bytes() == DATA


def test_files_left_unread_are_counted_when_none_is_missing_from_the_tree(tmp_path: Path) -> None:
    # The file is in the staging folder already (not written by this restore), and
    # its archive was never read: the count comes from the archives left.
    entries = [dir_entry("data/crm"), file_entry("data/crm/f", DATA, ARCHIVE)]
    tree, _ = staged(folder(), entries, tmp_path)
    (tmp_path / "staging" / "crm").mkdir(parents=True)
    (tmp_path / "staging" / "crm" / "f").write_bytes(DATA)
    tree.prepare()
    with pytest.raises(ArchiveCorrupt) as info:
        tree.finish()
    assert info.value.detail == "1 file(s) were not found in the archives that should hold them"
    assert (info.value.archive, info.value.member) == (ARCHIVE, None)


def test_a_path_below_a_file_named_as_the_dumps_folder_is_refused(tmp_path: Path) -> None:
    entries = [
        dir_entry("data/crm"),
        file_entry("dumps", DATA, ARCHIVE),
        dir_entry("dumps/pg"),
    ]
    tree, _ = staged(folder(), entries, tmp_path, dumps=tmp_path / "dumps")
    with pytest.raises(UnsafeArchive) as info:
        tree.prepare()
    assert info.value.detail == "path lies under the file dumps; refused"
    assert info.value.member == "dumps/pg"


def test_a_hard_link_to_a_directory_is_refused_naming_it(tmp_path: Path) -> None:
    entries = [dir_entry("data/crm"), hardlink_entry("data/crm/h", "data/crm")]
    tree, _ = staged(folder(), entries, tmp_path)
    with pytest.raises(UnsafeArchive) as info:
        tree.prepare()
    assert info.value.detail == (
        "hard link to 'data/crm', which is not a file of this archive; refused"
    )
    assert info.value.member == "data/crm/h"


def test_what_cannot_be_set_is_one_warning_counting_each_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No file system has a "bogus." namespace (EOPNOTSUPP; a name ending in X: only the
    # parentheses of a node's note are stripped), and no user.* attribute
    # goes on a symbolic link (EPERM): refused, counted, named with the first path.
    bogus = (("bogus.X", base64.b64encode(b"1").decode()),)
    on_link = (("user.x", base64.b64encode(b"2").decode()),)
    entries = [
        dir_entry("data/crm"),
        attrs.evolve(file_entry("data/crm/a", DATA, ARCHIVE), xattrs=bogus),
        attrs.evolve(file_entry("data/crm/b", DATA, ARCHIVE), xattrs=bogus),
        attrs.evolve(dir_entry("data/crm/d"), xattrs=bogus),
        attrs.evolve(link_entry("data/crm/l", "a"), xattrs=on_link),
        Entry(
            path="data/crm/p",
            type="fifo",
            mode=0o640,
            mtime_ns=10**18,
            uid=1234,
            gid=2345,
            xattrs=(*bogus, ("trusted.ok", base64.b64encode(b"3").decode())),
        ),
    ]
    middle = folder() + blocks(*member("data/crm/a", DATA)) + blocks(*member("data/crm/b", DATA))
    tree, stream = staged(middle, entries, tmp_path)
    tree.prepare()
    tree.take(stream)
    caplog.set_level(logging.WARNING, logger="cellvault")
    tree.finish()
    (warning,) = tree.warnings
    assert warning == (
        "5 attribute(s) or node(s) could not be restored, as this process or file system "
        "does not allow it: bogus.X (4 path(s), first data/crm/a), user.x (1 path(s), "
        "first data/crm/l); restore as root, onto a file system that supports them, to get "
        "them back"
    )
    logged = [
        (r.msg.get("archive"), r.msg.get("detail"))
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "restore.attributes_skipped"
    ]
    assert logged == [(ARCHIVE, warning)]
    # The rest of each is there.
    out = tmp_path / "staging" / "crm"
    assert (out / "b").read_bytes() == DATA
    fifo = os.lstat(out / "p")
    assert stat.S_ISFIFO(fifo.st_mode)
    assert (stat.S_IMODE(fifo.st_mode), fifo.st_mtime_ns) == (0o640, 10**18)
    if os.geteuid() == 0:
        assert (fifo.st_uid, fifo.st_gid) == (1234, 2345)
        assert os.getxattr(out / "p", "trusted.ok", follow_symlinks=False) == b"3"
    assert os.readlink(out / "l") == "a"


def test_a_device_node_this_process_may_not_make_is_one_warning(tmp_path: Path) -> None:
    # As a user without CAP_MKNOD (root's effective user id changed for the call):
    # the node is left out, named in the warning, and the rest is restored.
    needs_root("act as another user")
    entries = [
        dir_entry("data/crm"),
        Entry(path="data/crm/null", type="chardev", mode=0o666, mtime_ns=0, rdev=os.makedev(1, 3)),
        Entry(path="data/crm/p", type="fifo", mode=0o600, mtime_ns=0),
    ]
    tree, _ = staged(folder(), entries, tmp_path)
    tree.prepare()
    os.chown(tmp_path / "staging" / "crm", 65534, 65534)
    os.seteuid(65534)
    try:
        tree.finish()
    finally:
        os.seteuid(0)
    assert tree.warnings == [
        "1 attribute(s) or node(s) could not be restored, as this process or file system "
        "does not allow it: chardev node: only root can make it (1 path(s), first "
        "data/crm/null); restore as root, onto a file system that supports them, to get "
        "them back"
    ]
    assert sorted(os.listdir(tmp_path / "staging" / "crm")) == ["p"]


def test_a_links_owner_and_time_are_set_on_the_link_not_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"not the restore's\n")
    os.utime(outside, ns=(5 * 10**17, 5 * 10**17))
    before = os.stat(outside)
    link = Entry(
        path="data/crm/l",
        type="symlink",
        mode=0o777,
        mtime_ns=10**18,
        target=str(outside),
        uid=1234,
        gid=2345,
    )
    tree, _ = staged(folder(), [dir_entry("data/crm"), link], tmp_path)
    tree.prepare()
    tree.finish()
    restored = os.lstat(tmp_path / "staging" / "crm" / "l")
    assert restored.st_mtime_ns == 10**18
    if os.geteuid() == 0:
        assert (restored.st_uid, restored.st_gid) == (1234, 2345)
    after = os.stat(outside)
    assert (after.st_uid, after.st_gid, after.st_mtime_ns) == (
        before.st_uid,
        before.st_gid,
        before.st_mtime_ns,
    )


def test_a_folder_swapped_for_a_link_before_the_nodes_are_made_is_refused(tmp_path: Path) -> None:
    # Each directory on the way to a FIFO, a device or a link is opened without
    # following links, one at a time: a folder replaced by a link is refused, and
    # nothing is made where it points.
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [
        dir_entry("data/crm"),
        dir_entry("data/crm/sub"),
        Entry(path="data/crm/sub/p", type="fifo", mode=0o600, mtime_ns=0),
        dir_entry("data/crm/z"),
    ]
    tree, _ = staged(folder(), entries, tmp_path)
    tree.prepare()
    sub = tmp_path / "staging" / "crm" / "sub"
    sub.rename(sub.with_name("sub.moved"))
    sub.symlink_to(outside)
    with pytest.raises(UnsafeArchive) as info:
        tree.finish()
    assert info.value.detail.startswith("crm/sub is no longer a directory of the staging tree")
    assert os.listdir(outside) == []


def test_a_folder_swapped_for_a_link_before_its_attributes_are_set_is_refused(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o701)  # any mode the restore must leave alone
    # The deepest folder's attributes are set first: the walk to it names the link.
    entries = [
        dir_entry("data/crm"),
        dir_entry("data/crm/sub", mode=0o700),
        dir_entry("data/crm/sub/deeper", mode=0o700),
    ]
    tree, _ = staged(folder(), entries, tmp_path)
    tree.prepare()
    sub = tmp_path / "staging" / "crm" / "sub"
    sub.rename(sub.with_name("sub.moved"))
    sub.symlink_to(outside)
    with pytest.raises(UnsafeArchive) as info:
        tree.finish()
    assert info.value.detail.startswith("crm/sub is no longer a directory of the staging tree")
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o701


def test_a_dumps_folder_outside_the_staging_tree_gets_its_attributes(tmp_path: Path) -> None:
    sql = b"create table t (x int);\n"
    entries = [
        dir_entry("data/crm"),
        dir_entry("dumps", mode=0o750, mtime_ns=10**18),
        dir_entry("dumps/pg", mode=0o700),
        file_entry("dumps/pg/db.sql", sql, ARCHIVE, mode=0o600),
    ]
    middle = folder() + blocks(*member("dumps/pg/db.sql", sql, mode=0o600))
    out = tmp_path / "dumps-out"
    tree, stream = staged(middle, entries, tmp_path, dumps=out)
    tree.prepare()
    tree.take(stream)
    tree.finish()
    assert (out / "pg" / "db.sql").read_bytes() == sql
    top = os.stat(out)
    assert (stat.S_IMODE(top.st_mode), top.st_mtime_ns) == (0o750, 10**18)
    assert stat.S_IMODE(os.stat(out / "pg").st_mode) == 0o700


def test_an_archives_manifest_other_than_the_planned_copy_is_refused(tmp_path: Path) -> None:
    # The planned manifest read from its stored copy (so it has a digest), which
    # lists a mode the archive's own manifest.json does not.
    entries = [dir_entry("data/crm"), file_entry("data/crm/a", DATA, ARCHIVE)]
    tree, stream = staged(folder() + blocks(*member("data/crm/a", DATA)), entries, tmp_path)
    other = Manifest(archive=ARCHIVE)
    other.add(dir_entry("data/crm", mode=0o700))
    other.add(file_entry("data/crm/a", DATA, ARCHIVE))
    planned = Manifest.read(io.BytesIO(other.to_json()), archive=ARCHIVE)
    assert planned.digest is not None
    tree = attrs.evolve(tree, manifest=planned)
    tree.prepare()
    with pytest.raises(ArchiveCorrupt) as info:
        tree.take(stream)
    assert (info.value.detail, info.value.member, info.value.target) == (
        "manifest.json differs from the stored manifest copy",
        "manifest.json",
        "t",
    )


def test_folders_get_their_modes_deepest_first(tmp_path: Path) -> None:
    # A folder no one may enter is set after what lies below it: as its owner
    # (not root, who may enter anything), the folder below is reached first.
    needs_root("act as another user")
    entries = [
        dir_entry("data/crm"),
        dir_entry("data/crm/locked", mode=0o000),
        dir_entry("data/crm/locked/sub", mode=0o700),
    ]
    tree, _ = staged(folder(), entries, tmp_path)
    tree.prepare()
    for path in ("crm", "crm/locked", "crm/locked/sub"):
        os.chown(tmp_path / "staging" / path, 65534, 65534)
    os.seteuid(65534)
    try:
        tree.finish()
    finally:
        os.seteuid(0)
    out = tmp_path / "staging" / "crm"
    assert stat.S_IMODE(os.stat(out / "locked").st_mode) == 0o000
    assert stat.S_IMODE(os.stat(out / "locked" / "sub").st_mode) == 0o700


def test_nothing_refused_is_no_warning(tmp_path: Path) -> None:
    entries = [dir_entry("data/crm"), file_entry("data/crm/a", DATA, ARCHIVE)]
    tree, stream = staged(folder() + blocks(*member("data/crm/a", DATA)), entries, tmp_path)
    tree.prepare()
    tree.take(stream)
    tree.finish()
    assert tree.warnings == []


def test_openat2_opens_a_path_beneath_and_refuses_a_link_on_the_way(tmp_path: Path) -> None:
    # Linux 5.6 and later (every machine the suite runs on).
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "l").symlink_to("a")
    fresh = dirfds._Openat2()
    assert fresh.works is None
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Its first call refused (a link on the way): the error, and openat2 still usable.
        first = dirfds._Openat2()
        with pytest.raises(OSError) as refused:
            first(root, "l/b", dirfds._OPEN_DIR)
        assert (refused.value.errno, first.works) == (errno.ELOOP, None)
        assert (refused.value.strerror, refused.value.filename) == (
            os.strerror(errno.ELOOP),
            "l/b",
        )
        fd = fresh(root, "a/b", dirfds._OPEN_DIR)
        assert fd is not None
        try:
            assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "a" / "b"))
        finally:
            os.close(fd)
        assert fresh.works is True
        with pytest.raises(OSError) as info:
            fresh(root, "l/b", dirfds._OPEN_DIR)
        assert info.value.errno == errno.ELOOP  # RESOLVE_NO_SYMLINKS
        with pytest.raises(OSError) as escaped:
            fresh(root, "../" + tmp_path.name, dirfds._OPEN_DIR)
        assert escaped.value.errno == errno.EXDEV  # RESOLVE_BENEATH
        assert fresh.works is True
    finally:
        os.close(root)


def _content(size: int) -> bytes:
    """*size* bytes, not all alike."""
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


@pytest.mark.parametrize("size", [10, 300 << 10], ids=["small", "large"])
def test_content_of_the_manifest_s_size_but_other_bytes_is_refused(
    tmp_path: Path, size: int
) -> None:
    """Read whole (up to 256 KiB) or a block at a time: the sha256 is checked, not the size only."""
    planned = _content(size)
    stored = bytearray(planned)
    stored[-1] ^= 0xFF
    entries = [dir_entry("data/crm"), file_entry("data/crm/f", planned, ARCHIVE)]
    tree, stream = staged(
        folder() + blocks(*member("data/crm/f", bytes(stored))), entries, tmp_path
    )
    tree.prepare()
    with pytest.raises(ArchiveCorrupt) as info:
        tree.take(stream)
    assert (info.value.detail, info.value.member, info.value.target) == (
        "content does not match the manifest (sha256 differs)",
        "data/crm/f",
        "t",
    )


@pytest.mark.parametrize("size", [0, 10, 256 << 10, (256 << 10) + 1, 3 << 20])
def test_each_byte_written_is_counted_once(tmp_path: Path, size: int) -> None:
    data = _content(size)
    entries = [dir_entry("data/crm"), file_entry("data/crm/f", data, ARCHIVE)]
    counted: list[int] = []
    tree, stream = staged(
        folder() + blocks(*member("data/crm/f", data)), entries, tmp_path, on_bytes=counted.append
    )
    tree.prepare()
    tree.take(stream)
    tree.finish()
    assert sum(counted) == size and all(n > 0 for n in counted)
    assert (tmp_path / "staging" / "crm" / "f").read_bytes() == data


def test_the_archive_s_own_manifest_of_the_very_bytes_planned_is_not_parsed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [dir_entry("data/crm"), file_entry("data/crm/f", DATA, ARCHIVE)]
    raw, sidecar, manifest = archive_bytes(folder() + blocks(*member("data/crm/f", DATA)), entries)
    planned = Manifest.read(io.BytesIO(manifest.to_json()), archive=ARCHIVE)  # digest known
    assert planned.digest is not None
    parsed: list[object] = []
    real = ArchiveStream.manifest
    monkeypatch.setattr(ArchiveStream, "manifest", lambda self: parsed.append(self) or real(self))
    tree = StagedTree(staging=tmp_path / "staging", manifest=planned, archive=ARCHIVE)
    tree.prepare()
    tree.take(ArchiveStream(io.BytesIO(raw), sidecar, "t"))
    tree.finish()
    assert parsed == []
    # Planned from a manifest built in memory (no digest): compared entry by entry.
    tree = StagedTree(staging=tmp_path / "again", manifest=manifest, archive=ARCHIVE)
    tree.prepare()
    tree.take(ArchiveStream(io.BytesIO(raw), sidecar, "t"))
    assert len(parsed) == 1


def test_a_member_whose_file_another_archive_holds_is_passed_over(tmp_path: Path) -> None:
    """Reading an older archive of a chain: a file changed since comes from the newer one."""
    entries = [
        dir_entry("data/crm"),
        file_entry("data/crm/a", DATA, OLDER),  # changed later: the other archive's copy
        file_entry("data/crm/b", DATA, ARCHIVE),
        file_entry("data/crm/c", DATA, OLDER),
    ]
    middle = folder() + b"".join(blocks(*member(f"data/crm/{n}", b"stale " + DATA)) for n in "ac")
    middle += blocks(*member("data/crm/b", DATA))
    tree, stream = staged(middle, entries, tmp_path)
    tree.prepare()
    tree.take(stream)
    assert (tree.files, tree.bytes) == (1, len(DATA))
    assert sorted(p.name for p in (tmp_path / "staging" / "crm").iterdir()) == ["b"]
    assert tree.holders() == {OLDER}


_SQL = b"create table t (x int);\n"
_DUMP_ENTRIES = [
    dir_entry("data/crm"),
    file_entry("data/crm/f", DATA, ARCHIVE),
    dir_entry("dumps", mode=0o750),
    dir_entry("dumps/pg", mode=0o700),
    file_entry("dumps/pg/db.sql", _SQL, ARCHIVE, mode=0o600),
]
_DUMP_MIDDLE = (
    folder()
    + blocks(*member("data/crm/f", DATA))
    + blocks(*member("dumps/pg", kind=tarfile.DIRTYPE, mode=0o700))
    + blocks(*member("dumps/pg/db.sql", _SQL, mode=0o600))
)


@pytest.mark.parametrize(
    "where", ["none", "inside", "deeper inside", "outside", "the staging folder itself"]
)
def test_dumps_go_where_asked_or_nowhere(tmp_path: Path, where: str) -> None:
    """A restore keeps the dumps beside the tree (a folder of the staging tree), elsewhere, or not."""
    staging = tmp_path / "staging"
    dumps = {
        "none": None,
        "inside": staging / "crm.dumps",
        "deeper inside": staging / "keep" / "crm.dumps",
        "outside": tmp_path / "out" / "crm" / "dumps",  # its parents made too
        "the staging folder itself": staging,
    }[where]
    tree, stream = staged(_DUMP_MIDDLE, _DUMP_ENTRIES, tmp_path, dumps=dumps)
    tree.prepare()
    tree.take(stream)
    tree.finish()
    assert (staging / "crm" / "f").read_bytes() == DATA
    assert (tree.files, tree.bytes) == (
        (1, len(DATA)) if dumps is None else (2, len(DATA) + len(_SQL))
    )
    if dumps is None:
        assert sorted(p.name for p in staging.iterdir()) == ["crm"]
        return
    assert (dumps / "pg" / "db.sql").read_bytes() == _SQL
    assert stat.S_IMODE(os.stat(dumps / "pg").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(dumps).st_mode) == 0o750


@pytest.mark.parametrize(
    ("entry", "detail"),
    [
        (link_entry("dumps/pg/l", "db.sql"), "a symlink under dumps/; refused"),
        (hardlink_entry("dumps/pg/h", "dumps/pg/db.sql"), "a hardlink under dumps/; refused"),
        (file_entry("etc/passwd", DATA, ARCHIVE), "manifest path lies outside data/"),
        (dir_entry("data"), "manifest path lies outside data/"),
        (
            file_entry("data/crm.dumps", DATA, ARCHIVE),
            "a cell path has the name of the dumps folder; refused",
        ),
    ],
)
def test_what_a_manifest_may_not_list_is_refused_before_any_file_is_written(
    tmp_path: Path, entry: Entry, detail: str
) -> None:
    staging = tmp_path / "staging"
    tree, _ = staged(_DUMP_MIDDLE, [*_DUMP_ENTRIES, entry], tmp_path, dumps=staging / "crm.dumps")
    with pytest.raises(UnsafeArchive) as info:
        tree.prepare()
    assert (info.value.detail, info.value.member, info.value.archive) == (
        detail,
        entry.path,
        ARCHIVE,
    )
    # prepare makes folders only (in the staging tree, which the caller then removes).
    assert [p for p in staging.rglob("*") if not p.is_dir()] == []


def test_a_file_member_repeated_is_refused_when_written_again(tmp_path: Path) -> None:
    """A restore keeps no names: the repeat's creation (``O_EXCL``) refuses it."""
    names = [f"data/crm/{n}" for n in "abcd"]
    middle = folder() + b"".join(blocks(*member(n, DATA)) for n in [*names, names[0]])
    entries = [dir_entry("data/crm"), *(file_entry(n, DATA, ARCHIVE) for n in names)]
    tree, stream = staged(middle, entries, tmp_path)
    tree.prepare()
    with pytest.raises(UnsafeArchive) as info:
        tree.take(stream)
    assert (info.value.detail, info.value.member, info.value.archive) == (
        "member appears twice; refused",
        "data/crm/a",
        ARCHIVE,
    )


def test_a_folder_member_repeated_changes_nothing_a_restore_makes(tmp_path: Path) -> None:
    """Folders and links come from the manifest, not the stream: a repeated one is inert.

    (A verify of the same archive refuses it: ``test_tarread``.)
    """
    middle = folder() + folder() + blocks(*member("data/crm/a", DATA))
    entries = [dir_entry("data/crm"), file_entry("data/crm/a", DATA, ARCHIVE)]
    tree, stream = staged(middle, entries, tmp_path)
    tree.prepare()
    tree.take(stream)
    tree.finish()
    assert (tmp_path / "staging" / "crm" / "a").read_bytes() == DATA
    assert sorted(p.name for p in (tmp_path / "staging").rglob("*")) == ["a", "crm"]


def test_files_and_bytes_are_counted_over_every_archive_of_the_chain(tmp_path: Path) -> None:
    from cellvault import ArchiveId

    from .test_tarread import META, sealed

    older = ArchiveId.parse(OLDER)
    entries = [
        dir_entry("data/crm"),
        file_entry("data/crm/a", DATA, OLDER),
        file_entry("data/crm/b", DATA * 3, ARCHIVE),
    ]
    tree, newest = staged(folder() + blocks(*member("data/crm/b", DATA * 3)), entries, tmp_path)
    meta = attrs.evolve(META, id=older, backed_at=older.when, kind="full")
    raw, sidecar = sealed(
        blocks(*member("meta.json", meta.to_json()))
        + folder()
        + blocks(*member("data/crm/a", DATA))
        + blocks(*member("manifest.json", Manifest(archive=OLDER).to_json()))
        + bytes(1024)
    )
    sidecar = attrs.evolve(sidecar, meta=meta, data_name=f"{OLDER}.tar.zst")
    tree.prepare()
    tree.take(newest)
    tree.take(ArchiveStream(io.BytesIO(raw), sidecar, "t"))
    tree.finish()
    assert (tree.files, tree.bytes) == (2, 4 * len(DATA))
    assert (tmp_path / "staging" / "crm" / "a").read_bytes() == DATA


def test_a_dumps_path_below_a_file_named_dumps_is_refused(tmp_path: Path) -> None:
    """``dumps`` itself listed as a file: what the manifest lists below it lies under a file."""
    staging = tmp_path / "staging"
    entries = [
        e if e.path != "dumps" else file_entry("dumps", DATA, ARCHIVE) for e in _DUMP_ENTRIES
    ]
    tree, _ = staged(_DUMP_MIDDLE, entries, tmp_path, dumps=staging / "crm.dumps")
    with pytest.raises(UnsafeArchive) as info:
        tree.prepare()
    assert (info.value.detail, info.value.member, info.value.archive) == (
        "path lies under the file dumps; refused",
        "dumps/pg",
        ARCHIVE,
    )
    assert [p for p in staging.rglob("*") if not p.is_dir()] == []


def test_an_archive_that_holds_no_file_is_read_and_leaves_nothing_to_find(tmp_path: Path) -> None:
    """The newest archive of a chain may hold no file at all (nothing changed but folders)."""
    entries = [dir_entry("data/crm"), dir_entry("data/crm/sub", mode=0o750)]
    tree, stream = staged(
        folder() + blocks(*member("data/crm/sub", kind=tarfile.DIRTYPE, mode=0o750)),
        entries,
        tmp_path,
    )
    tree.prepare()
    assert tree.holders() == set()
    tree.take(stream)
    assert tree.holders() == set()
    tree.finish()
    assert (tree.files, tree.bytes) == (0, 0)
    assert stat.S_IMODE((tmp_path / "staging" / "crm" / "sub").stat().st_mode) == 0o750


def open_fds() -> set[str]:
    """The descriptors this process has open."""
    return set(os.listdir("/proc/self/fd"))


def test_the_staging_tree_s_descriptors_are_closed_when_it_ends_or_fails(tmp_path: Path) -> None:
    before = open_fds()
    tree, stream = staged(_DUMP_MIDDLE, _DUMP_ENTRIES, tmp_path, dumps=tmp_path / "out" / "dumps")
    tree.prepare()
    tree.take(stream)
    tree.finish()
    assert open_fds() == before
    # A take that fails closes them too (the caller then removes the staging tree).
    stored = blocks(*member("data/crm/f", b"other data"))
    tree, stream = staged(
        folder() + stored,
        [dir_entry("data/crm"), file_entry("data/crm/f", DATA, ARCHIVE)],
        tmp_path / "again",
    )
    tree.prepare()
    with pytest.raises(ArchiveCorrupt):
        tree.take(stream)
    assert open_fds() == before
    tree.close()  # and again: nothing left to close
    assert open_fds() == before


@pytest.mark.parametrize("where", ["the cell's tree", "a dumps folder outside"])
def test_a_folder_swapped_for_a_link_is_refused_naming_the_archive(
    tmp_path: Path, where: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = tmp_path / "staging"
    dumps = tmp_path / "out" / "dumps"
    swap = staging / "crm" / "sub" if where == "the cell's tree" else dumps / "pg"
    rel = "crm/sub" if where == "the cell's tree" else "pg"
    # The folders are opened by prepare, the last one (zz) kept open: pg is opened
    # again, and found swapped, when its file is written.
    entries = [
        *_DUMP_ENTRIES,
        dir_entry("data/crm/sub"),
        file_entry("data/crm/sub/g", DATA, ARCHIVE),
        dir_entry("dumps/zz"),
        file_entry("dumps/zz/x.sql", _SQL, ARCHIVE),
    ]
    middle = (
        folder()
        + blocks(*member("data/crm/f", DATA))
        + blocks(*member("data/crm/sub", kind=tarfile.DIRTYPE, mode=0o755))
        + blocks(*member("data/crm/sub/g", DATA))
        + blocks(*member("dumps/pg", kind=tarfile.DIRTYPE, mode=0o700))
        + blocks(*member("dumps/pg/db.sql", _SQL, mode=0o600))
        + blocks(*member("dumps/zz", kind=tarfile.DIRTYPE, mode=0o755))
        + blocks(*member("dumps/zz/x.sql", _SQL))
    )

    def race(_n: int) -> None:
        if not swap.is_symlink():  # after the first file's bytes; the folders exist already
            swap.rename(swap.with_name("moved"))
            swap.symlink_to(outside)

    tree, stream = staged(middle, entries, tmp_path, dumps=dumps, on_bytes=race)
    tree.prepare()
    with pytest.raises(UnsafeArchive) as info:
        tree.take(stream)
    assert (info.value.detail, info.value.archive) == (
        f"{rel} is no longer a directory of the staging tree (replaced by a link or a file "
        "while the restore ran); nothing was written through it",
        ARCHIVE,
    )
    assert list(outside.iterdir()) == []


def test_a_partial_restore_passes_over_an_archive_holding_nothing_wanted(tmp_path: Path) -> None:
    """Not read at all (its stream is closed unread), and nothing is counted."""
    entries = [dir_entry("data/crm"), file_entry("data/crm/old", DATA, OLDER)]
    tree, stream = staged(
        folder() + blocks(*member("data/crm/f", DATA)), entries, tmp_path, partial=True
    )
    tree.prepare()
    tree.take(stream)
    assert stream.meta is None  # never read
    assert (tree.files, tree.bytes) == (0, 0)
    assert tree.holders() == {OLDER}


def test_files_whose_archive_the_manifest_does_not_name_are_missing_not_sought(
    tmp_path: Path,
) -> None:
    """No archive is asked for them; the restore fails naming the first, counting all.

    A manifest read from a target or an archive never lists them (it is
    refused: ``test_manifest``); one built by the caller may.
    """
    entries = [
        dir_entry("data/crm"),
        attrs.evolve(file_entry("data/crm/f", DATA, ARCHIVE), archive=None),
        attrs.evolve(file_entry("data/crm/g", DATA, ARCHIVE), archive=None),
    ]
    tree, _ = staged(folder(), entries, tmp_path)
    tree.prepare()
    assert tree.holders() == set()
    with pytest.raises(ArchiveCorrupt) as info:
        tree.finish()
    assert (info.value.detail, info.value.archive, info.value.member) == (
        "2 file(s) were not found in the archives that should hold them",
        ARCHIVE,
        "data/crm/f",
    )


def test_a_manifest_that_lists_dumps_first_restores_the_cell_without_them(tmp_path: Path) -> None:
    """Dumps not wanted are passed over wherever the manifest lists them, not taken as its end."""
    dumps_first = [e for e in _DUMP_ENTRIES if e.path.startswith("dumps")]
    cell = [e for e in _DUMP_ENTRIES if e.path.startswith("data")]
    tree, stream = staged(_DUMP_MIDDLE, [*dumps_first, *cell], tmp_path)
    tree.prepare()
    assert tree.holders() == {ARCHIVE}
    tree.take(stream)
    tree.finish()
    assert (tree.files, tree.bytes) == (1, len(DATA))
    assert (tmp_path / "staging" / "crm" / "f").read_bytes() == DATA


def test_the_end_of_the_tree_reads_no_manifest_through_for_its_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, others_noted: str
) -> None:
    """Noted by the preparation (a few thousand among millions of files), looked up by path."""
    entries = [
        dir_entry("data/crm"),
        file_entry("data/crm/f", DATA, ARCHIVE),
        dir_entry("data/crm/sub", mode=0o701),
        link_entry("data/crm/l", "/etc/hostname"),
        hardlink_entry("data/crm/h", "data/crm/f"),
    ]
    middle = folder() + blocks(*member("data/crm/f", DATA))
    tree, stream = staged(middle, entries, tmp_path)
    tree.prepare()
    tree.take(stream)
    select = Manifest.select
    scanned: list[tuple[str, ...]] = []

    def spy(self: Manifest, *types: str) -> object:
        scanned.append(types)
        return select(self, *types)

    monkeypatch.setattr(Manifest, "select", spy)
    tree.finish()
    staging = tmp_path / "staging" / "crm"
    assert stat.S_IMODE((staging / "sub").stat().st_mode) == 0o701
    assert os.readlink(staging / "l") == "/etc/hostname"
    assert (staging / "h").stat().st_ino == (staging / "f").stat().st_ino
    read_through = [("hardlink", "dir", "symlink", *SPECIAL_TYPES), ("symlink",)]
    assert scanned == ([] if others_noted == "noted" else read_through)
