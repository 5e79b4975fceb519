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
from typing import IO, Any, cast

from .forking import FORK_MAX_RSS, resident
from .fsmeta import Xattrs, read_xattrs
from .readers import Answer, Built, Job, Part, Readers, Run, job_of
from .safeopen import open_scanned_fd
from .tarwrite import BLOCK, ZEROS

__all__ = [
    "FILE_ITEM",
    "FORK_BATCH",
    "FORK_BYTES",
    "FORK_ITEMS",
    "FORK_MIN_FILES",
    "READ_BATCH",
    "READ_BUDGET",
    "READ_ITEMS",
    "READ_OPEN",
    "READ_THREADS",
    "READ_WHOLE",
    "READ_WINDOW",
    "RUN_BYTES",
    "RUN_ITEM",
    "Ahead",
    "Batch",
    "FileSource",
    "Handle",
    "Made",
    "Opened",
    "Ran",
    "ReadAhead",
    "Slot",
    "close_opened",
    "open_ahead",
    "opened_now",
]

#: The kind of a walk item (its first field) that is a file to read.
FILE_ITEM = 2
#: The kind of a walk item that is a run of regular files of one folder, not
#: yet ``stat``-ed: (kind, folder path + "/", member name + "/", names, None).
#: Only forked readers read them (:meth:`ReadAhead.start_readers`).
RUN_ITEM = 7
#: A walk item: (kind, path, member name, stat, extra); see :mod:`cellvault.pack`.
Item = tuple[int, str, str, Any, Any]

#: Read-ahead: threads that open the next files and ask the kernel to read them
#: into its page cache (READ_WINDOW bytes at a time), and the bounds on what is
#: ahead of the writer: READ_BUDGET bytes, READ_ITEMS paths, READ_OPEN open files.
#: Files up to READ_WHOLE bytes (and not sparse) are read whole, hashed, their
#: extended attributes read and closed by the thread instead, READ_BATCH files
#: to a task (0: none read whole). One thread, 128 files open: the fastest
#: measured (docs/performance.md, "Read-ahead" and "Backup speed at 200,000
#: files"); more threads cost GIL hand-offs, and so did a task per small file.
READ_THREADS = 1
READ_BUDGET = 32 << 20
READ_ITEMS = 512
READ_WHOLE = 64 << 10
READ_BATCH = 64
READ_WINDOW = 8 << 20
#: Files held open ahead of the writer (cells may be packed in parallel: this
#: keeps a run far from the limit on open files).
READ_OPEN = 128
#: Forked readers (:mod:`cellvault.readers`) take a cell's small files once
#: the walk has found this many (a small cell is not worth two processes),
#: FORK_BATCH files or FORK_BYTES of them to a batch, with up to FORK_ITEMS
#: items ahead of the writer (their batches are larger than a thread's).
FORK_MIN_FILES = 1000
FORK_BATCH = 256
FORK_BYTES = 1 << 20
FORK_ITEMS = 4096
#: The file data a reader's answer for runs holds at most (their sizes are not
#: known before): past it, a run's files are left to the packer.
RUN_BYTES = 4 << 20


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
    """A file opened (and read in part or whole) by a read-ahead thread.

    A small file is read whole (:attr:`source` is ``None``, the descriptor is
    closed already): :attr:`head` holds its bytes, :attr:`sha256` their hash,
    :attr:`xattrs` its extended attributes (or the error reading them gave).
    """

    __slots__ = ("head", "sha256", "short", "source", "st", "xattrs")

    def __init__(
        self,
        source: FileSource | None,
        head: bytes,
        st: os.stat_result | None = None,
        *,
        sha256: str = "",
        short: bool = False,
        xattrs: Xattrs | OSError = (),
    ) -> None:
        self.source = source
        #: All of a small file, already hashed; nothing of a larger one.
        self.head = head
        #: The opened file's ``fstat``: checked against the scan's ``lstat``.
        self.st = st
        self.sha256 = sha256
        #: The file was shorter than *size* when read (padded with zeros).
        self.short = short
        self.xattrs = xattrs


