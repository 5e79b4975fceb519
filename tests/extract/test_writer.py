"""The forked writer of small files: what it meets is raised, and it never outlives a take.

A restore hands the small files it has read and checked to a child process
(:class:`~cellvault.extract.writer.FileWriter`) that creates them. The rules
of the staging tree hold with it (``tests/extract/test_stage.py`` and
``test_dirfds.py`` run both ways); these are the writer's own: a failure on
either side ends the child before the take returns, a child that fails or
dies is an error naming the cause, and without ``fork`` the files are made
in the restoring process.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import time
from pathlib import Path

import pytest

from cellvault import ArchiveCorrupt, forking
from cellvault.extract import stage, writer
from cellvault.extract.writer import FileWriter
from tests.archive_helpers import dir_entry, file_entry, member

from .test_stage import staged
from .test_tarread import ARCHIVE, DATA, blocks, folder

NAMES = [f"data/crm/f{i}" for i in range(6)]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[FileWriter | None]:
    """Every archive uses the writer; the writers started, in order."""
    monkeypatch.setattr(stage, "WRITER_MIN_FILES", 0)
    found: list[FileWriter | None] = []
    start = FileWriter.start

    def spy(*args: object, **kwargs: object) -> FileWriter | None:
        made = start(*args, **kwargs)  # type: ignore[arg-type]
        found.append(made)
        return made

    monkeypatch.setattr(FileWriter, "start", spy)
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_writer_makes_the_files_and_is_reaped(
    tmp_path: Path, started: list[FileWriter | None]
) -> None:
    middle = folder() + b"".join(blocks(*member(n, DATA, mode=0o640)) for n in NAMES)
    entries = [dir_entry("data/crm"), *(file_entry(n, DATA, ARCHIVE, mode=0o640) for n in NAMES)]
    tree, stream = staged(middle, entries, tmp_path)
    tree.prepare()
    tree.take(stream)
    tree.finish()
    [made] = started
    assert made is not None and made.sent == len(NAMES)
    for name in NAMES:
        path = tmp_path / "staging" / name.removeprefix("data/")
        st = path.stat()
        assert (path.read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns) == (
            DATA,
            0o640,
            1_700_000_000 * 10**9,
        )
    assert (tree.files, tree.bytes) == (len(NAMES), len(NAMES) * len(DATA))


def test_a_take_that_fails_ends_its_writer_before_it_returns(
    tmp_path: Path, started: list[FileWriter | None]
) -> None:
    """The caller removes the staging tree next: no child may still be making files in it."""
    stored = [member(n, DATA) for n in NAMES[:3]] + [member(NAMES[3], b"other data")]
    middle = folder() + b"".join(blocks(*m) for m in stored)
    entries = [dir_entry("data/crm"), *(file_entry(n, DATA, ARCHIVE) for n in NAMES[:4])]
    tree, stream = staged(middle, entries, tmp_path)
    tree.prepare()
    pids: list[int] = []
    add = FileWriter.add

    def note(self: FileWriter, record: writer.Record) -> None:
        pids.extend(self.pids)
        add(self, record)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FileWriter, "add", note)
        with pytest.raises(ArchiveCorrupt) as info:
            tree.take(stream)
    assert info.value.member == NAMES[3]
    assert pids and all(_gone(pid) for pid in set(pids))


def test_what_the_writer_cannot_write_is_raised_with_its_cause(
    tmp_path: Path, started: list[FileWriter | None]
) -> None:
    """A file the kernel refuses (here: over the size limit, as a full disk would be)."""
    big = b"x" * 4096
    middle = folder() + blocks(*member(NAMES[0], big))
    tree, stream = staged(
        middle, [dir_entry("data/crm"), file_entry(NAMES[0], big, ARCHIVE)], tmp_path
    )
    tree.prepare()
    # Python ignores SIGXFSZ: past the limit a write fails with EFBIG. This process
    # writes nothing of its own during the take (the archive is in memory).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        with pytest.raises(OSError) as info:
            tree.take(stream)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.errno == errno.EFBIG
    [made] = started
    assert made is not None and made.pids == [0] * writer.CHILDREN  # reaped


def test_a_writer_that_dies_is_an_error_not_a_success(tmp_path: Path) -> None:
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    made = FileWriter.start(
        root, ARCHIVE, lambda fd: stage.DirFds(fd, ARCHIVE), ValueError, children=1
    )
    assert made is not None
    made.add(("", "a", 0o644, DATA, -1, -1, -1, 0, hashlib.sha256(DATA).hexdigest()))
    os.kill(made.pids[0], signal.SIGKILL)
    with pytest.raises(OSError) as info:
        made.close()
    assert info.value.errno == errno.EIO
    assert "the file writer failed (the file writer was killed by SIGKILL" in str(info.value)
    os.close(root)


def test_without_fork_the_files_are_made_here(
    tmp_path: Path, started: list[FileWriter | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "no more processes")

    monkeypatch.setattr(os, "fork", no_fork)
    middle = folder() + b"".join(blocks(*member(n, DATA)) for n in NAMES)
    entries = [dir_entry("data/crm"), *(file_entry(n, DATA, ARCHIVE) for n in NAMES)]
    tree, stream = staged(middle, entries, tmp_path)
    tree.prepare()
    tree.take(stream)
    tree.finish()
    assert started == [None]
    assert sorted(p.name for p in (tmp_path / "staging" / "crm").iterdir()) == sorted(
        n.rsplit("/", 1)[1] for n in NAMES
    )


def test_a_writer_stops_waiting_when_its_parent_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """No end mark ever comes from a parent killed mid-restore: the child must not wait forever."""
    monkeypatch.setattr(forking, "POLL", 0.01)
    read, write = os.pipe()
    try:
        began = time.monotonic()
        # Its parent is this process; a child of another parent sees itself orphaned.
        assert forking.read_exactly(read, 8, parent=os.getppid() + 1_000_000) is None
        assert time.monotonic() - began < 5
        os.write(write, b"12345678")
        assert forking.read_exactly(read, 8, parent=os.getppid()) == b"12345678"
    finally:
        os.close(read)
        os.close(write)


_KILLED = """
import os, signal, sys
from cellvault.extract import stage
from cellvault.extract.writer import FileWriter
root = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
made = FileWriter.start(root, "a", lambda fd: stage.DirFds(fd, "a"), ValueError)
print(" ".join(map(str, made.pids)), flush=True)
# Another child of this process (a dumper's, say) holds the pipes to the writers
# open: they see no end of their input when this process dies.
if os.fork() == 0:
    import time
    os.close(1)  # the test reads this process's output to its end
    os.close(2)
    time.sleep(3)
    os._exit(0)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie no one reaps has ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_writers_of_a_killed_restore_are_killed_with_it(tmp_path: Path) -> None:
    """A restore killed with SIGKILL leaves no child writing into its staging tree.

    Not even one whose input stays open in another process: the kernel kills it.
    """
    import subprocess
    import sys

    # Its pids from the first line (the writers keep its output open: not read to the end).
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdout.close()
    assert len(pids) == writer.CHILDREN
    deadline = time.monotonic() + 0.5  # half the poll of the fallback
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_alive(pid) for pid in pids)


def test_a_hosts_signal_handlers_do_not_run_in_a_writer(tmp_path: Path) -> None:
    """A service's SIGTERM handler is the service's: a writer it reaches just ends."""
    ran = tmp_path / "handler-ran"

    def handler(_number: int, _frame: object) -> None:
        ran.touch()

    old = signal.signal(signal.SIGTERM, handler)
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        made = FileWriter.start(
            root, ARCHIVE, lambda fd: stage.DirFds(fd, ARCHIVE), ValueError, children=1
        )
        assert made is not None
        time.sleep(0.2)  # the child has set its signals up
        os.kill(made.pids[0], signal.SIGTERM)
        with pytest.raises(OSError) as info:
            made.close()
        assert info.value.errno == errno.EIO
    finally:
        signal.signal(signal.SIGTERM, old)
        os.close(root)
    assert not ran.exists()
