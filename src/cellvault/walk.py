"""The walk of a cell for a backup: its paths in archive order, as items.

Depth first, names sorted, the cell's exclusion rules applied. Each path
that is not a directory is classified as the packer needs it
(:meth:`CellWalk.item`): a file to store, a file unchanged since the parent
backup (an incremental), another name of a hard-link group, a link, a FIFO
or device, or a warning (a socket, a path gone). Once the readers of a full
backup are forked, a folder's regular files are handed over as runs of
names, not ``stat``-ed (:data:`~cellvault.readahead.RUN_ITEM`). Paths are
strings: pathlib per file cost a third of a walk.
"""

from __future__ import annotations

import operator
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from . import readahead
from .cell import Cell, excluder
from .errors import BackupError
from .fsmeta import Xattrs, encode_xattrs, special_kind, special_type
from .manifest import Entry
from .readahead import FILE_ITEM, RUN_ITEM

__all__ = [
    "DIR",
    "FILE",
    "HARD",
    "LINK",
    "RUN",
    "SAME",
    "SPECIAL",
    "WARN",
    "CellWalk",
    "Item",
]

# The walk's items, in archive order (tuples: built once per path, cheap to pass).
DIR, LINK, FILE, SAME, WARN, HARD, SPECIAL, RUN = range(8)
assert FILE == FILE_ITEM
assert RUN == RUN_ITEM
#: (kind, path, member name, stat, extra): extra is the link's target for LINK,
#: the parent's entry (or None) for FILE, the entry to list for SAME, the
#: message for WARN, the member name of the group's first name for HARD, the
#: entry type for SPECIAL (a FIFO or a device). A RUN is (kind, folder path +
#: "/", its member name + "/", names of regular files, None): see readahead.RUN_ITEM.
Item = tuple[int, str, str, Any, Any]


#: A directory entry's name (the walk's sort key; a getter in C, not a call per entry).
_by_name = operator.attrgetter("name")


