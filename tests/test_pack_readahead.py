"""Reading ahead while packing: same archive, same errors, bounded, and no thread left behind.

The packer opens and reads the next files on a few threads (``readahead.ReadAhead``)
while it compresses the ones before. Nothing of that may show: members come in
walk order, errors of a read-ahead thread surface in the packer with the
messages a direct read gave, and every thread and file is closed when ``pack``
returns or fails.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import cellvault.pack as pack
import cellvault.readahead as readahead
import cellvault.readers as readers
import cellvault.walk as walk
from cellvault import Manifest
from cellvault.readahead import FileSource as _FileSource
from cellvault.readahead import Opened as _Opened
from cellvault.readahead import ReadAhead as _ReadAhead

from .archive_helpers import archive_files, make_vault, read_members, snapshot


def read_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cellvault-read")]


def open_under(root: Path) -> list[str]:
    """Files under *root* that this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if target.startswith(f"{root}/"):
            held.append(target)
    return held


#: Larger than what a read-ahead thread reads whole, when it reads any whole.
WHOLE = 256 << 10


@pytest.fixture(
    autouse=True,
    params=[(0, False), (WHOLE, False), (WHOLE, True)],
    ids=["kernel-read-ahead", "read-whole", "forked-readers"],
)
def read_whole(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Each test three times: files only opened ahead, small files read whole by a
    thread, and small files built by forked readers (:mod:`cellvault.readers`)
    from the first one on."""
    whole, forked = request.param
    monkeypatch.setattr(readahead, "READ_WHOLE", whole)
    monkeypatch.setattr(readahead, "FORK_MIN_FILES", 0 if forked else 1 << 62)
    monkeypatch.setattr(readahead, "FORK_MAX_RSS", 1 << 62)  # a long test run grows
    return int(whole)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Many small files around a few larger than what is read whole, in nested folders."""
    root = tmp_path / "cells" / "crm"
    rnd = random.Random(4)
    for d in range(6):
        folder = root / f"d{d}" / "sub"
        folder.mkdir(parents=True)
        for i in range(40):
            (folder / f"f{i:02}.txt").write_bytes(rnd.randbytes(rnd.randrange(0, 9000)))
    (root / "big.bin").write_bytes(rnd.randbytes(WHOLE * 3 + 17))
    (root / "d3" / "edge.bin").write_bytes(rnd.randbytes(WHOLE))
    (root / "d3" / "past-edge.bin").write_bytes(rnd.randbytes(WHOLE + 1))
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("big.bin")
    return root


def walk_order(root: Path) -> list[str]:
    """Member names in the order a sorted depth-first walk gives."""
    out = ["data/crm"]

    def visit(folder: Path, member: str) -> None:
        for name in sorted(os.listdir(folder)):
            path = folder / name
            out.append(f"{member}/{name}")
            if path.is_dir() and not path.is_symlink():
                visit(path, f"{member}/{name}")

    visit(root, "data/crm")
    return out


def test_members_in_walk_order_with_their_bytes(tmp_path: Path, tree: Path) -> None:
    vault = make_vault(tmp_path / "backup", [tree])
    report = vault.backup()
    assert report.ok
    assert not read_threads()
    assert not open_under(tree)
    (data,) = archive_files(tmp_path / "backup")
    members = read_members(data)
    names = [info.name for info, _ in members]
    assert names == ["meta.json", *walk_order(tree), "manifest.json"]
    for info, body in members:
        if info.isreg() and info.name.startswith("data/"):
            assert body == (tree / info.name.removeprefix("data/crm/")).read_bytes(), info.name
    restored = vault.restore(report.cells[0].archive or "", into=tmp_path / "out")
    assert restored.ok
    assert snapshot(tmp_path / "out" / "crm" / "crm") == snapshot(tree)


def test_reads_stay_within_the_budget(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The threads' window (the readers' is tests/test_readers.py's
    # test_readers_have_one_bounded_batch_each): no readers here.
    monkeypatch.setattr(readahead, "FORK_MIN_FILES", 1 << 62)
    # A small budget and a slow writer: the threads would run far ahead if unbounded.
    monkeypatch.setattr(readahead, "READ_BUDGET", 64 << 10)
    monkeypatch.setattr(readahead, "READ_ITEMS", 16)
    lock = threading.Lock()
    held = {"bytes": 0, "items": 0, "max_bytes": 0, "max_items": 0}
    real_open = readahead.open_ahead

    def counting_open(path: str, size: int) -> _Opened:
        opened = real_open(path, size)
        with lock:
            held["bytes"] += min(size, readahead.READ_WINDOW)
            held["items"] += 1
            held["max_bytes"] = max(held["max_bytes"], held["bytes"])
            held["max_items"] = max(held["max_items"], held["items"])
        return opened

    real_add = pack.Packer._add_file

    def slow_add(self: pack.Packer, tar: Any, item: Any, future: Any) -> None:
        future.result()  # wait for it, so that only what was taken is subtracted
        time.sleep(0.002)  # a slow writer: the threads get ahead as far as they may
        with lock:
            held["bytes"] -= min(item[3].st_size, readahead.READ_WINDOW)
            held["items"] -= 1
        real_add(self, tar, item, future)

    monkeypatch.setattr(readahead, "open_ahead", counting_open)
    monkeypatch.setattr(pack.Packer, "_add_file", slow_add)
    assert make_vault(tmp_path / "backup", [tree]).backup().ok
    assert held["items"] == 0
    # At most the budget, plus the one file that crossed it.
    assert held["max_bytes"] <= (64 << 10) + readahead.READ_WINDOW
    assert held["max_items"] <= 16
    assert held["max_items"] > 1  # it did read ahead


def test_a_file_that_vanishes_before_its_read_is_skipped_with_a_warning(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tree / "d2" / "sub" / "f07.txt"
    real_open = readahead.open_ahead
    real_open_fd = readers.open_scanned_fd

    def vanishing(path: str, size: int) -> _Opened:
        if path == str(gone):
            gone.unlink(missing_ok=True)
        return real_open(path, size)

    def vanishing_fd(path: str) -> tuple[int, os.stat_result]:
        if path == str(gone):  # in a forked reader
            gone.unlink(missing_ok=True)
        return real_open_fd(path)

    monkeypatch.setattr(readahead, "open_ahead", vanishing)
    monkeypatch.setattr(readers, "open_scanned_fd", vanishing_fd)
    vault = make_vault(tmp_path / "backup", [tree])
    report = vault.backup()
    assert report.ok
    (cell,) = report.cells
    assert any(str(gone) in w and "vanished" in w for w in cell.warnings)
    (data,) = archive_files(tmp_path / "backup")
    names = {info.name for info, _ in read_members(data)}
    assert "data/crm/d2/sub/f07.txt" not in names
    assert "data/crm/d2/sub/f08.txt" in names
    assert cell.bytes_total == sum(
        p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
    )


@pytest.mark.parametrize("where", ["small", "large"])
def test_permission_denied_in_a_thread_fails_the_pack_with_its_hint(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Faked: the tests may run as root, who reads everything.
    denied = tree / ("d4/sub/f11.txt" if where == "small" else "big.bin")
    real_open = os.open

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(denied):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    # Files are opened with os.open (O_NOFOLLOW | O_NONBLOCK), then checked.
    monkeypatch.setattr(pack.os, "open", guarded_open)
    vault = make_vault(tmp_path / "backup", [tree])
    report = vault.backup()
    assert not report.ok
    (cell,) = report.cells
    assert cell.stage == "pack"
    assert f"cannot read {denied}: permission denied" in (cell.error or "")
    assert not read_threads()
    assert not open_under(tree)
    assert vault.list() == []


def test_an_interrupt_stops_the_threads_and_closes_the_files(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_write = pack.TarWriter.write

    def interrupted(self: pack.TarWriter, data: bytes) -> None:
        calls["n"] += 1
        # Well inside the walk, with reads in flight (a reader's run is one write).
        if calls["n"] == 10:
            raise KeyboardInterrupt
        real_write(self, data)

    monkeypatch.setattr(pack.TarWriter, "write", interrupted)
    vault = make_vault(tmp_path / "backup", [tree])
    with pytest.raises(KeyboardInterrupt):
        vault.backup()
    assert not read_threads()
    assert not open_under(tree)
    spool = tmp_path / "backup" / ".cellvault" / "spool"
    assert not [p for p in spool.rglob("*") if p.is_file()]


def test_close_drops_what_was_read_and_not_taken(tmp_path: Path) -> None:
    paths = []
    for i in range(8):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * (readahead.READ_WHOLE + 1))  # kept open by the read-ahead
        paths.append(path)
    ahead = _ReadAhead(threads=2)
    items = iter([(walk.FILE, str(p), p.name, p.stat(), None) for p in paths])
    through = ahead.items(items)
    _, future = next(through)
    assert future is not None
    assert future.result().source.remaining == readahead.READ_WHOLE + 1
    assert read_threads()
    assert open_under(tmp_path)  # the files opened ahead, taken or not
    future.result().source.raw.close()  # what the packer does with the one it took
    ahead.close()
    assert not read_threads()
    assert not open_under(tmp_path)


def test_a_file_that_grows_is_stored_at_its_scanned_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    (src / "log").write_bytes(b"a" * 1000)
    real_read = _FileSource.read
    real_open = readahead.open_scanned_fd

    def grow() -> None:
        with open(src / "log", "ab") as f:
            f.write(b"b" * 500)

    def growing(self: _FileSource, n: int = -1) -> bytes:
        grow()  # appended while it is read
        return real_read(self, n)

    def growing_open(path: str, st: Any = None) -> Any:
        opened = real_open(path, st)
        grow()  # appended between the open and the read of a file read whole
        return opened

    monkeypatch.setattr(_FileSource, "read", growing)
    monkeypatch.setattr(readahead, "open_scanned_fd", growing_open)
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert report.ok
    monkeypatch.undo()
    (data,) = archive_files(tmp_path / "backup")
    members = {info.name: body for info, body in read_members(data)}
    assert members["data/crm/log"] == b"a" * 1000
    manifest = Manifest.from_json(members["manifest.json"] or b"")
    entry = manifest.get("data/crm/log")
    assert entry is not None
    assert entry.size == 1000
    assert entry.sha256 == hashlib.sha256(b"a" * 1000).hexdigest()
    assert vault.verify().ok


def test_checksum_mode_reads_small_and_large_files_once_each_way(
    tmp_path: Path, tree: Path
) -> None:
    vault = make_vault(tmp_path / "backup", [tree], checksum=True)
    assert vault.backup().ok
    big = tree / "big.bin"
    small = tree / "d1" / "sub" / "f03.txt"
    for path in (big, small):
        st = path.stat()
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1  # same size, same mtime: only the checksum sees it
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = vault.backup(kind="incremental")
    assert report.ok
    assert report.cells[0].files == 2
    restored = vault.restore(report.cells[0].archive or "", into=tmp_path / "out")
    assert restored.ok
    assert snapshot(tmp_path / "out" / "crm" / "crm") == snapshot(tree)


def test_larger_files_held_open_ahead_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    rnd = random.Random(6)
    for i in range(24):
        (src / f"big{i:02}").write_bytes(rnd.randbytes(readahead.READ_WHOLE + 100))
    monkeypatch.setattr(readahead, "READ_OPEN", 3)
    # The threads' window: a full backup's walk past FORK_MIN_FILES paths does
    # not stat its files, and larger ones are then opened as they come.
    monkeypatch.setattr(readahead, "FORK_MIN_FILES", 1 << 62)
    lock = threading.Lock()
    state = {"open": 0, "max": 0}
    real_open = readahead.open_ahead

    def counting_open(path: str, size: int) -> _Opened:
        opened = real_open(path, size)
        with lock:
            state["open"] += 1
            state["max"] = max(state["max"], state["open"])
        return opened

    real_add = pack.Packer._add_file

    def taking_add(self: pack.Packer, tar: Any, item: Any, future: Any) -> None:
        future.result()
        time.sleep(0.01)  # a slow writer: the threads get ahead as far as they may
        with lock:
            state["open"] -= 1
        real_add(self, tar, item, future)

    monkeypatch.setattr(readahead, "open_ahead", counting_open)
    monkeypatch.setattr(pack.Packer, "_add_file", taking_add)
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert report.ok
    assert report.cells[0].files == 24
    assert 1 < state["max"] <= 3


def test_small_files_keep_their_attributes_and_holes(tmp_path: Path) -> None:
    # Read whole by the thread (attributes read through the open descriptor), or
    # opened ahead when nothing is read whole; a small sparse file is never read
    # whole: its holes stay holes.
    src = tmp_path / "crm"
    src.mkdir()
    (src / "tagged.txt").write_bytes(b"small and tagged\n")
    os.setxattr(src / "tagged.txt", "user.colour", b"blue")
    with open(src / "holes.img", "wb") as f:
        f.truncate(48 << 10)
        f.seek(40 << 10)
        f.write(b"after a hole")
    assert os.stat(src / "holes.img").st_blocks * 512 < 48 << 10
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert report.ok
    assert report.cells[0].files == 2
    (data,) = archive_files(tmp_path / "backup")
    members = {info.name: info for info, _ in read_members(data)}
    assert members["data/crm/tagged.txt"].pax_headers["SCHILY.xattr.user.colour"] == "blue"
    assert members["data/crm/holes.img"].pax_headers["GNU.sparse.major"] == "1"
    restored = vault.restore(report.cells[0].archive or "", into=tmp_path / "out")
    assert restored.ok
    out = tmp_path / "out" / "crm" / "crm"
    assert os.getxattr(out / "tagged.txt", "user.colour") == b"blue"
    assert (out / "holes.img").read_bytes() == (src / "holes.img").read_bytes()
    assert os.stat(out / "holes.img").st_blocks == os.stat(src / "holes.img").st_blocks
    assert not read_threads()
    assert not open_under(src)
