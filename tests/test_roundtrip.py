"""Backup then restore reproduces the data exactly: names, types, bytes, modes, times, links."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.system_tools import needs_root

from .archive_helpers import make_vault, snapshot

# -- generated trees ------------------------------------------------------------------------

names = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
        min_size=1,
        max_size=10,
    )
    .filter(lambda n: n not in (".", ".."))
    .filter(lambda n: len(n.encode()) <= 255)
)
file_modes = st.sampled_from([0o600, 0o644, 0o640, 0o755, 0o700, 0o444, 0o400, 0o4755, 0o2755])
dir_modes = st.sampled_from([0o700, 0o755, 0o750, 0o775, 0o1777, 0o2755])
mtimes = st.integers(min_value=0, max_value=4_102_444_800 * 10**9)  # 1970 .. 2100, to the ns
contents = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(1, 40_000)),
)


@st.composite
def trees(draw: st.DrawFn) -> dict[str, tuple]:  # type: ignore[type-arg]
    """A tree as {relative posix path: spec}; the root is ``"."``.

    Specs: ("dir", mode, mtime_ns), ("file", mode, mtime_ns, bytes),
    ("symlink", target, mtime_ns). Links are relative: to a path of the tree
    (possibly another link, or a directory) or dangling inside it.
    """
    nodes: dict[str, tuple] = {".": ("dir", draw(dir_modes), draw(mtimes))}  # type: ignore[type-arg]
    planned = draw(
        st.lists(
            st.tuples(
                st.lists(names, min_size=1, max_size=6),
                st.sampled_from(["file", "file", "dir", "symlink"]),
            ),
            max_size=14,
        )
    )
    links: list[str] = []
    for parts, kind in planned:
        path = "/".join(parts)
        # A path below a file or a link, or one that exists already, is impossible.
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if path in nodes or any(nodes.get(p, ("dir",))[0] != "dir" for p in prefixes):
            continue
        for prefix in prefixes:
            if prefix not in nodes:
                nodes[prefix] = ("dir", draw(dir_modes), draw(mtimes))
        if kind == "file":
            nodes[path] = ("file", draw(file_modes), draw(mtimes), draw(contents))
        elif kind == "dir":
            nodes[path] = ("dir", draw(dir_modes), draw(mtimes))
        else:
            nodes[path] = ("symlink", "", draw(mtimes))
            links.append(path)
    existing = sorted(nodes)
    for link in links:
        here = PurePosixPath(link).parent
        if draw(st.booleans()):
            to = draw(st.sampled_from(existing))
            target = os.path.relpath(to, here.as_posix())
        else:
            target = "missing-" + draw(names)  # dangling, inside the tree
            if draw(st.booleans()) and here != PurePosixPath("."):
                target = "../" + target
        nodes[link] = ("symlink", target, nodes[link][2])
    return nodes


def build(root: Path, nodes: dict[str, tuple]) -> None:  # type: ignore[type-arg]
    root.mkdir(parents=True)
    for rel in sorted(nodes, key=lambda p: p.count("/")):
        spec, path = nodes[rel], root / rel
        if rel == ".":
            continue
        if spec[0] == "dir":
            path.mkdir(exist_ok=True)
        elif spec[0] == "file":
            path.write_bytes(spec[3])
        else:
            path.symlink_to(spec[1])
    # Modes and times last, deepest first, so creating children does not move them.
    for rel in sorted(nodes, key=lambda p: (p != ".", p.count("/")), reverse=True):
        spec, path = nodes[rel], root / rel
        if spec[0] == "symlink":
            os.utime(path, ns=(spec[2], spec[2]), follow_symlinks=False)
        else:
            path.chmod(spec[1])
            os.utime(path, ns=(spec[2], spec[2]))


def check_spec(root: Path, nodes: dict[str, tuple]) -> None:  # type: ignore[type-arg]
    snap = snapshot(root)
    assert set(snap) == set(nodes)
    for rel, spec in nodes.items():
        got = snap[rel]
        if spec[0] == "file":
            assert got == ("file", spec[1], spec[2], spec[3]), rel
        elif spec[0] == "dir":
            assert got == ("dir", spec[1], spec[2]), rel
        else:
            assert got == ("symlink", spec[1], spec[2]), rel


def mutate(root: Path) -> None:
    """Change the live data after the backup: the in-place restore must undo all of it."""
    (root / "zz-added-after-backup").write_bytes(b"new")
    for path in sorted(root.rglob("*"), key=str):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)
            path.write_bytes(b"changed")
            break
    for path in sorted(root.iterdir(), key=str):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            break
    root.chmod(0o700)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(nodes=trees())
def test_backup_restore_reproduces_generated_trees(nodes: dict[str, tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        src = base / "cells" / "crm"
        build(src, nodes)
        check_spec(src, nodes)  # the tree is what was generated
        original = snapshot(src)
        vault = make_vault(base / "backup", [src])
        report = vault.backup()
        assert report.ok, report.cells[0].error
        ident = report.cells[0].archive
        assert report.cells[0].warnings == ()

        # Into another directory.
        into = vault.restore(ident, into=base / "restored")
        assert into.ok, into.error or into.cells[0].error
        assert snapshot(base / "restored" / "crm" / "crm") == original

        # In place, after the live data changed.
        mutate(src)
        assert snapshot(src) != original
        in_place = vault.restore(ident)
        assert in_place.ok, in_place.error or in_place.cells[0].error
        assert in_place.cells[0].safety_backup
        assert snapshot(src) == original
        assert sorted(p.name for p in src.parent.iterdir()) == ["crm"]  # no staging left
        assert vault.verify(all_archives=True).ok


# -- fixed cases ------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cells" / "crm"
    nodes = {
        ".": ("dir", 0o755, 1_600_000_000_000_000_001),
        "数据": ("dir", 0o700, 1_600_000_000_999_999_999),
        "数据/表 1.csv": ("file", 0o600, 1_700_000_000_123_456_789, b"a,b\n1,2\n"),
        "数据/deep/er/and/deeper/still/x": ("file", 0o444, 5, b"x" * 100_000),
        "empty": ("file", 0o644, 7, b""),
        "empty-dir": ("dir", 0o755, 9),
        "run.sh": ("file", 0o755, 11, b"#!/bin/sh\necho hi\n"),
        "link-in": ("symlink", "数据/表 1.csv", 13),
        "link-dir": ("symlink", "empty-dir", 15),
        "link-dangling": ("symlink", "not/there", 17),
        "数据/deep/up": ("symlink", "../../run.sh", 19),
        "🙂 ünïcødé\nnewline\\back": ("file", 0o640, 21, b"\x00\xff" * 10),
    }
    deep = "/".join(f"level{i:02d}" for i in range(40))  # 40 levels, 319 characters
    nodes[f"{deep}/bottom"] = ("file", 0o644, 25, b"deep")
    nodes["n" * 255] = ("file", 0o644, 27, b"longest name")  # NAME_MAX bytes
    nodes["名" * 85] = ("dir", 0o755, 29)  # 255 bytes of UTF-8
    for rel in list(nodes):
        for i in range(1, rel.count("/") + 1):
            prefix = "/".join(rel.split("/")[:i])
            nodes.setdefault(prefix, ("dir", 0o755, 23 + i))
    build(root, nodes)
    return root


def test_fixed_tree_round_trip_into_and_in_place(tmp_path: Path, tree: Path) -> None:
    original = snapshot(tree)
    vault = make_vault(tmp_path / "backup", [tree])
    ident = vault.backup().cells[0].archive
    assert vault.restore(into=tmp_path / "out").ok
    assert snapshot(tmp_path / "out" / "crm" / "crm") == original
    shutil.rmtree(tree / "数据")
    (tree / "run.sh").write_text("changed")
    report = vault.restore(ident)
    assert report.ok, report.cells[0].error
    assert snapshot(tree) == original


def test_restore_when_live_data_is_gone(tmp_path: Path, tree: Path) -> None:
    original = snapshot(tree)
    vault = make_vault(tmp_path / "backup", [tree])
    assert vault.backup().ok
    shutil.rmtree(tree)
    report = vault.restore()
    assert report.ok, report.cells[0].error
    assert report.cells[0].safety_backup is None  # nothing to save
    assert snapshot(tree) == original


def test_cell_with_several_paths_and_a_single_file(tmp_path: Path, tree: Path) -> None:
    conf = tmp_path / "etc" / "crm.conf"
    conf.parent.mkdir()
    conf.write_text("port = 1\n")
    conf.chmod(0o640)
    os.utime(conf, ns=(123_456_789, 123_456_789))
    logs = tmp_path / "var" / "logs-crm"
    logs.mkdir(parents=True)
    (logs / "a.log").write_text("log\n")
    snaps = {p: snapshot(p) for p in (tree, conf, logs)}
    vault = make_vault(tmp_path / "backup", [tree, conf, logs])
    ident = vault.backup().cells[0].archive
    out = vault.restore(into=tmp_path / "out")
    assert out.ok, out.cells[0].error
    assert snapshot(tmp_path / "out" / "crm" / "crm") == snaps[tree]
    assert snapshot(tmp_path / "out" / "crm" / "crm.conf") == snaps[conf]
    assert snapshot(tmp_path / "out" / "crm" / "logs-crm") == snaps[logs]
    conf.write_text("port = 2\n")
    shutil.rmtree(logs)
    (tree / "new").write_text("x")
    report = vault.restore(ident)
    assert report.ok, report.cells[0].error
    for path, snap in snaps.items():
        assert snapshot(path) == snap


def test_incremental_chain_round_trip(tmp_path: Path, tree: Path) -> None:
    vault = make_vault(tmp_path / "backup", [tree])
    first = snapshot(tree)
    full = vault.backup(kind="full").cells[0]
    (tree / "run.sh").write_text("v2")
    (tree / "empty").unlink()
    (tree / "added").write_bytes(b"added")
    second = snapshot(tree)
    inc = vault.backup(kind="incremental").cells[0]
    assert inc.kind == "incremental"
    assert inc.parent == full.archive
    assert vault.verify(all_archives=True).ok
    assert vault.restore(inc.archive, into=tmp_path / "b").ok
    assert snapshot(tmp_path / "b" / "crm" / "crm") == second
    assert vault.restore(full.archive, into=tmp_path / "a").ok
    assert snapshot(tmp_path / "a" / "crm" / "crm") == first


def owners(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_uid, st.st_gid, st.st_mode)
    return out


def give_away(root: Path) -> None:
    for i, path in enumerate(sorted([root, *root.rglob("*")], key=lambda p: -len(p.parts))):
        mtime = path.lstat().st_mtime_ns
        os.chown(path, 1000 + i, 2000 + i, follow_symlinks=False)
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


def test_owners_and_setuid_bits_are_restored(tmp_path: Path, tree: Path) -> None:
    needs_root("restore owners")
    (tree / "suid").write_text("#!/bin/sh\n")
    give_away(tree)
    (tree / "suid").chmod(0o4755)  # after chown, which clears it
    extra = [tree]
    shm = Path("/dev/shm")
    other = None
    if shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev:
        # A second path of the cell on another file system: its staged copy is moved across.
        other = Path(tempfile.mkdtemp(dir=shm)) / "crm-shm"
        (other / "sub").mkdir(parents=True)
        (other / "sub" / "f").write_text("on tmpfs")
        (other / "link").symlink_to("sub/f")
        (other / "sgid").write_text("x")
        give_away(other)
        (other / "sgid").chmod(0o2750)
        extra.append(other)
    try:
        want = {p: (snapshot(p), owners(p)) for p in extra}
        vault = make_vault(tmp_path / "backup", extra)
        ident = vault.backup().cells[0].archive
        for path in extra:
            shutil.rmtree(path / "sub" if (path / "sub").exists() else path / "数据")
            (path / "suid" if path == tree else path / "sgid").chmod(0o644)
        report = vault.restore(ident)
        assert report.ok, report.cells[0].error
        for path, (snap, own) in want.items():
            assert snapshot(path) == snap
            assert owners(path) == own
        if other is not None:
            assert sorted(p.name for p in other.parent.iterdir()) == ["crm-shm"]
    finally:
        if other is not None:
            shutil.rmtree(other.parent)


def test_names_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    # Legacy systems keep GBK (or Latin-1) file names: bytes that are not UTF-8.
    src = tmp_path / "cells" / "crm"
    src.mkdir(parents=True)
    gbk, latin = "数据".encode("gbk"), b"latin-\xe9"
    (src / os.fsdecode(gbk)).write_bytes(b"gbk name")
    (src / os.fsdecode(latin)).mkdir()
    (src / os.fsdecode(latin) / "link").symlink_to(os.fsdecode(gbk))
    original = snapshot(src)
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    assert vault.verify().ok
    assert vault.restore(into=tmp_path / "out").ok
    out = tmp_path / "out" / "crm" / "crm"
    assert snapshot(out) == original
    assert sorted(os.fsencode(p.name) for p in out.iterdir()) == sorted([gbk, latin])
    (src / "new").write_text("x")
    assert vault.restore(ident).ok
    assert snapshot(src) == original
