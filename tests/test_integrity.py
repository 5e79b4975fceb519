"""The checks below the verify levels, on bytes and files: a drill's tree against its manifest."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from cellvault import ArchiveCorrupt
from cellvault.integrity import compare_tree
from cellvault.manifest import Entry, Manifest

ARCHIVE = "cell_crm_20250101_020000"
AS_ROOT = os.geteuid() == 0


def _restored(root: Path) -> Manifest:
    """A restored tree under *root* (root ``crm``) with one path of each kind, and its manifest.

    The manifest also lists a dump (not under ``data/``: not in the tree) and
    gives the symlink and the hard link modes the tree does not have: neither
    is compared for them (a link's mode is not its own; a hard link's is its
    first name's).
    """
    top = root / "crm"
    (top / "sub").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"hello")
    (top / "sub" / "b.txt").write_bytes(b"b" * 300)
    os.chmod(top / "sub" / "b.txt", 0o600)
    os.symlink("a.txt", top / "link")
    os.link(top / "a.txt", top / "hard")
    os.mkfifo(top / "pipe")
    os.chmod(top / "pipe", 0o640)
    if AS_ROOT:
        os.mknod(top / "null", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(top / "null", 0o620)  # past the umask
    manifest = Manifest(archive=ARCHIVE)

    def add(rel: str, kind: str, mode: int, **more: object) -> None:
        manifest.add(Entry(f"data/{rel}", kind, mode, 0, **more))  # type: ignore[arg-type]

    add("crm", "dir", stat.S_IMODE(top.stat().st_mode))
    add("crm/a.txt", "file", stat.S_IMODE((top / "a.txt").stat().st_mode), size=5)
    add("crm/sub", "dir", stat.S_IMODE((top / "sub").stat().st_mode))
    add("crm/sub/b.txt", "file", 0o600, size=300)
    add("crm/link", "symlink", 0o000, target="a.txt")
    add("crm/hard", "hardlink", 0o000, target="data/crm/a.txt")
    add("crm/pipe", "fifo", 0o640)
    add("crm/null", "chardev", 0o620, rdev=os.makedev(1, 3))
    manifest.add(Entry("dumps/crm/db.sql", "file", 0o600, 0, size=10))
    return manifest


def _refused(root: Path, manifest: Manifest) -> ArchiveCorrupt:
    with pytest.raises(ArchiveCorrupt) as exc:
        compare_tree(root, manifest)
    assert exc.value.archive == ARCHIVE
    return exc.value


def test_a_tree_as_its_manifest_says_compares_each_path_under_data(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    # The manifest's paths under data/ (a device node only as root: only root makes them).
    assert compare_tree(tmp_path, manifest) == (8 if AS_ROOT else 7)


def test_a_path_the_manifest_does_not_list_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "sub" / "extra").write_text("x")
    error = _refused(tmp_path, manifest)
    assert error.member == "data/crm/sub/extra"
    assert "holds a path the manifest does not list" in error.detail


@pytest.mark.parametrize("rel", ["crm/sub/b.txt", "crm/link", "crm/pipe", "crm/sub"])
def test_a_path_missing_from_the_tree_is_named(tmp_path: Path, rel: str) -> None:
    manifest = _restored(tmp_path)
    path = tmp_path / rel
    if rel == "crm/sub":
        shutil.rmtree(path)
    else:
        path.unlink()
    error = _refused(tmp_path, manifest)
    # The first missing path in the manifest's order: a folder's before its files.
    assert error.member == f"data/{rel}"
    assert error.detail == "missing from the restored tree"


@pytest.mark.skipif(not AS_ROOT, reason="only root makes device nodes")
def test_as_root_a_missing_device_node_is_named(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "null").unlink()
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == ("data/crm/null", "missing from the restored tree")


def test_a_path_of_another_type_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "pipe").unlink()
    (tmp_path / "crm" / "pipe").mkdir(mode=0o640)
    error = _refused(tmp_path, manifest)
    assert error.member == "data/crm/pipe"
    assert error.detail == "restored as a dir, the manifest says fifo"


def test_a_socket_is_of_no_manifest_type(tmp_path: Path) -> None:
    import socket

    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "pipe").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "crm" / "pipe"))
        error = _refused(tmp_path, manifest)
    assert error.detail == "restored as a other, the manifest says fifo"


def test_a_file_of_another_size_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "sub" / "b.txt").write_bytes(b"b" * 299)
    error = _refused(tmp_path, manifest)
    assert error.member == "data/crm/sub/b.txt"
    assert error.detail == "restored with 299 bytes, the manifest says 300"


def test_a_link_to_another_target_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "link").unlink()
    os.symlink("sub/b.txt", tmp_path / "crm" / "link")
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == (
        "data/crm/link",
        "link target differs from the manifest",
    )


def test_another_mode_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    os.chmod(tmp_path / "crm" / "sub" / "b.txt", 0o644)
    error = _refused(tmp_path, manifest)
    assert error.member == "data/crm/sub/b.txt"
    assert error.detail == "mode 644 differs from the manifest's 600"


def test_a_hard_link_restored_as_a_copy_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    hard = tmp_path / "crm" / "hard"
    hard.unlink()
    hard.write_bytes(b"hello")
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == ("data/crm/hard", "not a hard link of data/crm/a.txt")


def test_a_hard_link_whose_first_name_is_not_there_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    entry = manifest.get("data/crm/hard")
    assert entry is not None
    manifest.add(Entry(entry.path, "hardlink", 0, 0, target="data/crm/gone"))
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == ("data/crm/hard", "not a hard link of data/crm/gone")


@pytest.mark.skipif(not AS_ROOT, reason="only root makes device nodes")
def test_as_root_another_device_number_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "null").unlink()
    os.mknod(tmp_path / "crm" / "null", 0o620 | stat.S_IFCHR, os.makedev(1, 5))
    os.chmod(tmp_path / "crm" / "null", 0o620)
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == (
        "data/crm/null",
        "device number differs from the manifest",
    )
