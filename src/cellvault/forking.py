"""Helpers of the short-lived children cellvault forks to use a second core.

A restore's writers (:mod:`cellvault.extract.writer`) and a large
manifest's parser (:mod:`cellvault.manifest`) are forked from the process
that needs them, fed through pipes and waited for before it goes on. In the
child, :func:`become_child` first makes it die with its parent and end on
the signals a host may handle, then closes every descriptor it does not
need; it then speaks in :func:`send` frames (``marshal``'d, a length first)
and leaves with ``os._exit``.
"""

from __future__ import annotations

import contextlib
import ctypes
import marshal
import os
import select
import signal
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "FORK_MAX_RSS",
    "Child",
    "PipeSource",
    "alive",
    "become_child",
    "ended_as",
    "fork",
    "frames",
    "keep_freed_memory",
    "pipe",
    "read_exactly",
    "read_up_to",
    "receive",
    "resident",
    "send",
    "write_all",
]

_LENGTH = struct.Struct("<Q")
#: Seconds a child waits for input before it checks that its parent lives.
POLL = 1.0
#: Bytes read from a pipe at a time.
_READ = 1 << 20


#: Above this resident size a process does the work itself rather than fork
#: for it: the fork of a big process (a service that embeds cellvault) copies
#: its page tables, then its pages as they are written, and costs more than
#: the work it would share.
FORK_MAX_RSS = 256 << 20


