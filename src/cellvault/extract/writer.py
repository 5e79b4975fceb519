"""Small files of a staging tree created by other processes.

A restore of many small files spends as much time in the kernel, creating
them, as in Python, reading and checking them: one process does both in
turn on one core. :class:`FileWriter` forks children (two: the kernel's work
of creating the files is then shared too) that create the files the restore
has already read and checked (name, size and sha256 against the manifest),
fed through pipes a batch at a time, while the restoring process reads and
checks the next ones. The children check each file's sha256 against the
manifest before they create it (the restoring process checks its name and
size).

A child writes as the parent would: each file relative to a directory
descriptor opened without following links from the staging root down
(:class:`~cellvault.extract.dirfds.DirFds`), created with ``O_EXCL |
O_NOFOLLOW``, then its owner, mode and times through the open descriptor.
What it cannot do ends it, and the parent raises it: bytes other than the
manifest's, a file that exists already (a member twice), a directory
replaced by a link, a full disk.
The parent waits for the children (:meth:`FileWriter.close`) before it makes
the links of the tree, and ends them (:meth:`FileWriter.abort`) before a
failed restore removes the staging tree. A child whose parent is killed
mid-restore is killed by the kernel with it (:func:`~cellvault.forking.become_child`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import marshal
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import UnsafeArchive
from ..forking import fork, receive, send

__all__ = ["FileWriter"]

_sha256 = hashlib.sha256
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: A batch is sent when it holds this many bytes of file data, or this many files.
BATCH_BYTES = 1 << 20
BATCH_FILES = 2048
#: Writers forked per archive: two share the kernel's work of creating the files.
CHILDREN = 2

#: A file for the child: the folder (relative to the staging root) and the name
#: in it, the mode it is created with, its bytes, the mode to set after (-1:
#: none), the owner to set (-1: none), the modification time in nanoseconds
#: and the sha256 its bytes must have (hex), checked before it is created.
Record = tuple[str, str, int, bytes, int, int, int, int, str]


class FileWriter:
    """Forked children that create checked files below a staging root.

    :meth:`start` forks them (``None`` where this process cannot fork);
    :meth:`add` queues a file, and each full batch goes to the next child in
    turn (files of a batch are mostly of a few folders, so the children seldom
    wait for each other's folder in the kernel); :meth:`close` sends the rest
    and waits for every child, raising what one met; :meth:`abort` ends them
    at once.
    """

    def __init__(self, children: list[_Child], archive: str) -> None:
        self._children = children
        self._turn = 0
        self.archive = archive
        self._batch: list[Record] = []
        self._bytes = 0

    @classmethod
    def start(
        cls,
        root: int,
        archive: str,
        dirs: Callable[[int], Any],
        differs: Callable[[str], Exception],
        children: int | None = None,
    ) -> FileWriter | None:
        """Fork writers below the directory descriptor *root* (:data:`CHILDREN` of them).

        *dirs* makes, in a child, the directory walker of *root* (a
        :class:`~cellvault.extract.dirfds.DirFds`); *differs* makes the error
        raised for a member (named as in the archive) whose bytes are not
        those of its sha256. ``None`` when no child can be started: the caller
        writes the files itself.
        """
        started: list[_Child] = []
        for _ in range(CHILDREN if children is None else children):
            child = _Child.start(root, archive, dirs, differs)
            if child is None:
                break
            started.append(child)
        return cls(started, archive) if started else None

    @property
    def sent(self) -> int:
        """Files handed to the children."""
        return sum(child.sent for child in self._children)

    @property
    def pids(self) -> list[int]:
        """The children's process ids (0 for one that has ended)."""
        return [child.pid for child in self._children]

    def add(self, record: Record) -> None:
        """Queue one file (see :data:`Record`); a full batch goes to a child."""
        self._batch.append(record)
        self._bytes += len(record[3])
        if self._bytes >= BATCH_BYTES or len(self._batch) >= BATCH_FILES:
            self._send()

    def _send(self) -> None:
        batch, self._batch, self._bytes = self._batch, [], 0
        child = self._children[self._turn]
        self._turn = (self._turn + 1) % len(self._children)
        child.send(batch)

    def close(self) -> int:
        """Send the last batch, wait for every child; the number of files they made.

        Raises what a child met (see the module's docstring).
        """
        if self._batch:
            self._send()
        return sum(child.finish() for child in self._children)

    def abort(self) -> None:
        """End the children now and wait for them (after a failure; idempotent)."""
        for child in self._children:
            child.abort()


class _Child:
    """One forked writer, fed batches through a pipe; its last word through another."""

    def __init__(
        self, pid: int, feed: int, result: int, archive: str, differs: Callable[[str], Exception]
    ) -> None:
        self.pid = pid
        self._differs = differs
        self._feed = feed
        self._result = result
        self.archive = archive
        #: Files handed to it.
        self.sent = 0

    @classmethod
    def start(
        cls,
        root: int,
        archive: str,
        dirs: Callable[[int], Any],
        differs: Callable[[str], Exception],
    ) -> _Child | None:

        def work(feed: int, out: int, parent: int) -> None:  # pragma: no cover - the child
            try:
                outcome = _serve(dirs(root), feed, parent)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
                outcome = ("crash", f"{type(exc).__name__}: {exc}")
            os.write(out, marshal.dumps(outcome))

        started = fork(work, root)
        if started is None:
            return None
        pid, feed_w, result_r = started
        return cls(pid, feed_w, result_r, archive, differs)

    def send(self, batch: list[Record]) -> None:
        self.sent += len(batch)
        try:
            send(self._feed, batch)
        except BrokenPipeError:
            # The child stopped reading: it met something, and says what.
            self._raise(self._outcome())

    def finish(self) -> int:
        """Send the end mark and wait for the child; the number of files it made."""
        with contextlib.suppress(BrokenPipeError):
            send(self._feed, None)
        outcome = self._outcome()
        if outcome[0] != "ok" or outcome[1] != self.sent:
            self._raise(outcome)
        return int(outcome[1])

    def _outcome(self) -> tuple[Any, ...]:
        """The child's last word, once it has ended (a crash says so)."""
        chunks = []
        while chunk := os.read(self._result, 1 << 16):
            chunks.append(chunk)
        self._reap()
        try:
            outcome = marshal.loads(b"".join(chunks))  # noqa: S302 - our own child's words
        except (EOFError, ValueError, TypeError):
            outcome = ("crash", "the file writer ended without a word")
        return outcome if isinstance(outcome, tuple) and outcome else ("crash", repr(outcome))

    def _raise(self, outcome: tuple[Any, ...]) -> None:
        kind = outcome[0]
        if kind == "differs":
            raise self._differs(f"data/{outcome[1]}")
        if kind == "twice":
            raise UnsafeArchive(
                "member appears twice; refused", archive=self.archive, member=f"data/{outcome[1]}"
            )
        if kind == "unsafe":
            raise UnsafeArchive(outcome[1], archive=self.archive, hint=outcome[2])
        if kind == "os":
            raise OSError(outcome[1], outcome[2], outcome[3])
        if kind == "ok":
            raise OSError(
                errno.EIO, f"the file writer made {outcome[1]} of {self.sent} files", None
            )
        raise OSError(errno.EIO, f"the file writer failed ({outcome[1]})", None)

    def abort(self) -> None:
        """End the child now and wait for it (idempotent)."""
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        for fd in (self._feed, self._result):
            if fd >= 0:
                os.close(fd)
        self._feed = self._result = -1
        if self.pid:
            pid, self.pid = self.pid, 0
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _frames(feed: int, parent: int) -> Iterator[list[Record]]:
    """The batches the parent sends, up to its end mark (or its death)."""
    while True:
        try:
            batch = receive(feed, parent)
        except EOFError:
            return  # the parent is gone without its end mark: nothing more comes
        if batch is None:
            return
        yield batch


def _serve(dirs: Any, feed: int, parent: int) -> tuple[Any, ...]:  # pragma: no cover - child
    """Create each file the parent sends; what happened, for the parent."""
    made = 0
    sha256 = _sha256
    fd_of = dirs.fd
    utime = os.utime
    try:
        for batch in _frames(feed, parent):
            for folder, base, created, data, mode, uid, gid, mtime, digest in batch:
                if sha256(data).hexdigest() != digest:
                    return ("differs", f"{folder}/{base}" if folder else base)
                try:
                    fd = os.open(base, _CREATE, created, dir_fd=fd_of(folder))
                except FileExistsError:
                    return ("twice", f"{folder}/{base}" if folder else base)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    if uid >= 0:
                        with contextlib.suppress(OSError):
                            os.fchown(fd, uid, gid)
                    if mode >= 0:
                        os.fchmod(fd, mode)
                    utime(fd, ns=(mtime, mtime))
                finally:
                    os.close(fd)
                made += 1
    except UnsafeArchive as exc:
        return ("unsafe", exc.detail, exc.hint)
    except OSError as exc:
        return ("os", exc.errno, exc.strerror, exc.filename)
    return ("ok", made)
