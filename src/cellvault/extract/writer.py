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
import os
from collections.abc import Callable
from typing import Any, NoReturn

from ..errors import UnsafeArchive
from ..forking import Child, fork, frames, receive, send, write_all

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

    def __init__(
        self, children: list[_Child], archive: str, differs: Callable[[str], Exception]
    ) -> None:
        self._children = children
        self._turn = 0
        self.archive = archive
        self._differs = differs
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

        def work(feed: int, out: int, parent: int) -> None:  # pragma: no cover - the child
            try:
                outcome = _serve(dirs(root), feed, parent)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
                outcome = ("crash", f"{type(exc).__name__}: {exc}")
            send(out, outcome)

        started: list[_Child] = []
        for _ in range(CHILDREN if children is None else children):
            forked = fork(work, root)
            if forked is None:
                break
            started.append(_Child(*forked))
        return cls(started, archive, differs) if started else None

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
        stopped = child.send(batch)
        if stopped is not None:
            self._raise(stopped, child)

    def close(self) -> int:
        """Send the last batch, wait for every child; the number of files they made.

        Raises what a child met (see the module's docstring).
        """
        if self._batch:
            self._send()
        made = 0
        for child in self._children:
            outcome = child.finish()
            if outcome[0] != "ok" or outcome[1] != child.sent:
                self._raise(outcome, child)
            made += int(outcome[1])
        return made

    def abort(self) -> None:
        """End the children now and wait for them (after a failure; idempotent)."""
        for child in self._children:
            child.abort()

    def _raise(self, outcome: tuple[Any, ...], child: _Child) -> NoReturn:
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
                errno.EIO, f"the file writer made {outcome[1]} of {child.sent} files", None
            )
        raise OSError(errno.EIO, f"the file writer failed ({outcome[1]})", None)


class _Child(Child):
    """One forked writer (:func:`~cellvault.forking.fork`): batches in, its last word out."""

    def __init__(self, pid: int, feed: int, result: int) -> None:
        super().__init__(pid, feed, result)
        #: Files handed to it.
        self.sent = 0

    def send(self, batch: list[Record]) -> tuple[Any, ...] | None:
        """Hand *batch* over; the child's last word if it has stopped reading (it met something)."""
        self.sent += len(batch)
        try:
            send(self.feed, batch)
        except BrokenPipeError:
            return self._outcome()
        return None

    def finish(self) -> tuple[Any, ...]:
        """Send the end mark and wait for the child; its last word."""
        with contextlib.suppress(BrokenPipeError):
            send(self.feed, None)
        return self._outcome()

    def _outcome(self) -> tuple[Any, ...]:
        """The child's last word, once it has ended (a crash says so)."""
        try:
            outcome = receive(self.result)
        except (EOFError, ValueError, TypeError):
            outcome = ("crash", f"the file writer {self.how_ended()}")
        self.end(kill=False)
        return outcome if isinstance(outcome, tuple) and outcome else ("crash", repr(outcome))

    def abort(self) -> None:
        """End the child now and wait for it (idempotent)."""
        self.end(kill=True)


def _serve(dirs: Any, feed: int, parent: int) -> tuple[Any, ...]:  # pragma: no cover - child
    """Create each file the parent sends; what happened, for the parent."""
    made = 0
    sha256 = _sha256
    fd_of = dirs.fd
    utime = os.utime
    try:
        for batch in frames(feed, parent):
            for folder, base, created, data, mode, uid, gid, mtime, digest in batch:
                if sha256(data).hexdigest() != digest:
                    return ("differs", f"{folder}/{base}" if folder else base)
                try:
                    fd = os.open(base, _CREATE, created, dir_fd=fd_of(folder))
                except FileExistsError:
                    return ("twice", f"{folder}/{base}" if folder else base)
                try:
                    write_all(fd, data)
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
