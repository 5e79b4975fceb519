"""The fidelity matrix: every kind of Linux path comes back as it was backed up.

One source tree holds one case per kind. It is backed up once; the archive
is restored by cellvault (``restore --into``) and, from the very same
archive, by stock GNU tar (``zstd -d | tar --xattrs --xattrs-include='*'
--acls -x``) and by bsdtar. Each case then compares every restored tree with
the source by lstat (type, mode
with its set-user-ID, set-group-ID and sticky bits, owner, size, nanosecond
mtime, device number), extended attributes (ACLs among them), link targets,
hard-link identity, allocated blocks and content.

Paths are walked through directory descriptors, so a path longer than
``PATH_MAX`` from ``/`` is compared as well as a short one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from cellvault import readahead
from cellvault.extract import stage
from tests.system_tools import find, needs_root, require, unavailable

from .archive_helpers import make_vault

AS_ROOT = os.geteuid() == 0
#: A path of 4,000 bytes below the cell root.
LONG = "/".join(["d" * 199] * 19) + "/" + "f" * 200
assert len(LONG) == 4000
NON_UTF8 = os.fsdecode(b"caf\xe9-latin1.txt")

Describe = dict[str, Any]


def _xattrs(fd: int, name: str) -> dict[str, bytes]:
    where = f"/proc/self/fd/{fd}/{name}"
    try:
        names = os.listxattr(where, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(where, n, follow_symlinks=False) for n in sorted(names)}


def describe(root: Path) -> Describe:
    """Everything a restore must reproduce of each path below *root*, walked by fds."""
    out: Describe = {}
    inodes: dict[int, list[str]] = {}

    def walk(fd: int, rel: str) -> None:
        for entry in sorted(os.scandir(fd), key=lambda e: e.name):
            name = entry.name
            path = f"{rel}/{name}" if rel else name
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            kind = stat.S_IFMT(st.st_mode)
            info: dict[str, Any] = {
                "type": kind,
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns,
                "xattrs": _xattrs(fd, name),
            }
            if stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(name, dir_fd=fd)
            elif stat.S_ISREG(st.st_mode):
                info["size"] = st.st_size
                info["blocks"] = st.st_blocks
                child = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
                with os.fdopen(child, "rb") as f:
                    info["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info["rdev"] = st.st_rdev
            out[path] = info
            if stat.S_ISDIR(st.st_mode):
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                try:
                    walk(child, path)
                finally:
                    os.close(child)

    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        walk(top, "")
    finally:
        os.close(top)
    for names in inodes.values():
        for name in names:
            out[name]["links"] = tuple(sorted(names))
    return out


def _mkdirs_at(root: Path, rel: str) -> int:
    """Create the directories of *rel* below *root*; return an fd of the last one."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in rel.split("/"):
        os.mkdir(part, dir_fd=fd)
        child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


@attrs.frozen
class Case:
    name: str
    #: The paths below the cell root this case compares.
    paths: tuple[str, ...]
    make: Callable[[Path], None]
    needs_root: bool = False
    tools: tuple[str, ...] = ()


def _regular(src: Path) -> None:
    (src / "regular.txt").write_bytes(b"some text\n" * 1000)


def _empty(src: Path) -> None:
    (src / "empty").touch()


def _sparse(src: Path) -> None:
    with open(src / "sparse.img", "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(b"data in the middle")
        f.seek((32 << 20) + 4096)
        f.write(os.urandom(8192))
    with open(src / "sparse-tail.img", "wb") as f:
        f.write(b"head")
        f.truncate(8 << 20)  # ends in a hole


def _hardlinks(src: Path) -> None:
    (src / "hl").mkdir()
    (src / "hl" / "one").write_bytes(b"one inode, three names\n")
    os.link(src / "hl" / "one", src / "hl" / "two")
    os.link(src / "hl" / "one", src / "hl-three")


def _links(src: Path) -> None:
    (src / "links").mkdir()
    (src / "links" / "abs").symlink_to("/etc/hostname")
    (src / "links" / "abs-dir").symlink_to("/usr/share")
    (src / "links" / "rel").symlink_to("../regular.txt")
    (src / "links" / "dangling").symlink_to("no/such/file")
    (src / "links" / "dir").symlink_to("../hl")
    (src / "links" / "up").symlink_to("../../../../..")


def _fifo(src: Path) -> None:
    os.mkfifo(src / "fifo", 0o640)


def _devices(src: Path) -> None:
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))


