"""Forked readers: the members of small files built by other processes, as the packer would.

``cellvault.readers`` forks children that open, read and hash small files and
build their tar members and manifest entries. What they build must be the
packer's own bytes; what is not a plain file they leave to the packer; a
reader that dies fails the backup clearly; none outlives the pack.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import tarfile
from pathlib import Path
from typing import Any

import attrs
import pytest

import cellvault.readahead as readahead
import cellvault.readers as readers
from cellvault.manifest import Entry, Manifest
from cellvault.readers import Readers, build
from tests.system_tools import unavailable

from .archive_helpers import archive_files, make_vault, read_members, snapshot

ARCHIVE = "crm-20261205T120000Z"
QUOTED = json.dumps(ARCHIVE)


def job(path: Path, member: str, st: os.stat_result | None = None) -> readers.Job:
    return readers.job_of(str(path), member, st or os.lstat(path))


@pytest.fixture
def use_readers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Readers from a cell's first small file on, whatever this process's size; their pids."""
    monkeypatch.setattr(readahead, "FORK_MIN_FILES", 0)
    monkeypatch.setattr(readahead, "FORK_MAX_RSS", 1 << 62)
    pids: list[int] = []
    real_start = Readers.start.__func__  # type: ignore[attr-defined]

    def start(cls: type[Readers], archive: str, *rest: int) -> Readers | None:
        started = real_start(cls, archive, *rest)
        assert started is not None
        pids.extend(child.pid for child in started._children)
        return started

    monkeypatch.setattr(Readers, "start", classmethod(start))
    return pids


def gone(pid: int) -> bool:
    """The process *pid* is no more (reaped: not even a zombie)."""
    return not Path(f"/proc/{pid}").exists()


def test_a_member_is_the_header_bytes_and_padding_and_the_entry_is_entrys(tmp_path: Path) -> None:
    path = tmp_path / "é data"
    body = random.Random(1).randbytes(1234)
    path.write_bytes(body)
    os.chmod(path, 0o4751)  # noqa: S103 - the bits must survive
    os.utime(path, ns=(0, 1_700_000_000_123_456_789))
    st = os.lstat(path)
    built = build(job(path, "data/crm/é data", st), QUOTED)
    assert built is not None
    member, text, size = built
    assert size == 1234
    assert len(member) % 512 == 0
    # Read back by Python's own tar reader, not by cellvault's.
    with tarfile.open(fileobj=io.BytesIO(member + bytes(1024)), mode="r:") as tar:
        (info,) = tar.getmembers()
        assert info.name == "data/crm/é data"
        assert (info.mode, info.uid, info.gid, info.size) == (0o4751, st.st_uid, st.st_gid, 1234)
        assert info.pax_headers["mtime"] == "1700000000.123456789"
        extracted = tar.extractfile(info)
        assert extracted is not None
        assert extracted.read() == body
    entry = Entry(
        path="data/crm/é data",
        type="file",
        mode=0o4751,
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        size=1234,
        sha256=hashlib.sha256(body).hexdigest(),
        archive=ARCHIVE,
        inode=st.st_ino,
        dev=st.st_dev,
        ctime_ns=st.st_ctime_ns,
    )
    assert text == entry.to_json()