def open_ahead(path: str, size: int) -> Opened:
    """Open *path*; read it whole if it is small, else start the kernel reading it."""
    fd, opened_st = open_scanned_fd(path)
    try:
        if size <= READ_WHOLE and opened_st.st_blocks * 512 >= size:
            # Not sparse (a sparse file keeps its holes: the packer maps them).
            return _read_whole(fd, size, opened_st)
        raw = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    try:
        source = FileSource(raw, size)
        # Not read here: bytes held in this process would be its memory, the
        # kernel's read-ahead is not (and is as far ahead when the writer comes).
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            os.posix_fadvise(fd, 0, READ_WINDOW, os.POSIX_FADV_WILLNEED)
    except BaseException:
        raw.close()
        raise
    return Opened(source, b"", opened_st)


def _read_whole(fd: int, size: int, opened_st: os.stat_result) -> Opened:
    """Read exactly *size* bytes of *fd* (zeros past a shrunk end), its attributes; close it."""
    try:
        data = os.read(fd, size) if size else b""
        short = False
        if len(data) < size:
            # One read may return less than asked: only an empty read is the end.
            parts = [data]
            got = len(data)
            while got < size:
                more = os.read(fd, size - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            if got < size:
                short = True
                parts.append(bytes(size - got))
            data = b"".join(parts)
        xattrs: Xattrs | OSError
        try:
            xattrs = read_xattrs(fd)
        except OSError as exc:
            xattrs = exc
    finally:
        os.close(fd)
    digest = hashlib.sha256(data).hexdigest()
    return Opened(None, data, opened_st, sha256=digest, short=short, xattrs=xattrs)


def _open_batch(files: list[tuple[str, int]]) -> list[Opened | Exception]:
    """:func:`open_ahead` on each of *files* in turn; an error is kept in its place."""
    out: list[Opened | Exception] = []
    for path, size in files:
        try:
            out.append(open_ahead(path, size))
        except Exception as exc:  # noqa: BLE001 - raised again by the packer, in order
            out.append(exc)
    return out


class Batch:
    """Small files opened (and read whole) by one task of a read-ahead thread."""

    __slots__ = ("done", "files", "future")

    def __init__(self) -> None:
        self.files: list[tuple[str, int]] = []
        self.future: Future[list[Opened | Exception]] | None = None
        #: The future's result, once taken (its lock is not taken again per file).
        self.done: list[Opened | Exception] | None = None


class Slot:
    """One file of a :class:`Batch`: what the packer takes, as it would a future's."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: Batch, index: int) -> None:
        self.batch = batch
        self.index = index

    def result(self) -> Opened:
        batch = self.batch
        done = batch.done
        if done is None:
            future = batch.future
            assert future is not None  # submitted before it is handed out
            done = batch.done = future.result()
        got = done[self.index]
        if isinstance(got, Exception):
            raise got
        return got


class Jobs:
    """Small files for a forked reader (:mod:`cellvault.readers`), sent as one batch."""

    __slots__ = ("bytes", "child", "count", "done", "jobs", "readers")

    def __init__(self, readers: Readers) -> None:
        self.readers = readers
        self.jobs: list[Job | Run] = []
        #: Files in it (a run is several).
        self.count = 0
        self.bytes = 0
        #: The reader it was sent to (``None``: not yet sent).
        self.child: Any = None
        #: The reader's answer, once taken.
        self.done: Answer | None = None

    @property
    def full(self) -> bool:
        """It holds :data:`FORK_BATCH` files or :data:`FORK_BYTES` of them: send it."""
        return self.count >= FORK_BATCH or self.bytes >= FORK_BYTES


class _InBatch:
    """A place in a :class:`Jobs` batch: the reader's answer for it, once taken."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: Jobs, index: int) -> None:
        self.batch = batch
        self.index = index


class Made(_InBatch):
    """One file of a :class:`Jobs` batch: its ``result()`` is what the reader built (or ``None``).

    ``None`` means the reader did not store the file (not plain, or an error):
    the packer opens it itself (:func:`opened_now`).
    """

    __slots__ = ()

    def result(self) -> Built:
        return cast(Built, _answer(self.batch)[self.index])


class Ran(_InBatch):
    """A run of files of a :class:`Jobs` batch: its ``result()`` is what the reader built of it.

    That is, in order, the members of files built one after the other, and
    the names of those the reader left to the packer (see
    :data:`cellvault.readers.Part`).
    """

    __slots__ = ()

    def result(self) -> list[Part]:
        return cast(list[Part], _answer(self.batch)[self.index])


def _answer(batch: Jobs) -> Answer:
    done = batch.done
    if done is None:
        assert batch.child is not None  # sent before it is handed out
        done = batch.done = batch.readers.take(batch.child)
    return done


def opened_now(path: str, size: int) -> Future[Opened]:
    """:func:`open_ahead` in this thread, as a finished future (its result or its error)."""
    future: Future[Opened] = Future()
    try:
        future.set_result(open_ahead(path, size))
    except Exception as exc:  # noqa: BLE001 - raised by result(), as a thread's would be
        future.set_exception(exc)
    return future


#: What the packer opens a file to store through: its ``result()`` is the file opened.
Handle = Future[Opened] | Slot
#: What the packer is handed for a file to store: a :data:`Handle`, or a
#: :class:`Made` (the file's member, built by a forked reader).
Ahead = Handle | Made | Ran


def close_opened(future: Ahead) -> None:
    if isinstance(future, (Made, Ran)):
        return  # nothing of it is open here
    if isinstance(future, Slot):
        batch = future.batch.future
        if batch is None or not batch.done() or batch.cancelled() or batch.exception():
            return
        got = batch.result()[future.index]
        if isinstance(got, Opened) and got.source is not None:
            got.source.raw.close()
        return
    if future.done() and not future.cancelled() and future.exception() is None:
        source = future.result().source
        if source is not None:
            source.raw.close()


class ReadAhead:
    """Open and read files in walk order on a few threads, a bounded way ahead.

    :meth:`items` passes the walk's items through in order; for each file to
    store it starts :func:`open_ahead` as soon as the item enters the window
    (at most :data:`READ_ITEMS` items, :data:`READ_BUDGET` bytes and
    :data:`READ_OPEN` open files ahead) and
    hands out its future, whose result (or error) the packer takes in order.
    With *fork_for* (the archive's id), once the walk has found
    :data:`FORK_MIN_FILES` small files, forked readers take the small files
    instead (:mod:`cellvault.readers`; a :class:`Made` handle each).
    :meth:`close` stops the threads and the readers and closes whatever was
    opened and not taken; no thread or reader outlives it.
    """

    def __init__(
        self,
        threads: int | None = None,
        budget: int | None = None,
        items: int | None = None,
        *,
        fork_for: str | None = None,
    ) -> None:
        self.threads = threads or READ_THREADS
        self.budget = budget or READ_BUDGET
        self.max_items = items or READ_ITEMS
        self._pool: ThreadPoolExecutor | None = None
        #: (item, its handle, bytes it holds ahead, whether it stays open until taken)
        self._window: deque[tuple[Item, Ahead | None, int, bool]] = deque()
        #: Small files gathered for the next task, not yet submitted.
        self._batch: Batch | None = None
        #: The archive the forked readers build members for (``None``: no readers).
        self._fork_for = fork_for
        #: Small files found so far, until the readers are forked.
        self._small = 0
        self._readers: Readers | None = None
        #: Small files gathered for the next reader, not yet sent.
        self._jobs: Jobs | None = None

    def _started(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # Started on the first file to read: an incremental with nothing
            # changed starts no thread.
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cellvault-read")
        return self._pool

    def _send(self, batch: Batch) -> None:
        batch.future = self._started().submit(_open_batch, batch.files)
        if self._batch is batch:
            self._batch = None

    def _forked(self) -> Readers | None:
        """The forked readers, started once enough small files were found (``None``: none)."""
        if self._readers is None and self._fork_for is not None:
            self._small += 1
            if self._small >= FORK_MIN_FILES:
                self.start_readers()
        return self._readers

    def start_readers(self) -> bool:
        """Fork the readers now, if they may be (once); whether they run.

        The walk of a full backup asks, once it has found enough paths, so
        that it may then hand over runs of files it has not ``stat``-ed
        (:data:`RUN_ITEM`).
        """
        if self._readers is None and self._fork_for is not None:
            archive, self._fork_for = self._fork_for, None  # one try
            if resident() <= FORK_MAX_RSS:
                self._readers = Readers.start(archive, READ_WHOLE, RUN_BYTES)
                if self._readers is not None:
                    self.max_items = max(self.max_items, FORK_ITEMS)
        return self._readers is not None

    def _submit(self, item: Item) -> tuple[Item, Ahead | None, int, bool]:
        if item[0] != FILE_ITEM:
            if item[0] == RUN_ITEM:
                assert self._readers is not None  # runs come only once they run
                return item, self._run(self._readers, item), 0, False
            return item, None, 0, False
        st = item[3]
        size: int = st.st_size
        cost = min(size, READ_WINDOW)
        if size <= READ_WHOLE and st.st_blocks * 512 >= size:
            # Small, not sparse: read whole and closed by a thread (a batch to a
            # task) or built by a forked reader.
            readers = self._forked()
            if readers is not None:
                return item, self._job(readers, item), cost, False
            batch = self._batch
            if batch is None:
                batch = self._batch = Batch()
            slot = Slot(batch, len(batch.files))
            batch.files.append((item[1], size))
            if len(batch.files) >= READ_BATCH:
                self._send(batch)
            return item, slot, cost, False
        return item, self._started().submit(open_ahead, item[1], size), cost, True

    def _job(self, readers: Readers, item: Item) -> Made:
        st = item[3]
        return Made(*self._gather(readers, job_of(item[1], item[2], st), 1, st.st_size))

    def _run(self, readers: Readers, item: Item) -> Ran:
        names: list[str] = item[3]
        return Ran(*self._gather(readers, (item[1], item[2], names), len(names), 0))

    def _gather(self, readers: Readers, one: Job | Run, files: int, size: int) -> tuple[Jobs, int]:
        """Add *one* (of *files* files, *size* bytes known) to the next batch; its batch and place."""
        jobs = self._jobs
        if jobs is None:
            jobs = self._jobs = Jobs(readers)
        index = len(jobs.jobs)
        jobs.jobs.append(one)
        jobs.count += files
        jobs.bytes += size
        if jobs.full:
            self._hand_over()
        return jobs, index

    def _hand_over(self) -> bool:
        """Send the gathered jobs to an idle reader; ``False`` if every reader has a batch."""
        jobs = self._jobs
        if jobs is None:
            return True
        child = jobs.readers.idle()
        if child is None:
            return False
        jobs.child = child
        self._jobs = None
        jobs.readers.send(child, jobs.jobs)
        return True

    def _stuck(self) -> bool:
        """A full batch waits for a reader: the window grows no further until one is free."""
        jobs = self._jobs
        return jobs is not None and jobs.full and not self._hand_over()

    def items(self, walk: Iterator[Item]) -> Iterator[tuple[Item, Ahead | None]]:
        window = self._window
        held = 0  # bytes ahead: read into memory, or asked of the kernel
        opened = 0  # larger files open ahead
        more = True
        while True:
            while (
                more
                and len(window) < self.max_items
                and held < self.budget
                and opened < READ_OPEN
                and not self._stuck()
            ):
                item = next(walk, None)
                if item is None:
                    more = False
                    break
                entry = self._submit(item)
                held += entry[2]
                opened += entry[3]
                window.append(entry)
            if not window:
                return
            item, handle, cost, is_open = window[0]
            if type(handle) is Slot and handle.batch.future is None:
                self._send(handle.batch)  # wanted now: not waiting for the batch to fill
            elif (type(handle) is Made or type(handle) is Ran) and handle.batch.child is None:
                # Wanted now. Every batch before it was taken: a reader is idle.
                sent = self._hand_over()
                assert sent
            yield item, handle
            # Taken only now: if the packer failed on it, close() still sees it.
            window.popleft()
            held -= cost
            opened -= is_open

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        readers, self._readers = self._readers, None
        if readers is not None:
            readers.close()
        for _, handle, _, _ in self._window:
            if handle is not None:
                close_opened(handle)
        self._window.clear()
        self._batch = None
        self._jobs = None
