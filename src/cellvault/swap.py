"""Swapping a restored tree into place, and back out if anything fails.

The staging directory is created beside the destination, on the same file
system, so the swap is a rename. On Linux ``renameat2(RENAME_EXCHANGE)`` swaps
the live tree and the staged one in one atomic step; elsewhere three renames
do it, with the old data kept under a temporary name throughout. The old data
is deleted only after every root of every cell is in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import attrs

from .log import get_logger

__all__ = ["Swap", "exchange"]

log = get_logger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc: ctypes.CDLL | bool | None = None


def _renameat2(a: Path, b: Path) -> bool:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    if not isinstance(_libc, ctypes.CDLL) or not hasattr(_libc, "renameat2"):
        return False
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot; fall back
        return False
    raise OSError(err, os.strerror(err), str(b))


def exchange(a: Path, b: Path) -> None:
    """Swap the entries at *a* and *b* (both must exist), atomically when the kernel can."""
    if _renameat2(a, b):
        return
    tmp = b.with_name(f".{b.name}.cellvault-swap-{secrets.token_hex(4)}")
    os.rename(b, tmp)
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(tmp, b)
        raise
    os.rename(tmp, a)


def _copy_across(src: Path, dst: Path) -> None:
    """Copy a staged tree to another file system, keeping modes, times, links and owners.

    ``shutil.move`` across file systems copies with ``copy2``, which keeps
    modes and times but not owners: every restored path would belong to the
    user running the restore.
    """
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True)
        copies = [dst]
        for dirpath, dirnames, filenames in os.walk(dst):
            copies.extend(Path(dirpath, name) for name in [*dirnames, *filenames])
    else:
        shutil.copy2(src, dst, follow_symlinks=False)
        copies = [dst]
    as_root = os.geteuid() == 0
    for there in copies:
        st = os.lstat(src / there.relative_to(dst))
        if as_root:
            os.chown(there, st.st_uid, st.st_gid, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            # chown clears the set-user-ID and set-group-ID bits: put the mode back.
            there.chmod(stat.S_IMODE(st.st_mode))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


@attrs.define
class Swap:
    """One cell's staged tree and the swaps that put it in place."""

    dests: dict[str, Path]
    staging: Path
    placed: dict[str, Path] = attrs.field(factory=dict)
    done: list[tuple[str, bool]] = attrs.field(factory=list)
    #: Root -> where its old live data is, when a rollback could not put it back.
    stranded: dict[str, Path] = attrs.field(factory=dict)
    files: int = 0
    bytes: int = 0
    duration: float = 0.0

    @classmethod
    def create(cls, dests: dict[str, Path], archive: str, near: Path | None = None) -> Swap:
        """Make the staging directory beside the first destination (or *near*, if none)."""
        first = next(iter(dests.values()), near)
        if first is None:
            raise ValueError("a swap needs a destination or a place to stage near")
        first.parent.mkdir(parents=True, exist_ok=True)
        staging = first.parent / f".cellvault-restore-{archive}-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        return cls(dests=dict(dests), staging=staging)

    def place(self) -> None:
        """Make sure each staged root sits on its destination's file system."""
        stage_dev = os.stat(self.staging).st_dev
        for root, dest in self.dests.items():
            staged = self.staging / root
            dest.parent.mkdir(parents=True, exist_ok=True)
            if os.stat(dest.parent).st_dev == stage_dev:
                self.placed[root] = staged
                continue
            # Another file system: copy it next to the destination first.
            near = dest.parent / f".cellvault-restore-{root}-{secrets.token_hex(4)}"
            try:
                _copy_across(staged, near)
            except BaseException:
                _remove(near)
                raise
            _remove(staged)
            self.placed[root] = near

    def commit(self, on_root: Callable[[str], None] | None = None) -> None:
        """Swap every staged root into place; the old data goes where the staged tree was.

        All or nothing for the cell: when the swap of one root fails, the
        roots already swapped are put back (:meth:`rollback`) before the
        error is raised. *on_root* is called after each root is swapped.
        """
        try:
            for root, dest in self.dests.items():
                src = self.placed[root]
                if dest.exists() or dest.is_symlink():
                    exchange(src, dest)
                    self.done.append((root, True))
                else:
                    os.rename(src, dest)
                    self.done.append((root, False))
                log.info("restore.swapped", destination=str(dest))
                if on_root is not None:
                    on_root(root)
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> dict[str, Path]:
        """Undo :meth:`commit`: put the old data back.

        Returns, per root whose old data could not be put back, where that
        data is now (it is then kept by :meth:`cleanup` and :meth:`discard`).
        """
        for root, had_old in reversed(self.done):
            dest, src = self.dests[root], self.placed[root]
            try:
                if had_old:
                    exchange(src, dest)
                else:
                    os.rename(dest, src)
            except OSError as exc:
                log.error(
                    "restore.rollback_failed", destination=str(dest), kept=str(src), error=str(exc)
                )
                if had_old:
                    self.stranded[root] = src
        self.done.clear()
        return dict(self.stranded)

    def cleanup(self) -> None:
        """After success: delete the old data and the staging directory.

        Never deletes data :meth:`rollback` could not put back (:attr:`stranded`).
        """
        keep = set(self.stranded.values())
        for path in self.placed.values():
            if path.parent != self.staging and path not in keep:
                _remove(path)
        if any(path.parent == self.staging for path in keep):
            for child in list(self.staging.iterdir()):
                if child not in keep:
                    _remove(child)
            return
        _remove(self.staging)

    def discard(self) -> None:
        """Before any swap: delete what was staged."""
        self.cleanup()
