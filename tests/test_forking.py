"""The children's allocator keeps what it frees (cellvault.forking.keep_freed_memory)."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time

import pytest

from cellvault.forking import Child, fork, receive, send
from tests.system_tools import unavailable

#: Run in a fresh interpreter: the blocks its allocator maps on their own while a
#: reader's batch (2,000 small members joined into one string, then that string and
#: 2,000 entries marshal'd: about 2 and 2.2 MiB) is alive; argv[1] "keep" first
#: calls keep_freed_memory.
_BATCH_PROBE = """
import ctypes, marshal, sys
from cellvault.forking import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "keep":
    keep_freed_memory()
before = libc.mallinfo2().hblks
members = [bytes([k % 256]) * (200 + (k * 7919) % 1800) for k in range(2000)]
joined = b"".join(members)
text = marshal.dumps([joined, ["entry" * 20] * 2000])
print(libc.mallinfo2().hblks - before)
"""


def _mapped_while_a_batch_lives(how: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _BATCH_PROBE, how], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_a_process_that_keeps_freed_memory_takes_a_batch_from_its_heap() -> None:
    if platform.libc_ver()[0] != "glibc":
        unavailable("mallopt's parameters are glibc's; this C library's allocator is its own")
    # A fresh process (a forked one inherits a heap whose state depends on all
    # that ran before). With glibc's defaults the batch's megabytes are blocks
    # mapped on their own, unmapped when freed and faulted in anew by the next
    # batch (a backup of 200,000 files: 230,000 page faults); kept, from the heap.
    assert _mapped_while_a_batch_lives("plain") >= 2
    assert _mapped_while_a_batch_lives("keep") == 0


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


def test_a_child_ignores_what_its_parent_ignores_and_ends_on_what_it_handles() -> None:
    """A host that ignores SIGINT (a script's background job) keeps its children from dying
    of it; a SIGTERM handler of the host's is not run in them (they end on it)."""

    def work(feed: int, out: int, parent: int) -> None:  # pragma: no cover - the child
        send(
            out,
            [
                signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
            ],
        )

    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda number, frame: None)
    try:
        got = fork(work)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    assert got is not None
    pid, feed, result = got
    try:
        assert receive(result) == [True, True]
    finally:
        os.close(feed)
        os.close(result)
        os.waitpid(pid, 0)
