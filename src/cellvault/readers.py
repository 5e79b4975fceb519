"""Small files of a backup read by other processes.

A backup of many small files spends most of its time on work per file:
opening, reading and hashing it, then its tar header and manifest entry. In
one process that work runs on one core, and read-ahead threads only pass the
GIL to and fro. :class:`Readers` forks children (two) that do it instead:
the packer walks the cell and sends the small files it finds, a batch at a
time, to whichever child is idle; a child opens each file as the packer
would (:func:`~cellvault.safeopen.open_scanned_fd`: no link followed, a
regular file, the inode the walk saw), reads and hashes it, and answers with
the file's whole tar member (header, bytes, padding) and its manifest entry
(:func:`file_entry`). The packer writes them in walk order, as if it had
built them.

A child builds a member only for a plain file: still the one the walk saw,
of the size the walk saw, without extended attributes. For anything else (an
error, a file that shrank or was swapped, extended attributes) it answers
``None``, and the packer opens and stores that file itself, so that every
warning and error is the packer's own, word for word.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _quote

from .errors import BackupError
from .forking import Child, fork, frames, receive, send
from .fsmeta import read_xattrs
from .safeopen import open_scanned_fd
from .tarwrite import ZEROS, file_header

__all__ = [
    "CHILDREN",
    "Answer",
    "Built",
    "Job",
    "Part",
    "Readers",
    "Run",
    "build",
    "build_run",
    "file_entry",
    "job_of",
]

#: Readers forked per cell packed: two keep the packer and both cores busy.
CHILDREN = 2

#: A file for a child, from the walk's ``lstat``: its path, member name, mode
#: (permission bits), owner, group, size, mtime (ns), inode, device and ctime (ns).
Job = tuple[str, str, int, int, int, int, int, int, int, int]
#: Regular files of one folder, in walk order, known by name only (a full
#: backup's walk does not ``stat`` them: the reader's ``fstat`` is their scan):
#: the folder's path and member name (each ending in ``/``), and the names.
#: (A run is told from a :data:`Job` by its length.)
Run = tuple[str, str, list[str]]
#: What a child answers for a file: its tar member, manifest entry and size,
#: or ``None`` (the packer stores it itself).
Built = tuple[bytes, str, int] | None
#: A part of what a child answers for a run, in order: the members of files
#: built one after the other (their tar members as one string of bytes, their
#: manifest entries, their total size), or the name of a file it left to the
#: packer.
Part = tuple[bytes, list[str], int] | str
#: A child's answer to a batch: for each of its jobs what :func:`build` gave,
#: for each run what :func:`build_run` gave.
Answer = list[Built | list[Part]]

_sha256 = hashlib.sha256


def file_entry(
    name: str,
    mode: int,
    mtime_ns: int,
    uid: int,
    gid: int,
    size: int,
    sha256: str,
    archive: str,
    inode: int,
    dev: int,
    ctime_ns: int,
    xattrs: tuple[tuple[str, str], ...] = (),
) -> str:
    """The manifest entry of a stored file: ``Entry(path=name, type="file", ...).to_json()``.

    Written as text, without the :class:`~cellvault.manifest.Entry`: this is
    once per file stored (``tests/test_pack_extract.py`` compares the two).
    *archive* is the archive's id as JSON text (quoted).
    """
    tail = "}"
    if xattrs:
        pairs = ",".join(f"{_quote(k)}:{_quote(v)}" for k, v in xattrs)
        tail = f',"xattrs":{{{pairs}}}}}'
    # (Ints as they are: the same text as with ":d", in half the time.)
    return (
        f'{{"path":{_quote(name)},"type":"file","mode":{mode},'
        f'"mtime_ns":{mtime_ns},"uid":{uid},"gid":{gid},'
        f'"size":{size},"sha256":{_quote(sha256)},"archive":{archive},'
        f'"inode":{inode},"dev":{dev},"ctime_ns":{ctime_ns}{tail}'
    )


def job_of(path: str, member: str, st: os.stat_result) -> Job:
    """The :data:`Job` of the file at *path*, to be stored as *member*, from the walk's ``lstat``."""
    return (
        path,
        member,
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
        st.st_dev,
        st.st_ctime_ns,
    )


def build(job: Job, archive: str) -> Built:
    """The tar member and manifest entry of the file *job* names, or ``None`` if it is not plain.

    *archive* is the archive's id as JSON text.
    """
    path, size, inode, dev = job[0], job[5], job[7], job[8]

    def same(now: os.stat_result) -> int | None:
        # Another file now (the packer sees to it), or the walk's size to read.
        return size if (now.st_ino, now.st_dev) == (inode, dev) else None

    got = _read_plain(path, same)
    return None if got is None else _built(job, got[1], archive)


