"""Swapping a restored tree into place, and back out if anything fails.

The staging directory is created beside the destination, on the same file
system, so the swap is a rename. On Linux ``renameat2(RENAME_EXCHANGE)`` swaps
the live tree and the staged one in one atomic step; elsewhere three renames
do it, with the old data kept under a temporary name throughout. The old data
is deleted only after every root of every cell is in place.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .errors import RestoreError
from .log import get_logger
from .tool import run_tool

__all__ = [
    "OWNER_SUFFIX",
    "STAGING_PREFIX",
    "Swap",
    "exchange",
    "owner_path",
    "read_owner",
]

log = get_logger(__name__)

#: The staging directories' names: ``.cellvault-restore-<archive>-<hex>`` (and, for a root
#: copied to another file system, ``.cellvault-restore-<root>-<hex>``).
STAGING_PREFIX = ".cellvault-restore-"
#: Beside each staging directory, ``<its name>.owner.json`` says who made it (cell,
#: archive, pid, host) and which copies beside other destinations belong to it; it is
#: written before the directory is made, and removed after it (outside the staged tree,
#: which restore hooks see).
OWNER_SUFFIX = ".owner.json"


def owner_path(staging: Path) -> Path:
    """The owner file of the staging directory *staging*."""
    return staging.with_name(staging.name + OWNER_SUFFIX)


#: The staging directories this process holds (a run of another thread is alive too).
HELD: set[Path] = set()

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
    """Copy a staged tree to another file system, keeping all that a restore keeps.

    GNU ``cp -a`` keeps modes, times, owners (as root), hard links, extended
    attributes and ACLs, holes of sparse files, FIFOs and devices;
    ``shutil.copytree`` keeps none of the last five (and blocks on a FIFO).
    """
    run_tool(
        ["cp", "-a", "--", os.fspath(src), os.fspath(dst)],
        what=f"copying the staged tree to {dst.parent}",
        error=RestoreError,
        stdout="discard",
        timeout=None,
        hint="check the free space and permissions of the destination's file system",
    )


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
    warnings: tuple[str, ...] = ()
    #: What its owner file says (empty for a swap not made by :meth:`create`).
    owner: dict[str, Any] = attrs.field(factory=dict)
    #: The folders made on the way to the destinations, outermost first:
    #: :meth:`discard` removes those a failed restore leaves empty.
    made: list[Path] = attrs.field(factory=list)

    @classmethod
    def create(
        cls,
        dests: dict[str, Path],
        archive: str,
        near: Path | None = None,
        cell: str = "",
        *,
        in_place: bool = False,
    ) -> Swap:
        """Make the staging directory beside the first destination (or *near*, if none).

        Its owner file (:func:`owner_path`: the cell, the archive, this
        process) is written first, so that the next run can tell a staging
        directory a dead restore left from one a running restore holds. *in_place*: a restore into the cell's
        own paths, which journals the cell before any swap (:mod:`cellvault.journal`).
        """
        first = next(iter(dests.values()), near)
        if first is None:
            raise ValueError("a swap needs a destination or a place to stage near")
        made: list[Path] = []
        _make_folder(first.parent, made)
        staging = first.parent / f"{STAGING_PREFIX}{archive}-{secrets.token_hex(4)}"
        swap = cls(dests=dict(dests), staging=staging, made=made)
        swap.owner = {
            "cell": cell,
            "archive": archive,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "copies": [],
            "in_place": in_place,
        }
        HELD.add(staging)
        swap._save_owner()
        try:
            staging.mkdir(mode=0o700)
        except BaseException:
            owner_path(staging).unlink(missing_ok=True)
            HELD.discard(staging)
            raise
        return swap

    def _save_owner(self) -> None:
        path = owner_path(self.staging)
        tmp = path.with_name(f"{path.name}.tmp")
        tmp.write_text(json.dumps(self.owner, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    def place(self) -> None:
        """Make sure each staged root sits on its destination's file system."""
        stage_dev = os.stat(self.staging).st_dev
        for root, dest in self.dests.items():
            staged = self.staging / root
            _make_folder(dest.parent, self.made)
            if os.stat(dest.parent).st_dev == stage_dev:
                self.placed[root] = staged
                continue
            # Another file system: copy it next to the destination first.
            near = dest.parent / f"{STAGING_PREFIX}{root}-{secrets.token_hex(4)}"
            if self.owner:
                # Named before it is made: a kill during the copy leaves it findable.
                self.owner["copies"] = [*self.owner.get("copies", []), str(near)]
                self._save_owner()
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
        owner_path(self.staging).unlink(missing_ok=True)
        HELD.discard(self.staging)

    def discard(self) -> None:
        """Before any swap: delete what was staged, and the folders made for it, if empty."""
        self.cleanup()
        for folder in reversed(self.made):
            with contextlib.suppress(OSError):  # not empty (another cell's), or gone
                folder.rmdir()
        self.made = []


def _make_folder(path: Path, made: list[Path]) -> None:
    """``path.mkdir(parents=True, exist_ok=True)``, adding to *made* the folders it made."""
    missing = []
    above = path
    while not os.path.lexists(above):
        missing.append(above)
        above = above.parent
    path.mkdir(parents=True, exist_ok=True)
    made.extend(reversed(missing))


def read_owner(staging: Path) -> dict[str, Any] | None:
    """What the owner file of *staging* says (``None``: absent or unreadable)."""
    try:
        data = json.loads(owner_path(staging).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