def resident() -> int:
    """This process's resident size in bytes (0 where /proc cannot tell)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def alive(pid: int) -> bool:
    """Whether process *pid* runs on this host (a zombie, killed but not yet reaped, does not).

    In a container whose first process does not reap orphans, a killed
    process stays a zombie for a while: ``kill(pid, 0)`` still succeeds, yet
    it holds nothing and does nothing.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return True  # no /proc: trust kill()
    # "pid (comm) S ...": the state follows the last ")" (comm may hold spaces or parentheses).
    state = stat_line[stat_line.rfind(b")") + 2 : stat_line.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def _libc_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


#: prctl(2), to have the kernel kill a child whose parent dies (Linux).
_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1

#: mallopt(3) parameters (glibc): the size from which a block is mapped on its
#: own, and the free memory above which the heap is given back to the system.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: What a child asks of both (:func:`keep_freed_memory`).
CHILD_MMAP_THRESHOLD = 32 << 20
CHILD_TRIM_THRESHOLD = 64 << 20


def keep_freed_memory() -> None:
    """Have this process's allocator keep the memory it frees, for the next batch (glibc).

    A child's batches are megabytes each (joined members, their ``marshal``
    text, a pipe's worth): by default each such block is mapped anew and
    unmapped when freed, and each of its pages faults in again: at 200,000
    small files, 230,000 page faults and a tenth of the backup's system time.
    Blocks up to :data:`CHILD_MMAP_THRESHOLD` then come from the heap, which
    keeps up to :data:`CHILD_TRIM_THRESHOLD` free. Only for a child and for the
    ``cellvault`` command's own process: a host process's allocator is the
    host's own. (At 200,000 files, both: page faults 230,000 -> 42,000, the
    backup 5% sooner; ``docs/performance.md``.)
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc: its allocator as it is
    mallopt(_M_MMAP_THRESHOLD, CHILD_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, CHILD_TRIM_THRESHOLD)


def become_child(parent: int, *keep: int) -> None:
    """Set up a freshly forked child of *parent* that keeps only the descriptors *keep*.

    It is killed by the kernel when its parent dies (``PR_SET_PDEATHSIG``;
    where that is not available, :func:`read_up_to` notices within
    :data:`POLL` seconds), and the signals a host process may handle (a
    service's shutdown on SIGTERM) end it instead of running the host's
    handlers in it. A signal the host ignores (SIGINT in a script's
    background job) it ignores too: else a Ctrl-C meant for others would
    kill the children of a run that goes on.
    """
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        with contextlib.suppress(OSError, ValueError):
            if signal.getsignal(number) is not signal.SIG_IGN:
                signal.signal(number, signal.SIG_DFL)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request was made
        os._exit(1)
    keep_freed_memory()
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


#: The buffer asked for a pipe (Linux lets a process ask for up to 1 MiB).
PIPE_SIZE = 1 << 20


def pipe() -> tuple[int, int]:
    """A pipe (read end, write end) with a buffer of :data:`PIPE_SIZE` where the kernel allows it.

    A writer that fills a small buffer waits for the reader at every few
    kilobytes; each wait, in a thread, is a hand-over of the GIL.
    """
    read, write = os.pipe()
    with contextlib.suppress(OSError, AttributeError, ValueError):
        import fcntl

        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read, write


def fork(work: Callable[[int, int, int], None], *keep: int) -> tuple[int, int, int] | None:
    """Fork a child that runs ``work(feed, out, parent)``, then exits.

    *feed* is the read end of a pipe this process writes to, *out* the write
    end of one it reads; the child keeps them and the descriptors *keep*
    (:func:`become_child`) and exits 0 if *work* returns, 1 if it raises.
    Returns the child's pid, the feed's write end and the output's read end
    (the caller closes them and waits for the child), or ``None`` where no
    child can be started.
    """
    try:
        feed_r, feed_w = pipe()
    except OSError:
        return None
    try:
        out_r, out_w = pipe()
    except OSError:
        os.close(feed_r)
        os.close(feed_w)
        return None
    parent = os.getpid()
    try:
        pid = os.fork()
    except (OSError, AttributeError):
        for fd in (feed_r, feed_w, out_r, out_w):
            os.close(fd)
        return None
    if pid == 0:  # pragma: no cover - the child; its work is checked through the parent
        code = 1
        try:
            become_child(parent, *keep, feed_r, out_w)
            work(feed_r, out_w, parent)
            code = 0
        finally:
            os._exit(code)
    os.close(feed_r)
    os.close(out_w)
    return pid, feed_w, out_r


class Child:
    """A forked child as :func:`fork` returns it: its pid, the pipe it reads, the one it writes."""

    def __init__(self, pid: int, feed: int, result: int) -> None:
        self.pid = pid
        #: The write end of the pipe the child reads (-1 once closed).
        self.feed = feed
        #: The read end of the pipe the child writes (-1 once closed).
        self.result = result

    def end(self, *, kill: bool) -> None:
        """Close both pipes (the child reads its end of input) and wait for it; first kill it if *kill*.

        Idempotent: a child already waited for is not waited for again.
        """
        if kill and self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        for fd in (self.feed, self.result):
            if fd >= 0:
                os.close(fd)
        self.feed = self.result = -1
        if self.pid:
            pid, self.pid = self.pid, 0
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def how_ended(self, *, wait: float = 2.0) -> str:
        """How the child ended, in words, once the pipe it writes closed early; reaped here.

        "was killed by SIGKILL (...)", "was killed by SIGINT (Ctrl-C?)",
        "exited with status 1". A child not gone within *wait* seconds (it
        closed its pipe and lives on) "ended without a word": :meth:`end`
        deals with it.
        """
        deadline = time.monotonic() + wait
        while self.pid:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: nothing to tell
                self.pid = 0
                break
            if pid:
                self.pid = 0
                return ended_as(status)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        return "ended without a word"


#: Why a child may have been killed by a signal, as far as one can guess.
_LIKELY: dict[int, str] = {
    signal.SIGKILL: " (out of memory, or killed by hand?)",
    signal.SIGINT: " (Ctrl-C?)",
    signal.SIGSEGV: " (a crash: report it)",
}


def ended_as(status: int) -> str:
    """A child's end, from its wait status: "was killed by SIGTERM", "exited with status 3"."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}{_LIKELY.get(number, '')}"
    code = os.waitstatus_to_exitcode(status)
    return f"exited with status {code}" if code else "exited without answering"


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send(fd: int, value: Any) -> None:
    """Write *value* (``marshal``-able) as one frame."""
    payload = marshal.dumps(value)
    write_all(fd, _LENGTH.pack(len(payload)) + payload)


def receive(fd: int, parent: int | None = None) -> Any:
    """The next frame's value; ``EOFError`` when the other end has closed (or *parent* died)."""
    head = read_exactly(fd, _LENGTH.size, parent)
    if head is None:
        raise EOFError("the other process is gone")
    (size,) = _LENGTH.unpack(head)
    payload = read_exactly(fd, size, parent)
    if payload is None:
        raise EOFError("the other process is gone")
    return marshal.loads(payload)  # noqa: S302 - our own process's words


def frames(fd: int, parent: int) -> Iterator[Any]:
    """In a child: the values *parent* sends, until it sends ``None`` or closes the pipe (or dies)."""
    while True:
        try:
            value = receive(fd, parent)
        except EOFError:
            return  # the parent is gone without its end mark: nothing more comes
        if value is None:
            return
        yield value


def read_exactly(fd: int, size: int, parent: int | None = None) -> bytes | None:
    """*size* bytes from *fd*, or ``None`` at its end (see :func:`read_up_to`)."""
    data = read_up_to(fd, size, parent)
    return data if len(data) == size else None


def read_up_to(fd: int, size: int, parent: int | None = None) -> bytes:
    """Up to *size* bytes from *fd*, fewer only at its end.

    With *parent* (in a child), the end comes too once the parent is gone,
    checked every :data:`POLL` seconds of silence.
    """
    parts = []
    while size:
        if parent is not None and not select.select([fd], [], [], POLL)[0]:
            if os.getppid() != parent:
                break
            continue
        chunk = os.read(fd, min(size, _READ))
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


class PipeSource:
    """A pipe read like a file, in a child: full chunks of *chunk* bytes until its end.

    Its end comes too once the *parent* is gone (see :func:`read_up_to`).
    """

    def __init__(self, fd: int, parent: int, chunk: int = _READ) -> None:
        self.fd = fd
        self.parent = parent
        self.chunk = chunk

    def read(self, size: int = -1, /) -> bytes:
        return read_up_to(self.fd, self.chunk if size < 0 else size, self.parent)

    def readable(self) -> bool:
        return True