@attrs.define
class CellWalk:
    """The walk of one cell's roots for one archive (see the module)."""

    cell: Cell
    #: Said of what is skipped or kept with a caveat (the packer's warnings).
    warn: Callable[[str], None]
    #: A path's extended attributes, read (and warned about) by the packer.
    xattrs: Callable[[str], Xattrs]
    #: The parent's entry of a path (an incremental), read in the parent manifest's order.
    parent_get: Callable[[str], Entry | None] | None = None
    #: Each file is to be hashed and compared with the parent's, not judged by its stat.
    checksum: bool = False
    #: A file modified before this instant (ns) cannot have changed unseen since the parent.
    racy_before: int | None = None
    #: Starts the forked readers (a full backup of many paths); ``None``: no runs.
    start_readers: Callable[[], bool] | None = None
    #: Bytes of the regular files found (the cell's total, a run's once built).
    bytes_total: int = 0
    #: Paths listed so far.
    listed: int = 0
    #: (device, inode) -> member name of the first name, for files with several names.
    _inodes: dict[tuple[int, int], str] = attrs.field(init=False, factory=dict)

    def items(self, roots: dict[str, Path]) -> Iterator[Item]:
        for name, root in roots.items():
            path = str(root)
            member = f"data/{name}"
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                yield (
                    WARN,
                    path,
                    member,
                    None,
                    f"{path} vanished during the scan; not in this archive",
                )
                continue
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk_dir(path, member, st)
            else:
                yield self.item(path, member, st)

    def _walk_dir(self, path: str, member: str, st: os.stat_result) -> Iterator[Item]:
        # Depth first, names sorted, as a stack of directory listings (a generator
        # per level would pass every item up through each level).
        excludes = excluder(self.cell)
        item = self.item
        runs = False  # regular files go to the readers as runs, unstat-ed
        yield (DIR, path, member, st, None)
        stack = [(self._list(path), path + "/", member + "/", "")]
        while stack:
            entries, base, mbase, rbase = stack[-1]
            if not runs and self.start_readers is not None:
                runs = self._runs_now()
            run: list[str] = []
            for entry in entries:
                name = entry.name
                if excludes is not None and excludes(rbase + name, name):
                    continue
                if runs and entry.is_file(follow_symlinks=False):
                    run.append(name)
                    if len(run) >= readahead.FORK_BATCH:
                        yield (RUN, base, mbase, run, None)
                        run = []
                    continue
                if run:
                    yield (RUN, base, mbase, run, None)
                    run = []
                child = base + name
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    yield (
                        WARN,
                        child,
                        "",
                        None,
                        f"{child} vanished during the scan; not in this archive",
                    )
                    continue
                if stat.S_ISDIR(st.st_mode):
                    cmember = mbase + name
                    yield (DIR, child, cmember, st, None)
                    stack.append(
                        (self._list(child), child + "/", cmember + "/", rbase + name + "/")
                    )
                    break
                yield item(child, mbase + name, st)
            else:
                stack.pop()
                if run:
                    yield (RUN, base, mbase, run, None)

    def _runs_now(self) -> bool:
        """Whether the walk hands regular files over as runs from now on (see :attr:`start_readers`)."""
        if self.listed < readahead.FORK_MIN_FILES or self.start_readers is None:
            return False
        start, self.start_readers = self.start_readers, None  # asked once
        return start()

    def _list(self, path: str) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=_by_name)
            self.listed += len(entries)
        except (FileNotFoundError, NotADirectoryError):
            # Removed (or replaced) between its parent's listing and its own: what
            # it held is not in this archive, the rest of the cell is.
            self.warn(f"{path} vanished during the scan; its contents are not in this archive")
            return iter(())
        except PermissionError:
            raise BackupError(
                f"cell {self.cell.name}: cannot list {path}: permission denied",
                hint="run the backup as a user that can read the cell's data",
            ) from None
        return iter(entries)

    def item(self, path: str, member: str, st: os.stat_result) -> Item:
        """The item of a path that is not a directory."""
        mode = st.st_mode
        if stat.S_ISREG(mode):
            if st.st_nlink > 1:
                # A hard-link group: the first name holds the bytes, the others name it.
                first = self._inodes.setdefault((st.st_dev, st.st_ino), member)
                if first != member:
                    return (HARD, path, member, st, first)
            self.bytes_total += st.st_size
            prev = self.parent_get(member) if self.parent_get is not None else None
            if prev is not None and not self.checksum and self._unchanged(prev, st, path):
                if prev.uid != st.st_uid or prev.gid != st.st_gid:
                    prev = attrs.evolve(prev, uid=st.st_uid, gid=st.st_gid)
                return (SAME, path, member, st, prev)
            return (FILE, path, member, st, prev)
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except FileNotFoundError:
                return (
                    WARN,
                    path,
                    member,
                    st,
                    f"{path} vanished during the scan; not in this archive",
                )
            return (LINK, path, member, st, target)
        special = special_type(mode)
        if special is not None:
            if special != "fifo" and os.geteuid() != 0:
                self.warn(
                    f"{path} is a {special_kind(mode)}; kept in the archive, but only a "
                    "restore run as root can create it again"
                )
            return (SPECIAL, path, member, st, special)
        kind = special_kind(mode)
        message = (
            f"{path} is a {kind}; skipped (a socket is made anew by the program that listens on it)"
        )
        return (WARN, path, member, st, message)

    def _unchanged(self, prev: Entry, st: os.stat_result, path: str) -> bool:
        # The inode is not compared: a restore gives every file a new one, and the
        # next incremental must not store the whole tree again for that.
        if prev.type != "file" or prev.archive is None:
            return False
        same = (
            prev.size == st.st_size
            and prev.mtime_ns == st.st_mtime_ns
            and prev.mode == stat.S_IMODE(st.st_mode)
        )
        if not same or prev.xattrs != encode_xattrs(self.xattrs(path)):
            return False
        # Racy: modified so close to the parent's scan that a change in the
        # same timestamp tick would not show. Store it again.
        assert self.racy_before is not None
        return prev.mtime_ns < self.racy_before