def _special_modes(src: Path) -> None:
    for name, mode in (("setuid", 0o4755), ("setgid", 0o2750), ("both", 0o6711)):
        (src / name).write_bytes(b"#!/bin/sh\n")
        os.chmod(src / name, mode)
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)  # noqa: S103 - the sticky bit is the case
    (src / "setgid-dir").mkdir()
    os.chmod(src / "setgid-dir", 0o2775)  # noqa: S103 - the set-group-ID bit is the case


def _xattrs_case(src: Path) -> None:
    (src / "xattr.txt").write_bytes(b"tagged\n")
    os.setxattr(src / "xattr.txt", "user.colour", b"blue")
    os.setxattr(src / "xattr.txt", "user.binary", bytes(range(256)))
    (src / "xattr-dir").mkdir()
    os.setxattr(src / "xattr-dir", "user.dir", b"yes")
    if AS_ROOT:
        os.setxattr(src / "xattr.txt", "trusted.cellvault", b"root only")


def _acls(src: Path) -> None:
    (src / "acl.txt").write_bytes(b"shared\n")
    subprocess.run(["setfacl", "-m", "u:1234:rw,g:2345:r", str(src / "acl.txt")], check=True)
    (src / "acl-dir").mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(src / "acl-dir")], check=True)


def _owners(src: Path) -> None:
    (src / "owned").write_bytes(b"someone else's\n")
    os.chown(src / "owned", 1234, 5678)
    (src / "owned-link").symlink_to("owned")
    os.chown(src / "owned-link", 4321, 8765, follow_symlinks=False)
    (src / "owned-dir").mkdir()
    os.chown(src / "owned-dir", 1234, 5678)


def _mtimes(src: Path) -> None:
    (src / "ns-mtime").write_bytes(b"x")
    os.utime(src / "ns-mtime", ns=(1, 1_234_567_890_123_456_789))
    (src / "old").write_bytes(b"x")
    os.utime(src / "old", ns=(0, 86_400 * 10**9 + 1))


def _names(src: Path) -> None:
    (src / "ünïcödé ✓.txt").write_bytes(b"unicode\n")
    with open(os.path.join(os.fsencode(src), os.fsencode(NON_UTF8)), "wb") as f:
        f.write(b"latin-1 name\n")