def test_an_empty_file_is_a_header_alone(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    os.utime(path, ns=(0, 1_700_000_000_000_000_000))  # whole seconds: no PAX record
    built = build(job(path, "data/crm/empty"), QUOTED)
    assert built is not None
    assert len(built[0]) == 512
    assert json.loads(built[1])["sha256"] == hashlib.sha256(b"").hexdigest()


def _swapped(path: Path) -> None:
    path.rename(path.with_name("old"))  # kept: its inode is not given to the new one
    path.write_bytes(b"x" * 100)  # another inode, same size


def _shrunk(path: Path) -> None:
    os.truncate(path, 10)


def _linked(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/hostname")


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _vanished(path: Path) -> None:
    path.unlink()


def _sparse(path: Path) -> None:
    path.unlink()
    with open(path, "wb") as f:
        f.truncate(100)  # all hole: no block, yet 100 bytes


@pytest.mark.parametrize(
    "change", [_swapped, _shrunk, _linked, _fifo, _vanished, _sparse], ids=lambda f: f.__name__[1:]
)
def test_a_file_not_as_the_walk_saw_it_is_left_to_the_packer(tmp_path: Path, change: Any) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"y" * 100)
    scanned = job(path, "data/crm/f")
    change(path)
    if change is _sparse and os.lstat(path).st_blocks:
        unavailable("this file system gives a 100-byte file of holes a block")
    if change is _sparse:
        scanned = job(path, "data/crm/f")
    assert build(scanned, QUOTED) is None


def test_a_file_with_extended_attributes_is_left_to_the_packer(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"y" * 100)
    try:
        os.setxattr(path, "user.note", b"hi")
    except OSError:
        unavailable("this file system keeps no user.* attributes")
    assert build(job(path, "data/crm/f"), QUOTED) is None


def test_readers_answer_each_batch_and_leave_no_process(tmp_path: Path) -> None:
    paths = []
    for i in range(30):
        path = tmp_path / f"f{i:02}"
        path.write_bytes(bytes([i]) * i * 10)
        paths.append(path)
    started = Readers.start(ARCHIVE, readahead.READ_WHOLE, readahead.RUN_BYTES)
    assert started is not None
    pids = [child.pid for child in started._children]
    assert len(pids) == readers.CHILDREN
    try:
        first = started.idle()
        assert first is not None
        started.send(first, [job(p, f"data/crm/{p.name}") for p in paths[:20]])
        second = started.idle()
        assert second is not None and second is not first
        started.send(second, [job(p, f"data/crm/{p.name}") for p in paths[20:]])
        assert started.idle() is None  # one batch each, at most
        answers = started.take(first) + started.take(second)
    finally:
        started.close()
    assert all(gone(pid) for pid in pids)
    # Member, manifest entry and size: what this process builds of each.
    assert answers == [build(job(p, f"data/crm/{p.name}"), QUOTED) for p in paths]


def test_a_reader_killed_fails_the_take_clearly() -> None:
    started = Readers.start(ARCHIVE, readahead.READ_WHOLE, readahead.RUN_BYTES)
    assert started is not None
    child = started.idle()
    assert child is not None
    pid = child.pid
    try:
        os.kill(pid, signal.SIGKILL)
        # Dead (not reaped): the batch meets a pipe no one reads, and take() says why.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        started.send(child, [("/nonexistent", "data/crm/x", 0o644, 0, 0, 1, 0, 1, 1, 0)])
        with pytest.raises(
            readers.BackupError,
            match=r"the process reading the cell's files was killed by SIGKILL \(out of memory",
        ) as info:
            started.take(child)
        assert info.value.hint == "run the backup again"
    finally:
        started.close()
    assert gone(pid)


def test_readers_start_with_the_children_that_could_be_forked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_fork = readers.fork
    forked: list[int] = []

    def fork_once(work: Any) -> Any:
        if forked:
            return None  # the second fork fails
        got = real_fork(work)
        assert got is not None
        forked.append(got[0])
        return got

    monkeypatch.setattr(readers, "fork", fork_once)
    started = Readers.start(ARCHIVE, readahead.READ_WHOLE, readahead.RUN_BYTES)
    try:
        assert started is not None
        assert [child.pid for child in started._children] == forked
    finally:
        if started is not None:
            started.close()
        for pid in forked:
            if not gone(pid):  # not ended through the Readers: end it here
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    monkeypatch.setattr(readers, "fork", lambda work: None)
    assert Readers.start(ARCHIVE, readahead.READ_WHOLE, readahead.RUN_BYTES) is None


def tree_of(root: Path, files: int) -> Path:
    rnd = random.Random(7)
    for i in range(files):
        folder = root / f"d{i // 40}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:04}.txt").write_bytes(rnd.randbytes(rnd.randrange(0, 3000)))
        os.utime(folder / f"f{i:04}.txt", ns=(0, 1_600_000_000_000_000_001 + i))
    (root / "big.bin").write_bytes(rnd.randbytes(readahead.READ_WHOLE + 5))
    (root / "d1" / "link").symlink_to("/etc/hostname")
    return root


