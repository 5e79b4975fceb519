"""Reading a backup's files a little ahead of the tar writer.

Files are opened and read a little ahead of the tar writer by a few threads
(:class:`ReadAhead`), so that the disk's latency for one small file overlaps
the compression of the ones before it; the bytes read ahead are bounded.
:class:`FileSource` reads exactly the size the scan saw, hashing as it reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from .safeopen import open_scanned
from .tarwrite import BLOCK, ZEROS

__all__ = [
    "FILE_ITEM",
    "READ_BUDGET",
    "READ_ITEMS",
    "READ_OPEN",
    "READ_THREADS",
    "READ_WHOLE",
    "READ_WINDOW",
    "FileSource",
    "Opened",
    "ReadAhead",
    "close_opened",
    "open_ahead",
]

#: The kind of a walk item (its first field) that is a file to read.
FILE_ITEM = 2
#: A walk item: (kind, path, member name, stat, extra); see :mod:`cellvault.pack`.
Item = tuple[int, str, str, Any, Any]

#: Read-ahead: threads that open the next files and ask the kernel to read them
#: into its page cache (READ_WINDOW bytes at a time), and the bounds on what is
#: ahead of the writer: READ_BUDGET bytes, READ_ITEMS paths, READ_OPEN open files.
#: Files up to READ_WHOLE bytes are read whole by the thread instead (0: none; a
#: knob for network mounts). One thread, nothing read whole, 128 files open: the
#: fastest measured (docs/performance.md, "Read-ahead"); more threads cost GIL
#: hand-offs.
READ_THREADS = 1
READ_BUDGET = 32 << 20
READ_ITEMS = 512
READ_WHOLE = 0
READ_WINDOW = 8 << 20
#: Files held open ahead of the writer (cells may be packed in parallel: this
#: keeps a run far from the limit on open files).
READ_OPEN = 128


def _no_progress(n: int) -> None:
    pass


class FileSource:
    """Read exactly *size* bytes of an open file, hashing them as they pass.

    A file that shrinks while it is read is padded with zeros so that the tar
    stays valid; the manifest then records the hash of what was stored and a
    warning names the file. A file that grows is stored at its scanned size.
    """

    def __init__(
        self, raw: IO[bytes], size: int, progress: Callable[[int], None] = _no_progress
    ) -> None:
        self.raw = raw
        self.remaining = size
        self.digest = hashlib.sha256()
        self.short = False
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.remaining:
            n = self.remaining
        data = self.raw.read(n)
        if len(data) < n:
            # One read may return less than asked (a FUSE or network file system):
            # only an empty read is the end of the file.
            parts = [data]
            got = len(data)
            while got < n:
                more = self.raw.read(n - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
            if got < n:
                self.short = True
                data += ZEROS[: n - got] if n - got <= BLOCK else bytes(n - got)
        self.remaining -= n
        self.digest.update(data)
        self.progress(n)
        return data


class Opened:
    """A file opened (and read in part or whole) by a read-ahead thread."""

    __slots__ = ("head", "source", "st")

    def __init__(self, source: FileSource, head: bytes, st: os.stat_result | None = None) -> None:
        self.source = source
        #: All of a small file, already hashed; nothing of a larger one.
        self.head = head
        #: The opened file's ``fstat``: checked against the scan's ``lstat``.
        self.st = st


def open_ahead(path: str, size: int) -> Opened:
    """Open *path*; read it whole if it is small, else start the kernel reading it."""
    raw = open_scanned(path)
    try:
        opened_st = os.fstat(raw.fileno())
        source = FileSource(raw, size)
        if size <= READ_WHOLE:
            head = source.read(size)
            raw.close()
        else:
            # Not read here: bytes held in this process would be its memory, the
            # kernel's read-ahead is not (and is as far ahead when the writer comes).
            head = b""
            with contextlib.suppress(OSError):
                fd = raw.fileno()
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                os.posix_fadvise(fd, 0, READ_WINDOW, os.POSIX_FADV_WILLNEED)
    except BaseException:
        raw.close()
        raise
    return Opened(source, head, opened_st)


def close_opened(future: Future[Opened]) -> None:
    if future.done() and not future.cancelled() and future.exception() is None:
        future.result().source.raw.close()


class ReadAhead:
    """Open and read files in walk order on a few threads, a bounded way ahead.

    :meth:`items` passes the walk's items through in order; for each file to
    store it starts :func:`open_ahead` as soon as the item enters the window
    (at most :data:`READ_ITEMS` items, :data:`READ_BUDGET` bytes and
    :data:`READ_OPEN` open files ahead) and
    hands out its future, whose result (or error) the packer takes in order.
    :meth:`close` stops the threads and closes whatever was opened and not
    taken; no thread outlives it.
    """

    def __init__(
        self, threads: int | None = None, budget: int | None = None, items: int | None = None
    ) -> None:
        self.threads = threads or READ_THREADS
        self.budget = budget or READ_BUDGET
        self.max_items = items or READ_ITEMS
        self._pool: ThreadPoolExecutor | None = None
        self._window: deque[tuple[Item, Future[Opened] | None, int]] = deque()

    def _submit(self, item: Item) -> tuple[Item, Future[Opened] | None, int]:
        if item[0] != FILE_ITEM:
            return item, None, 0
        if self._pool is None:
            # Started on the first file to read: an incremental with nothing
            # changed starts no thread.
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cellvault-read")
        size: int = item[3].st_size
        return item, self._pool.submit(open_ahead, item[1], size), min(size, READ_WINDOW)

    def items(self, walk: Iterator[Item]) -> Iterator[tuple[Item, Future[Opened] | None]]:
        window = self._window
        held = 0  # bytes ahead: read into memory, or asked of the kernel
        opened = 0  # larger files open ahead
        more = True
        while True:
            while (
                more and len(window) < self.max_items and held < self.budget and opened < READ_OPEN
            ):
                item = next(walk, None)
                if item is None:
                    more = False
                    break
                entry = self._submit(item)
                held += entry[2]
                opened += entry[2] > READ_WHOLE
                window.append(entry)
            if not window:
                return
            item, future, cost = window[0]
            yield item, future
            # Taken only now: if the packer failed on it, close() still sees it.
            window.popleft()
            held -= cost
            opened -= cost > READ_WHOLE

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for _, future, _ in self._window:
            if future is not None:
                close_opened(future)
        self._window.clear()
