"""The children's allocator keeps what it frees (cellvault.forking.keep_freed_memory)."""

from __future__ import annotations

import ctypes
import marshal
import os
import platform
import resource

from cellvault.forking import fork, keep_freed_memory, receive, send
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