def test_an_archive_built_by_readers_is_the_one_threads_build(
    tmp_path: Path, use_readers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tree_of(tmp_path / "crm", 600)
    made = {}
    for how, first in (("threads", 1 << 62), ("readers", 100)):
        # From the 100th small file on: the first ones by the threads, the rest by readers.
        monkeypatch.setattr(readahead, "FORK_MIN_FILES", first)
        vault = make_vault(tmp_path / how, [src])
        report = vault.backup()
        assert report.ok, report.cells[0].error
        (data,) = archive_files(tmp_path / how)
        made[how] = data
    assert len(use_readers) == readers.CHILDREN  # started once: by the second backup
    threads, forked = (read_members(made[how]) for how in ("threads", "readers"))

    def data(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> list[Any]:
        return [
            (info.get_info(), info.pax_headers, body)
            for info, body in members
            if info.name.startswith("data/")
        ]

    def entries(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> list[Any]:
        (text,) = [body for info, body in members if info.name == "manifest.json"]
        return [
            attrs.evolve(e, archive=None) for e in Manifest.from_json(text or b"").entries.values()
        ]

    # Every data member the same, header and bytes; the same manifest but for the archive ids.
    assert data(threads) == data(forked)
    assert entries(threads) == entries(forked)
    assert len(data(forked)) == 1 + 15 + 600 + 2  # the root, folders, files, big, link
    vault = make_vault(tmp_path / "readers", [src])
    (point,) = vault.list()
    restored = vault.restore(str(point.id), into=tmp_path / "out")
    assert restored.ok
    assert snapshot(tmp_path / "out" / "crm" / "crm") == snapshot(src)


def test_the_readers_end_with_the_pack(tmp_path: Path, use_readers: list[int]) -> None:
    src = tree_of(tmp_path / "crm", 300)
    report = make_vault(tmp_path / "backup", [src]).backup()
    assert report.ok
    assert len(use_readers) == readers.CHILDREN
    assert all(gone(pid) for pid in use_readers)


def _files(batch: list[Any]) -> list[tuple[str, int | None]]:
    """The files a batch names: (path, the size the walk saw, or None for a run's)."""
    out: list[tuple[str, int | None]] = []
    for one in batch:
        if len(one) == 3:  # a run: folder, member folder, names
            out += [(one[0] + name, None) for name in one[2]]
        else:
            out.append((one[0], one[5]))
    return out


def test_readers_have_one_bounded_batch_each(
    tmp_path: Path, use_readers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readahead, "FORK_BATCH", 16)
    monkeypatch.setattr(readahead, "FORK_BYTES", 8 << 10)
    sent: list[tuple[bool, list[tuple[str, int | None]]]] = []
    real_send = Readers.send

    def counting(self: Readers, child: Any, batch: list[Any]) -> None:
        sent.append((child.busy, _files(batch)))
        real_send(self, child, batch)

    monkeypatch.setattr(Readers, "send", counting)
    src = tree_of(tmp_path / "crm", 400)
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    # The full backup: runs of each folder's files, not stat-ed by the walk.
    assert sorted(path for _, files in sent for path, _ in files) == sorted(
        str(p) for p in src.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert all(size is None for _, files in sent for _, size in files)
    assert not any(busy for busy, _ in sent)
    # A run is cut at FORK_BATCH names, a batch sent once it holds that many.
    assert all(len(files) < 2 * 16 for _, files in sent)
    # An incremental after every file changed: files the walk stat-ed, bounded by bytes too.
    sent.clear()
    for p in src.rglob("*.txt"):
        os.utime(p, ns=(0, 1_700_000_000_000_000_000))
    assert vault.backup(kind="incremental").ok
    assert sum(len(files) for _, files in sent) == 400
    assert not any(busy for busy, _ in sent)
    largest = max(p.stat().st_size for p in src.rglob("*.txt"))
    for _, files in sent:
        assert len(files) <= 16
        # At most the file that crossed the bound past it.
        assert sum(size or 0 for _, size in files) < (8 << 10) + largest


def test_a_run_is_built_in_parts_around_the_files_left_to_the_packer(tmp_path: Path) -> None:
    names = [f"f{i}" for i in range(7)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([65 + i]) * (100 * (i + 1)))
    os.link(tmp_path / "f2", tmp_path / "other")  # f2: a hard link's group
    one = {
        name: build(job(tmp_path / name, f"data/crm/{name}"), QUOTED)
        for name in names
        if name not in ("f2", "f4")
    }
    (tmp_path / "f4").unlink()  # f4: gone since the listing
    parts = readers.build_run((f"{tmp_path}/", "data/crm/", names), QUOTED, 4096, 1 << 20)

    def part(*built: str) -> tuple[bytes, list[str], int]:
        # The members built one after the other: their bytes joined, entries, total size.
        got = [one[name] for name in built]
        return (
            b"".join(b[0] for b in got),  # type: ignore[index]
            [b[1] for b in got],  # type: ignore[index]
            sum(b[2] for b in got),  # type: ignore[index]
        )

    assert parts == [part("f0", "f1"), "f2", part("f3"), "f4", part("f5", "f6")]
    assert [p[2] for p in parts if not isinstance(p, str)] == [300, 400, 1300]


def test_a_file_of_the_largest_size_is_built_and_one_byte_more_is_left(tmp_path: Path) -> None:
    (tmp_path / "at").write_bytes(b"a" * 4096)
    (tmp_path / "over").write_bytes(b"o" * 4097)
    parts = readers.build_run((f"{tmp_path}/", "data/crm/", ["at", "over"]), QUOTED, 4096, 1 << 20)
    assert [p if isinstance(p, str) else len(p[1]) for p in parts] == [1, "over"]


def test_a_file_with_a_hole_at_its_end_is_left_to_the_packer(tmp_path: Path) -> None:
    # Its blocks hold less than its size: sparse, whose holes the packer maps.
    path = tmp_path / "tail"
    with open(path, "wb") as f:
        f.write(b"t" * 4096)
        f.truncate(4097)
    st = os.lstat(path)
    if st.st_blocks * 512 >= st.st_size:
        unavailable("this file system allocates a file's hole at its end")
    assert build(job(path, "data/crm/tail"), QUOTED) is None
    parts = readers.build_run((f"{tmp_path}/", "data/crm/", ["tail"]), QUOTED, 1 << 20, 1 << 20)
    assert parts == ["tail"]


def test_a_reader_answers_runs_within_its_budget(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"f{i}").write_bytes(b"x" * 1000)
    names = [f"f{i}" for i in range(10)]
    parts = readers.build_run((f"{tmp_path}/", "data/crm/", names), QUOTED, 4096, 2500)
    # 1000, 2000, 3000 bytes built: the budget is crossed by the third, the rest left.
    assert [p if isinstance(p, str) else len(p[1]) for p in parts] == [3, *names[3:]]
    larger = readers.build_run((f"{tmp_path}/", "data/crm/", names), QUOTED, 999, 1 << 20)
    assert larger == names  # each over *largest*
    # A budget met exactly: the file after it is left too.
    exact = readers.build_run((f"{tmp_path}/", "data/crm/", names), QUOTED, 4096, 2000)
    assert [p if isinstance(p, str) else len(p[1]) for p in exact] == [2, *names[2:]]


def test_an_entry_with_extended_attributes_is_entrys_text() -> None:
    # file_entry is the packer's too, for files with attributes (readers leave those).
    pairs = (("user.a", "eA=="), ("user.b", "eQ=="))
    text = readers.file_entry(
        "data/crm/x", 0o644, 5, 1, 2, 3, "ab" * 32, QUOTED, 7, 8, 9, xattrs=pairs
    )
    entry = Entry(
        path="data/crm/x",
        type="file",
        mode=0o644,
        mtime_ns=5,
        uid=1,
        gid=2,
        size=3,
        sha256="ab" * 32,
        archive=ARCHIVE,
        inode=7,
        dev=8,
        ctime_ns=9,
        xattrs=pairs,
    )
    assert text == entry.to_json()
    assert json.loads(text)["xattrs"] == {"user.a": "eA==", "user.b": "eQ=="}


def test_a_reader_killed_mid_backup_fails_it_and_commits_nothing(
    tmp_path: Path, use_readers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_send = Readers.send
    batches = {"n": 0}

    def killing(self: Readers, child: Any, jobs: list[readers.Job]) -> None:
        batches["n"] += 1
        if batches["n"] == 3:
            os.kill(child.pid, signal.SIGKILL)
        real_send(self, child, jobs)

    monkeypatch.setattr(readahead, "FORK_BATCH", 32)
    monkeypatch.setattr(Readers, "send", killing)
    src = tree_of(tmp_path / "crm", 300)
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert not report.ok
    (cell,) = report.cells
    assert cell.stage == "pack"
    assert "the process reading the cell's files was killed by SIGKILL" in (cell.error or "")
    assert vault.list() == []
    assert all(gone(pid) for pid in use_readers)
    spool = tmp_path / "backup" / ".cellvault" / "spool"
    assert not [p for p in spool.rglob("*") if p.is_file()]


def test_a_big_process_reads_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "FORK_MIN_FILES", 0)
    monkeypatch.setattr(readahead, "FORK_MAX_RSS", 1)  # every process is bigger
    starts = []
    real_start = Readers.start.__func__  # type: ignore[attr-defined]

    def start(cls: type[Readers], archive: str, *rest: int) -> Readers | None:
        starts.append(archive)
        return real_start(cls, archive, *rest)

    monkeypatch.setattr(Readers, "start", classmethod(start))
    src = tree_of(tmp_path / "crm", 50)
    assert make_vault(tmp_path / "backup", [src]).backup().ok
    assert starts == []
