"""A quick pre-scan of a cell's trees: how many files and bytes a backup will read.

The totals a progress display needs before packing starts (cells done of
total, bytes done of total, ETA). It walks the cell's roots with the cell's
exclude rules, as the backup's own walk does, but only counts: a metadata
walk, which also warms the cache for the walk that follows. Paths that vanish
or cannot be listed are skipped here; the backup itself reports them.
"""

from __future__ import annotations

import os
import stat

import attrs

from .cell import Cell, excluder

__all__ = ["TreeTotals", "tree_totals"]


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