def _read_plain(
    path: str, size_of: Callable[[os.stat_result], int | None]
) -> tuple[os.stat_result, bytes] | None:
    """Open *path* as the packer would and read it whole, if it is plain.

    *size_of* tells, from the open file's ``fstat``, how many bytes to read
    (``None``: not plain). Not plain either: sparse (the packer maps its
    holes), shorter than that, with extended attributes, or any error.
    """
    try:
        fd, st = open_scanned_fd(path)
    except OSError:
        return None
    try:
        size = size_of(st)
        if size is None or st.st_blocks * 512 < size:
            return None
        data = os.read(fd, size) if size else b""
        if len(data) != size or read_xattrs(fd):
            return None
    except OSError:
        return None
    finally:
        os.close(fd)
    return st, data


def _built(job: Job, data: bytes, archive: str) -> Built:
    _, name, mode, uid, gid, size, mtime_ns, inode, dev, ctime_ns = job
    entry = file_entry(
        name,
        mode,
        mtime_ns,
        uid,
        gid,
        size,
        _sha256(data).hexdigest(),
        archive,
        inode,
        dev,
        ctime_ns,
    )
    member = file_header(name, mode, uid, gid, size, mtime_ns) + data + ZEROS[: -size % 512]
    return member, entry, size


def build_run(run: Run, archive: str, largest: int, budget: int) -> list[Part]:
    """The files of *run* built as :func:`build` would, from their ``fstat``, in parts.

    A file is built when it is a plain file: regular, of one name (a hard
    link's group is the packer's), of at most *largest* bytes, not sparse,
    without extended attributes; the others are named in the answer, for the
    packer. Once the members built hold *budget* bytes of data, the rest is
    left to the packer too (an answer stays bounded).
    """
    base, mbase, names = run
    parts: list[Part] = []
    members: list[bytes] = []
    entries: list[str] = []
    size = held = 0
    for name in names:
        got = None
        if held < budget:
            got = _build_named(base + name, mbase + name, largest, archive)
        if got is not None:
            members.append(got[0])
            entries.append(got[1])
            size += got[2]
            held += got[2]
            continue
        if members:
            parts.append((b"".join(members), entries, size))
            members, entries, size = [], [], 0
        parts.append(name)
    if members:
        parts.append((b"".join(members), entries, size))
    return parts


def _build_named(path: str, name: str, largest: int, archive: str) -> Built:
    def plain(st: os.stat_result) -> int | None:
        # Of one name (a hard link's group is the packer's), not larger than *largest*.
        return st.st_size if st.st_nlink == 1 and st.st_size <= largest else None

    got = _read_plain(path, plain)
    return None if got is None else _built(job_of(path, name, got[0]), got[1], archive)


class _Child(Child):
    """One reader: a batch of jobs in, the batch's members out, one batch at a time."""

    def __init__(self, pid: int, feed: int, result: int) -> None:
        super().__init__(pid, feed, result)
        #: A batch was sent and its answer not yet taken.
        self.busy = False


class Readers:
    """Forked children that read small files and build their members (see the module).

    :meth:`start` forks them (``None`` where this process cannot fork);
    :meth:`idle` names a child free for a batch, :meth:`send` hands it one,
    :meth:`take` waits for that batch's answer. A child has one batch at a
    time: neither side can then wait on a full pipe the other is not reading.
    :meth:`close` ends them (killed if a batch is still out).
    """

    def __init__(self, children: list[_Child]) -> None:
        self._children = children

    @classmethod
    def start(cls, archive: str, largest: int, budget: int) -> Readers | None:
        """Fork the readers for the archive whose id is *archive* (see :func:`build_run`)."""
        quoted = _quote(archive)

        def work(feed: int, out: int, parent: int) -> None:  # pragma: no cover - the child
            for batch in frames(feed, parent):
                send(
                    out,
                    [
                        build_run(one, quoted, largest, budget)
                        if len(one) == 3
                        else build(one, quoted)
                        for one in batch
                    ],
                )

        children: list[_Child] = []
        for _ in range(CHILDREN):
            got = fork(work)
            if got is None:
                break
            children.append(_Child(*got))
        return cls(children) if children else None

    def idle(self) -> _Child | None:
        """A child with no batch out, if there is one."""
        for child in self._children:
            if not child.busy:
                return child
        return None

    def send(self, child: _Child, jobs: list[Job | Run]) -> None:
        child.busy = True
        with contextlib.suppress(BrokenPipeError):  # it is gone: take() says so
            send(child.feed, jobs)

    def take(self, child: _Child) -> Answer:
        """The answer to the batch *child* was sent."""
        try:
            built: Answer = receive(child.result)
        except (EOFError, ValueError, TypeError):
            raise BackupError(
                f"the process reading the cell's files {child.how_ended()}",
                hint="run the backup again",
            ) from None
        child.busy = False
        return built

    def close(self) -> None:
        """End the children: at once if a batch is still out, else once they have read the end."""
        for child in self._children:
            child.end(kill=child.busy)
        self._children = []
