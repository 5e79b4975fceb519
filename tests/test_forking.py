"""The children's allocator keeps what it frees (cellvault.forking.keep_freed_memory)."""

from __future__ import annotations

import ctypes
import marshal
import os
import platform
import resource
import signal
import time

import pytest

from cellvault.forking import Child, fork, keep_freed_memory, receive, send
from tests.system_tools import unavailable


def _faults_of_batches(keep: bool) -> int:
    """In a fresh child: the page faults of 20 batches as a reader makes them.

    Each: 2,000 small members joined into one string, then that string and
    2,000 entries ``marshal``-ed (about 2 MiB, then 2.2 MiB), all freed.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - measured through the parent
        code = 1
        try:
            if keep:
                keep_freed_memory()
            else:
                # glibc's defaults, as a process starts with them (a worker of the
                # test run may have raised its own thresholds by then).
                mallopt = ctypes.CDLL(None).mallopt
                mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
                mallopt(-1, 128 << 10)  # M_TRIM_THRESHOLD
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for i in range(20):
                members = [bytes([i]) * (200 + (k * 7919) % 1800) for k in range(2000)]
                joined = b"".join(members)
                text = marshal.dumps([joined, ["entry" * 20] * 2000])
                del members, joined, text
            after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            os.write(write, str(after - before).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return int(text)


def test_a_child_that_keeps_freed_memory_does_not_fault_its_pages_in_again() -> None:
    if platform.libc_ver()[0] != "glibc":
        unavailable("mallopt's parameters are glibc's; this C library's allocator is its own")
    # Without: each batch's blocks mapped anew (about 1,000 pages a batch); with:
    # the first batch's pages serve the others.
    without, kept = _faults_of_batches(keep=False), _faults_of_batches(keep=True)
    assert without > 20 * 500
    assert kept < without / 4


def test_a_forked_child_answers_through_its_pipes_with_freed_memory_kept() -> None:
    # become_child (which keeps freed memory) and the frames round trip of large batches.
    def work(feed: int, out: int, parent: int) -> None:  # pragma: no cover - the child
        while (batch := receive(feed, parent)) is not None:
            send(out, [b"".join(batch), len(batch)])

    got = fork(work)
    assert got is not None
    pid, feed, result = got
    try:
        for i in range(5):
            parts = [bytes([i]) * (1 << 20) for _ in range(4)]
            send(feed, parts)
            joined, count = receive(result)
            assert (joined, count) == (b"".join(parts), 4)
        send(feed, None)
    finally:
        os.close(feed)
        os.close(result)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _child_that(end: str) -> Child:
    """A forked child that ends as *end* says, its pipe closed without a word."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            if end == "linger":
                os.close(write)
                time.sleep(5)
            elif end not in ("exit", "ok"):
                number = getattr(signal, end)
                if number != signal.SIGKILL:
                    signal.signal(number, signal.SIG_DFL)  # not pytest's handler
                os.kill(os.getpid(), number)
                time.sleep(5)
        finally:
            os._exit(3 if end == "exit" else 0)
    os.close(write)
    assert os.read(read, 1) == b""  # its end of the pipe closed
    return Child(pid, -1, read)


@pytest.mark.parametrize(
    ("end", "words"),
    [
        ("SIGKILL", "was killed by SIGKILL (out of memory, or killed by hand?)"),
        ("SIGINT", "was killed by SIGINT (Ctrl-C?)"),
        ("SIGTERM", "was killed by SIGTERM"),
        ("exit", "exited with status 3"),
        ("ok", "exited without answering"),
    ],
)
def test_a_child_gone_is_told_as_it_ended(end: str, words: str) -> None:
    child = _child_that(end)
    assert child.how_ended() == words
    assert child.pid == 0  # reaped
    child.end(kill=False)


def test_a_child_that_closed_its_pipe_and_lives_on_is_left_to_end() -> None:
    child = _child_that("linger")
    pid = child.pid
    started = time.monotonic()
    assert child.how_ended(wait=0.2) == "ended without a word"
    assert time.monotonic() - started < 2
    assert child.pid == pid
    child.end(kill=True)
    assert child.pid == 0
