"""A quick pre-scan of a cell's trees: how many files and bytes a backup will read.

The totals a progress display needs before packing starts (cells done of
total, bytes done of total, ETA). It walks the cell's roots with the cell's
exclude rules, as the backup's own walk does, but only counts: a metadata
walk, which also warms the cache for the walk that follows. Paths that vanish
or cannot be listed are skipped here; the backup itself reports them.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import time
from collections.abc import Sequence

import attrs

from .cell import Cell, excluder
from .forking import FORK_MAX_RSS, resident

__all__ = ["TotalsAhead", "TreeTotals", "tree_totals"]


@attrs.frozen
class TreeTotals:
    """The regular files under a cell's roots, and their bytes."""

    files: int = 0
    bytes: int = 0


def tree_totals(cell: Cell) -> TreeTotals:
    """Count the regular files (and their sizes) a full backup of *cell* would read."""
    excludes = excluder(cell)
    files = size = 0
    for root in cell.roots.values():
        stack = [(str(root), "")]
        try:
            st = os.lstat(root)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            files, size = files + 1, size + st.st_size
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        while stack:
            path, rbase = stack.pop()
            try:
                with os.scandir(path) as it:
                    entries = list(it)
            except OSError:
                continue
            for entry in entries:
                rel = rbase + entry.name
                if excludes is not None and excludes(rel, entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append((entry.path, rel + "/"))
                elif stat.S_ISREG(st.st_mode):
                    files += 1
                    size += st.st_size
    return TreeTotals(files=files, bytes=size)


class TotalsAhead:
    """:func:`tree_totals` of some cells, counted by a child process while the backup goes on.

    The pre-scan is a walk of its own (a ``stat`` per path): in the backup's
    process it held up the packing by its whole duration. A forked child
    counts instead, on another core; :meth:`ready` says (without waiting)
    whether its counts are in, :meth:`get` waits for them. Where the child
    cannot be started (no ``fork``, or it fails), or it ends without counts,
    the counts are taken here, as before.
    """

    #: Seconds :meth:`get` waits for the child's counts before counting here instead.
    WAIT = 60.0
    #: Above this resident size the counts are taken here: a fork of a big process
    #: (a service that embeds cellvault) costs more than the walk it would save.
    FORK_MAX_RSS = FORK_MAX_RSS

    def __init__(self, cells: Sequence[Cell]) -> None:
        self.cells = list(cells)
        self._totals: list[TreeTotals] | None = None
        self._pid = 0
        self._fd = -1
        self._buf = b""
        if not self.cells:
            self._totals = []
            return
        if resident() > self.FORK_MAX_RSS:
            return  # counted here, by get()
        try:
            read_fd, write_fd = os.pipe()
        except OSError:
            return
        try:
            pid = os.fork()
        except (OSError, AttributeError):
            os.close(read_fd)
            os.close(write_fd)
            return
        if pid == 0:  # pragma: no cover - the child, measured by the parent's counts
            code = 1
            try:
                # Nothing of the parent's held open here (a lock's descriptor kept
                # alive by this child would outlive its release by the parent).
                os.closerange(3, write_fd)
                os.closerange(write_fd + 1, os.sysconf("SC_OPEN_MAX"))
                found = [tree_totals(cell) for cell in self.cells]
                text = " ".join(f"{t.files}:{t.bytes}" for t in found) + "\n"
                os.write(write_fd, text.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self._pid, self._fd = pid, read_fd

    def ready(self) -> bool:
        """Whether the counts are in (reading what the child wrote, without waiting)."""
        if self._totals is not None:
            return True
        if self._fd < 0:
            self.get()  # no child (or it failed): counted here
            return True
        ready, _, _ = select.select([self._fd], [], [], 0)
        if ready:
            self._finish(block=False)
        return self._totals is not None

    def get(self) -> list[TreeTotals]:
        """The counts of the cells, in order (waiting for the child, or counting here)."""
        if self._totals is None and self._fd >= 0:
            self._finish(block=True)
        if self._totals is None:
            self._totals = [tree_totals(cell) for cell in self.cells]
        return self._totals

    def _finish(self, *, block: bool) -> None:
        deadline = time.monotonic() + self.WAIT
        while True:
            # A child that is stuck (a lock another thread held at the fork) is not
            # waited for past WAIT: it is ended and the counts are taken here.
            wait = max(0.0, deadline - time.monotonic())
            if block and not select.select([self._fd], [], [], wait)[0]:
                self.close()
                return
            chunk = os.read(self._fd, 1 << 16)
            self._buf += chunk
            if not chunk or self._buf.endswith(b"\n"):
                break
            if not block:
                return  # more to come (read on at the next call)
        self.close()
        with contextlib.suppress(ValueError):
            pairs = [field.split(b":") for field in self._buf.split()]
            found = [TreeTotals(files=int(n), bytes=int(b)) for n, b in pairs]
            if len(found) == len(self.cells):
                self._totals = found

    def close(self) -> None:
        """Stop waiting for the child (it is ended if still counting) and reap it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._pid:
            pid, self._pid = self._pid, 0
            with contextlib.suppress(OSError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
