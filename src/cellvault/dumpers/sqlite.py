"""The ``sqlite`` dumper: a consistent copy through SQLite's online backup API.

Copying a SQLite file that is being written gives a torn database; the
online backup API copies it page by page under one read transaction, so the
copy is the database as of one commit, while writers go on (in WAL mode) or
wait for the copy (in rollback-journal mode, up to their busy timeout)::

    [[cells.crm.dumpers]]
    type = "sqlite"
    path = "/srv/crm/db/app.sqlite"

The copy is written to the run's spool (the API needs a database file to
write into), checked with ``PRAGMA quick_check``, then streamed into the
archive as ``dumps/<name>/<file name>``.

On restore the copy replaces the database file atomically (a temporary file
renamed over it). When the file lies inside one of the cell's paths, the
staged copy of the cell is replaced instead, so the swap puts the consistent
database in place with the rest of the files; stale ``-wal``, ``-shm`` and
``-journal`` files beside it are removed, as SQLite would otherwise replay
them onto the restored database. Outside the cell, the live file is
replaced: stop the service that writes it first (a ``before`` step of your
deployment, or ``restore_path`` to restore elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import secrets as _secrets
import shutil
import sqlite3
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from ..errors import DumpError, LoadError
from ..hookspecs import hookimpl
from ..specs import DumperSpec
from ..swap import exchange
from .base import DumpContext, Dumper, LoadContext
from .staging import StagedLoad

__all__ = ["SqliteDumper"]

_SIDE_FILES = ("-wal", "-shm", "-journal")


def _abs(value: Any) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ValueError(f"path {str(path)!r} is not absolute")
    return path


def _connect_ro(path: Path, timeout: float) -> sqlite3.Connection:
    # mode=ro: a missing file is an error, never a new empty database.
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout)


@attrs.define(kw_only=True)
class SqliteDumper(Dumper):
    """A SQLite database file, copied consistently while it may be written."""

    type: ClassVar[str] = "sqlite"

    #: The database file.
    path: Path = attrs.field(converter=_abs)
    #: Where a restore writes it (default: *path*).
    restore_path: Path | None = attrs.field(default=None, converter=attrs.converters.optional(_abs))
    #: Seconds to wait for a writer's lock before the copy starts.
    busy_timeout: float = attrs.field(default=60.0, converter=float)

    @property
    def filename(self) -> str:
        return self.path.name

    def dump(self, ctx: DumpContext) -> None:
        copy = ctx.spool / self.filename
        try:
            source = _connect_ro(self.path, self.busy_timeout)
        except sqlite3.Error as exc:
            raise DumpError(f"{ctx.where}: cannot open {self.path}: {exc}") from None
        try:
            dest = sqlite3.connect(copy)
            try:
                # pages=-1: the whole database in one step, under one read
                # transaction: a consistent snapshot even while others write.
                source.backup(dest, pages=-1)
                (check,) = dest.execute("PRAGMA quick_check").fetchone()
                pages = dest.execute("PRAGMA page_count").fetchone()[0]
            finally:
                dest.close()
            (mode,) = source.execute("PRAGMA journal_mode").fetchone()
        except sqlite3.Error as exc:
            raise DumpError(f"{ctx.where}: backup of {self.path} failed: {exc}") from None
        finally:
            source.close()
        if check != "ok":
            raise DumpError(f"{ctx.where}: the copy of {self.path} fails quick_check: {check}")
        ctx.info.update(
            sqlite=sqlite3.sqlite_version, source=str(self.path), pages=pages, journal_mode=mode
        )
        ctx.add_file(self.filename, copy)

    def probe(self) -> str:
        """Open the database read-only and run a quick check."""
        try:
            with contextlib.closing(_connect_ro(self.path, 5.0)) as db:
                (pages,) = db.execute("PRAGMA page_count").fetchone()
        except sqlite3.Error as exc:
            raise DumpError(
                f"dumper {self.name}: cannot open {self.path}: {exc}",
                hint="check path and that this user may read it",
            ) from None
        return f"{self.path} opens ({pages} pages)"

    def stage(self, ctx: LoadContext) -> StagedLoad:
        """Inside the cell: written into the staged files. Outside: a file beside the live one."""
        target = self.restore_path or self.path
        if ctx.staged(target) is not None:
            self.load(ctx)
            return StagedLoad(self.name, f"{target} (in the staged files)")
        dump = self._checked(ctx)
        target.parent.mkdir(parents=True, exist_ok=True)
        side = target.with_name(f".{target.name}.cellvault-new-{_secrets.token_hex(3)}")
        ctx.side_created(_FileSwap(self.name, str(target), str(side), target=target, new=side))
        try:
            shutil.copyfile(dump, side)
            with open(side, "rb+") as f:
                os.fsync(f.fileno())
            if target.exists():
                shutil.copymode(target, side)
        except OSError as exc:
            with contextlib.suppress(OSError):
                side.unlink()
            raise LoadError(f"{ctx.where}: cannot write {side}: {exc.strerror}") from None
        ino = os.stat(side).st_ino
        return _FileSwap(self.name, str(target), str(side), target=target, new=side, new_ino=ino)

    def resume(self, state: Mapping[str, Any]) -> StagedLoad | None:
        """A file a killed restore wrote beside the live one (or swapped in, the old one there)."""
        target, side, ino = state.get("target"), state.get("side"), state.get("new_ino")
        if not isinstance(target, str) or not isinstance(side, str) or not side:
            return None
        if Path(side).parent != Path(target).parent or not isinstance(ino, int):
            return None
        return _FileSwap(
            self.name,
            str(state.get("what")),
            side,
            target=Path(target),
            new=Path(side),
            new_ino=ino,
        )

    def _checked(self, ctx: LoadContext) -> Path:
        dump = ctx.path(self.filename)
        try:
            with contextlib.closing(sqlite3.connect(dump)) as db:
                (check,) = db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.Error as exc:
            raise LoadError(f"{ctx.where}: the dumped database does not open: {exc}") from None
        if check != "ok":
            raise LoadError(f"{ctx.where}: the dumped database fails quick_check: {check}")
        return dump

    def load(self, ctx: LoadContext) -> None:
        target = self.restore_path or self.path
        where = ctx.staged(target)
        dest = where if where is not None else target
        dump = self._checked(ctx)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.cellvault-restore")
        try:
            shutil.copyfile(dump, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            # A WAL or journal of another state would be replayed onto the restored file.
            for suffix in _SIDE_FILES:
                Path(f"{dest}{suffix}").unlink(missing_ok=True)
            if dest.exists():
                shutil.copymode(dest, tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise LoadError(f"{ctx.where}: cannot write {dest}: {exc.strerror}") from None

    def stock_restore(self, files: Sequence[str]) -> str | None:
        target = self.restore_path or self.path
        return f"cp {self.filename} {target} && rm -f {target}-wal {target}-shm {target}-journal"


@attrs.define
class _FileSwap(StagedLoad):
    """A database file written beside the live one, exchanged with it by rename(2).

    After the swap the old file is where the new one was (*new*), its WAL and
    journal beside it (``<new>-wal``...): a recovery after a kill finds
    everything from the names alone.
    """

    target: Path = attrs.field(kw_only=True)
    new: Path = attrs.field(kw_only=True)
    new_ino: int = attrs.field(default=0, kw_only=True)

    def swap(self) -> None:
        # A WAL or journal of the old state would be replayed onto the restored file:
        # moved aside with it, so that an unswap brings them back.
        for suffix in _SIDE_FILES:
            live = Path(f"{self.target}{suffix}")
            if live.exists():
                os.rename(live, f"{self.new}{suffix}")
        if self.target.exists():
            exchange(self.new, self.target)  # the old file is where the new one was
        else:
            os.rename(self.new, self.target)

    def swapped(self) -> bool:
        try:
            return os.lstat(self.target).st_ino == self.new_ino
        except FileNotFoundError:
            return False

    def unswap(self) -> None:
        if self.new.exists():
            exchange(self.new, self.target)
        else:
            os.rename(self.target, self.new)
        for suffix in _SIDE_FILES:
            away = Path(f"{self.new}{suffix}")
            if away.exists():
                os.rename(away, f"{self.target}{suffix}")

    def discard(self) -> None:
        self.new.unlink(missing_ok=True)

    def commit(self) -> None:
        for path in (self.new, *(Path(f"{self.new}{s}") for s in _SIDE_FILES)):
            path.unlink(missing_ok=True)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "target": str(self.target), "new_ino": self.new_ino}


@hookimpl
def cellvault_make_dumper(spec: DumperSpec) -> Dumper | None:
    return SqliteDumper.from_spec(spec) if spec.type == "sqlite" else None
