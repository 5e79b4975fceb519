"""An archive decompressed by a forked child (cellvault.extract.inflate), and what it meets."""

from __future__ import annotations

import errno
import io
import os
import signal
from collections.abc import Callable

import pytest

from cellvault import ArchiveCorrupt
from cellvault.extract import ArchiveStream, inflate, verify_archive
from cellvault.extract.inflate import Inflate
from tests.archive_helpers import dir_entry, file_entry, member

from .conftest import in_a_child
from .test_tarread import ARCHIVE, archive_bytes, blocks, folder

#: Incompressible: the stored archive is as long as its content.
NOISE = os.urandom(3 << 20)


def noisy_archive() -> tuple[bytes, object]:
    entries = [dir_entry("data/crm"), file_entry("data/crm/noise", NOISE, ARCHIVE)]
    raw, sidecar, _ = archive_bytes(folder() + blocks(*member("data/crm/noise", NOISE)), entries)
    return raw, sidecar


class Failing(io.BytesIO):
    """The stored bytes, until *good* of them are read: then the disk fails."""

    def __init__(self, data: bytes, good: int) -> None:
        super().__init__(data)
        self.good = good

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.good:
            raise OSError(errno.EIO, "Input/output error")
        want = self.good - self.tell() if size is None or size < 0 else size
        return super().read(min(want, self.good - self.tell()))


@pytest.mark.usefixtures("who_decompresses")
def test_a_failed_read_of_the_stored_bytes_is_told_the_same_by_a_thread_and_a_child(
    forked_children: Callable[[], list[int]],
) -> None:
    """The source's own error comes first, whoever decompresses (not the codec's view of it)."""
    raw, sidecar = noisy_archive()
    with pytest.raises(ArchiveCorrupt) as info:
        verify_archive(Failing(raw, 1 << 20), sidecar, "t")  # type: ignore[arg-type]
    assert (info.value.detail, info.value.member) == (
        "unreadable data (OSError: [Errno 5] Input/output error); truncated or damaged",
        "data/crm/noise",
    )
    assert forked_children() == []


def test_a_killed_child_is_said_to_be_killed_not_the_archive_damaged(
    monkeypatch: pytest.MonkeyPatch, forked_children: Callable[[], list[int]]
) -> None:
    in_a_child(monkeypatch)
    raw, sidecar = noisy_archive()
    stream = ArchiveStream(io.BytesIO(raw), sidecar, "t")  # type: ignore[arg-type]
    members = stream.members()
    _, name, _ = next(members)
    assert name == "data/crm"
    (child,) = forked_children()
    os.kill(child, signal.SIGKILL)
    with pytest.raises(RuntimeError) as info:
        for _, _, data in members:
            if data is not None:
                data.readall()
    assert str(info.value) == (
        "the process decompressing the archive was killed by SIGKILL "
        "(out of memory, or killed by hand?); run it again"
    )
    assert forked_children() == []


def test_small_archives_and_large_processes_are_decompressed_by_a_thread(
    monkeypatch: pytest.MonkeyPatch, forked_children: Callable[[], list[int]]
) -> None:
    raw, _ = noisy_archive()
    plain = io.BytesIO(raw)
    assert Inflate.start(plain, "x.tar.zst", inflate.INFLATE_MIN - 1) is None
    monkeypatch.setattr(inflate, "resident", lambda: inflate.FORK_MAX_RSS + 1)
    assert Inflate.start(plain, "x.tar.zst", inflate.INFLATE_MIN) is None
    assert forked_children() == []
    assert plain.tell() == 0  # nothing read


def test_a_child_reads_gzip_too_and_tells_its_errors_by_name(
    monkeypatch: pytest.MonkeyPatch, forked_children: Callable[[], list[int]]
) -> None:
    import gzip

    in_a_child(monkeypatch)
    text = NOISE[:100_000]
    child = Inflate.start(io.BytesIO(gzip.compress(text)), "x.tar.gz", 1 << 30)
    assert child is not None
    assert child.read(0) == b""  # nothing asked: not the end
    got = b"".join(iter(lambda: child.read(65536), b""))
    child.close()
    assert got == text
    child = Inflate.start(io.BytesIO(b"\x1f\x8b" + b"x" * 100), "x.tar.gz", 1 << 30)
    assert child is not None
    with pytest.raises(gzip.BadGzipFile) as info:
        while child.read(65536):
            pass
    child.close()
    assert str(info.value).startswith("Unknown compression method")
    assert forked_children() == []


def test_a_reader_that_stops_early_ends_the_child_and_the_feeding_thread(
    monkeypatch: pytest.MonkeyPatch, forked_children: Callable[[], list[int]]
) -> None:
    """Both wait on full pipes then (the stored bytes do not compress): both are ended."""
    import threading
    import time

    in_a_child(monkeypatch)
    noise = NOISE * 3
    entries = [dir_entry("data/crm"), file_entry("data/crm/noise", noise, ARCHIVE)]
    raw, sidecar, _ = archive_bytes(folder() + blocks(*member("data/crm/noise", noise)), entries)
    stream = ArchiveStream(io.BytesIO(raw), sidecar, "t")  # type: ignore[arg-type]
    members = stream.members()
    next(members)
    time.sleep(0.2)  # the pipes fill
    assert len(forked_children()) == 1
    feeding = [t for t in threading.enumerate() if t.name == "cellvault-inflate-feed"]
    assert len(feeding) == 1 and feeding[0].is_alive()
    started = time.monotonic()
    members.close()
    assert time.monotonic() - started < 5
    assert forked_children() == []
    assert not feeding[0].is_alive()