def _long_path(src: Path) -> None:
    folder, _, base = LONG.rpartition("/")
    fd = _mkdirs_at(src, folder)
    try:
        child = os.open(base, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(child, b"deep\n")
        os.close(child)
    finally:
        os.close(fd)


def _long_paths() -> tuple[str, ...]:
    parts = LONG.split("/")
    return tuple("/".join(parts[: i + 1]) for i in range(len(parts)))


CASES = [
    Case("regular", ("regular.txt",), _regular),
    Case("empty", ("empty",), _empty),
    Case("sparse", ("sparse.img", "sparse-tail.img"), _sparse),
    Case("hard-link group", ("hl", "hl/one", "hl/two", "hl-three"), _hardlinks),
    Case(
        "symbolic links",
        ("links", "links/abs", "links/abs-dir", "links/rel", "links/dangling", "links/dir"),
        _links,
    ),
    Case("fifo", ("fifo",), _fifo),
    Case("devices", ("null", "loop9"), _devices, needs_root=True),
    Case(
        "setuid/setgid/sticky",
        ("setuid", "setgid", "both", "sticky", "setgid-dir"),
        _special_modes,
    ),
    Case("xattrs", ("xattr.txt", "xattr-dir"), _xattrs_case),
    Case("acls", ("acl.txt", "acl-dir"), _acls, tools=("setfacl",)),
    Case("owners", ("owned", "owned-link", "owned-dir"), _owners, needs_root=True),
    Case("nanosecond mtimes", ("ns-mtime", "old"), _mtimes),
    Case("names", ("ünïcödé ✓.txt", NON_UTF8), _names),
    Case("4000-byte path", _long_paths(), _long_path),
]


@attrs.frozen
class Restored:
    source: Describe
    cellvault: Describe
    cellvault_writers: Describe
    cellvault_readers: Describe
    gnu_tar: Describe
    bsdtar: Describe | None
    made: frozenset[str]


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restored]:
    require("zstd", "tar")
    base = tmp_path_factory.mktemp("fid")
    src = base / "crm"
    src.mkdir()
    made = set()
    for case in CASES:
        if case.needs_root and not AS_ROOT:
            continue
        if any(find(t) is None for t in case.tools):
            continue
        case.make(src)
        made.add(case.name)
    # The cell root's own attributes are compared too.
    os.utime(src, ns=(0, 1_600_000_000_123_456_789))
    vault = make_vault(base / "backup", [src])
    backup = vault.backup()
    assert backup.ok, backup.cells[0].error
    assert vault.verify().ok
    report = vault.restore(backup.cells[0].archive, into=base / "cv")
    assert report.ok, report.cells[0].error
    # Again with the small files made by the forked writers (a cell of many files).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage, "WRITER_MIN_FILES", 0)
        report = vault.restore(backup.cells[0].archive, into=base / "cvw")
    assert report.ok, report.cells[0].error
    # And backed up with the small files read by the forked readers (a cell of many files).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(readahead, "FORK_MIN_FILES", 0)
        patch.setattr(readahead, "FORK_MAX_RSS", 1 << 62)
        forked = make_vault(base / "backup-r", [src])
        backup_r = forked.backup()
        assert backup_r.ok, backup_r.cells[0].error
    report = forked.restore(backup_r.cells[0].archive, into=base / "cvr")
    assert report.ok, report.cells[0].error
    archive = next((base / "backup" / "crm").glob("*.tar.zst"))
    gnu = base / "gnu"
    gnu.mkdir()
    with open(archive, "rb") as raw:
        zstd = subprocess.Popen(["zstd", "-d"], stdin=raw, stdout=subprocess.PIPE)
        tar = subprocess.run(
            ["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-xpf", "-"],
            stdin=zstd.stdout,
            cwd=gnu,
            capture_output=True,
            check=False,
        )
        assert zstd.stdout is not None
        zstd.stdout.close()
        assert zstd.wait() == 0
    assert tar.returncode == 0, tar.stderr
    bsd = base / "bsd"
    bsd.mkdir()
    if find("bsdtar") is not None:
        with open(archive, "rb") as raw:
            done = subprocess.run(
                ["bsdtar", "--xattrs", "--numeric-owner", "-xpf", "-"],
                stdin=raw,
                cwd=bsd,
                capture_output=True,
                check=False,
            )
        assert done.returncode == 0, done.stderr
    yield Restored(
        source=describe(src),
        cellvault=describe(base / "cv" / "crm" / "crm"),
        cellvault_writers=describe(base / "cvw" / "crm" / "crm"),
        cellvault_readers=describe(base / "cvr" / "crm" / "crm"),
        gnu_tar=describe(gnu / "data" / "crm"),
        bsdtar=describe(bsd / "data" / "crm") if find("bsdtar") is not None else None,
        made=frozenset(made),
    )
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "tool", ["cellvault", "cellvault_writers", "cellvault_readers", "gnu_tar", "bsdtar"]
)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_kind_restores_as_it_was(restored: Restored, case: Case, tool: str) -> None:
    if case.needs_root and not AS_ROOT:
        needs_root("make and restore this kind (devices, other owners)")
    for program in case.tools:
        require(program)
    if tool == "bsdtar":
        require("bsdtar")
    assert case.name in restored.made
    got: Describe = getattr(restored, tool)
    for path in case.paths:
        want = restored.source[path]
        assert path in got, f"{tool} did not restore {path!r}"
        assert got[path] == want, f"{tool}: {path!r} differs"


def test_sparse_files_come_back_with_their_holes(restored: Restored) -> None:
    source = restored.source["sparse.img"]
    assert source["blocks"] * 512 < source["size"] // 100  # the source is sparse
    for tool in ("cellvault", "cellvault_writers", "cellvault_readers", "gnu_tar"):
        assert getattr(restored, tool)["sparse.img"]["blocks"] == source["blocks"]


def test_the_whole_tree_matches(restored: Restored) -> None:
    assert restored.cellvault == restored.source
    assert restored.cellvault_writers == restored.source
    assert restored.cellvault_readers == restored.source
    assert restored.gnu_tar == restored.source


