"""Keeping, in an in-place restore, the live paths the cell's exclude rules leave out of backups.

A backup never holds what the cell excludes (``cache/``, ``*.tmp`` ...), so
swapping the restored tree in whole would delete those live paths. Before
the swap, each one is hard-linked (copied where the file system cannot link)
from the live tree into the staged tree, on the same file system: the swap
then keeps them, a rollback loses nothing (the live tree still holds them),
and no byte is copied for a file that can be linked. The rules are the
cell's current ``exclude`` patterns.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..cell import Cell, excluder
from ..log import get_logger

__all__ = ["carry_excluded"]

log = get_logger(__name__)


def carry_excluded(cell: Cell, live: Path, staged: Path) -> int:
    """Link every path below *live* that *cell* excludes into *staged*; return how many."""
    test = excluder(cell)
    if test is None or not live.is_dir() or live.is_symlink() or not staged.is_dir():
        return 0
    count = 0
    for dirpath, dirnames, filenames in os.walk(live):
        here = Path(dirpath)
        rel_dir = here.relative_to(live)
        for name in list(dirnames):
            rel = (rel_dir / name).as_posix()
            if test(rel, name):
                dirnames.remove(name)  # carried whole
                count += _carry(here / name, staged / rel, _copytree)
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if test(rel, name):
                count += _carry(here / name, staged / rel, _link)
    if count:
        log.info("restore.excluded_kept", cell=cell.name, destination=str(live), paths=count)
    return count


def _carry(src: Path, dst: Path, how: Callable[[Path, Path], None]) -> int:
    if dst.exists() or dst.is_symlink():
        return 0  # the archive holds it (the rules changed since): the archive wins
    _parents(src, dst)
    how(src, dst)
    return 1


def _parents(src: Path, dst: Path) -> None:
    """Make *dst*'s missing parent directories with the modes of *src*'s."""
    missing = []
    s, d = src.parent, dst.parent
    while not d.exists():
        missing.append((s, d))
        s, d = s.parent, d.parent
    for s, d in reversed(missing):
        d.mkdir()
        shutil.copystat(s, d, follow_symlinks=False)


def _link(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _copytree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    _link(Path(src), Path(dst))