def test_in_place_restore_across_file_systems_keeps_every_kind(tmp_path: Path) -> None:
    """A cell path on another file system: its staged copy is moved across, whole."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        unavailable("needs /dev/shm on a file system of its own")
    other = Path(tempfile.mkdtemp(dir=shm)) / "crm-shm"
    other.mkdir()
    try:
        for make in (_regular, _sparse, _hardlinks, _links, _fifo, _special_modes, _mtimes):
            make(other)
        if AS_ROOT:
            _devices(other)
            _owners(other)
        want = describe(other)
        # The staging tree is made beside the first path: the second one crosses.
        first = tmp_path / "crm"
        first.mkdir()
        _regular(first)
        vault = make_vault(tmp_path / "backup", [first, other])
        ident = vault.backup().cells[0].archive
        shutil.rmtree(other / "hl")
        (other / "regular.txt").write_text("changed")
        report = vault.restore(ident)
        assert report.ok, report.cells[0].error
        assert describe(other) == want
        assert sorted(p.name for p in other.parent.iterdir()) == ["crm-shm"]
    finally:
        shutil.rmtree(other.parent)


_RESTORE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.archive_helpers import make_vault
vault = make_vault(Path(sys.argv[2]), [Path(sys.argv[3])])
report = vault.restore(sys.argv[4], into=Path(sys.argv[5]))
cell = report.cells[0]
print(json.dumps({"ok": report.ok, "error": cell.error, "warnings": list(cell.warnings)}))
"""


def test_what_the_restoring_process_may_not_set_is_one_warning_per_cell(tmp_path: Path) -> None:
    needs_root("make a device node and a trusted.* attribute")
    require("setpriv")
    src = tmp_path / "crm"
    src.mkdir()
    _devices(src)
    _regular(src)
    os.setxattr(src / "regular.txt", "trusted.one", b"1")
    os.setxattr(src / "regular.txt", "user.ok", b"fine")
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    out = tmp_path / "out"
    # Root without CAP_MKNOD and CAP_SYS_ADMIN: no device nodes, no trusted.* attributes.
    done = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-mknod,-sys_admin",
            "--inh-caps=-mknod,-sys_admin",
            sys.executable,
            "-c",
            _RESTORE,
            str(Path(__file__).parent.parent),
            str(tmp_path / "backup"),
            str(src),
            str(ident),
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ok"], result["error"]
    (warning,) = result["warnings"]
    assert "3 attribute(s) or node(s) could not be restored" in warning
    assert "trusted.one (1 path(s), first data/crm/regular.txt)" in warning
    assert "chardev node: only root can make it (1 path(s), first data/crm/null)" in warning
    assert "blockdev node" in warning
    restored = out / "crm" / "crm" / "regular.txt"
    assert os.getxattr(restored, "user.ok") == b"fine"  # the rest is there
    assert restored.read_bytes() == (src / "regular.txt").read_bytes()


def test_a_drill_of_every_kind_passes(tmp_path: Path) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    for case in CASES:
        if (case.needs_root and not AS_ROOT) or any(find(t) is None for t in case.tools):
            continue
        case.make(src)
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    report = vault.verify(level="drill")
    assert report.ok, [r.error for r in report.results]


def test_owners_come_back_below_a_set_group_id_folder(tmp_path: Path) -> None:
    """Files that already have their owner are not chowned, unless a folder hands down its group."""
    needs_root("own files as other users")
    src = tmp_path / "crm"
    src.mkdir()
    (src / "mine.txt").write_text("root's")
    (src / "theirs.txt").write_text("someone else's")
    os.chown(src / "theirs.txt", 1234, 5678)
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    for name, setgid in (("plain", False), ("setgid", True)):
        into = tmp_path / name
        into.mkdir()
        os.chown(into, 0, 4242)
        os.chmod(into, 0o2755 if setgid else 0o755)
        report = vault.restore(ident, into=into)
        assert report.ok, report.cells[0].error
        restored = into / "crm" / "crm"
        mine, theirs = (restored / "mine.txt").stat(), (restored / "theirs.txt").stat()
        assert (mine.st_uid, mine.st_gid) == (0, 0), name
        assert (theirs.st_uid, theirs.st_gid) == (1234, 5678), name
        assert (restored / "mine.txt").read_text() == "root's"
