"""The dumper plugin interface: the :class:`Dumper` base class, and the contexts it is given.

A :class:`Dumper` takes a consistent snapshot of something that is not a
plain file tree (a PostgreSQL or MariaDB database, a SQLite file that is being
written, a Redis keyspace, any command's output) while a cell is backed up,
and loads it back when the cell is restored. Dumper types are plugins: the
``cellvault_make_dumper`` hook turns a :class:`DumperSpec` (what a cell's
configuration says) into a dumper, and the built-in types register through
that same hook.

A dumper writes its dump through a :class:`DumpContext` and reads it back
through a :class:`LoadContext`; how the dump travels inside the archive is
in :mod:`cellvault.dumpers.members`, and how a backup and a restore drive
the dumpers of a cell in :mod:`cellvault.dumpers.archive_io`.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, cast

import attrs

from ..archive import ArchiveMeta
from ..cell import Cell
from ..errors import ConfigError, DumpError, LoadError
from ..log import redact, redact_text
from ..progress import CountingReader
from ..specs import DumperSpec, validate_dumper_name
from ..tool import BLOCK, DEFAULT_TIMEOUT, StdinSource, ToolResult, run_tool
from .members import (
    DESCRIPTOR,
    DUMP_CHUNK,
    DUMPS_ROOT,
    ArchiveDumps,
    ConcatReader,
    DumpWriter,
    FileRecord,
    SizedFileReader,
    is_dump_file_name,
)
from .options import to_args, to_bool, to_env, to_float, to_list, to_optional_float

# The option converters are part of what a dumper type builds on (docs/plugins.md).
from .staging import StagedLoad

__all__ = [
    "DESCRIPTOR",
    "DUMPS_ROOT",
    "DUMP_CHUNK",
    "DumpContext",
    "DumpError",
    "Dumper",
    "DumperSpec",
    "LoadContext",
    "LoadError",
    "ToolResult",
    "run_tool",
    "to_args",
    "to_bool",
    "to_env",
    "to_float",
    "to_list",
]


@attrs.define(kw_only=True)
class Dumper:
    """Base class of every dumper type.

    Subclasses are attrs classes whose fields are their options (what a TOML
    table or ``BACKUP_CELL_<CELL>_DUMPER_<NAME>_<OPTION>`` sets). Give each
    field a converter that accepts strings (see :func:`to_bool`,
    :func:`to_list`), as environment values are strings. Implement
    :meth:`dump` and :meth:`load`.
    """

    #: The type name configurations use (``type = "postgres"``).
    type: ClassVar[str] = ""
    #: Field names whose values never reach a log, an error or ``dumper.json``.
    secret_fields: ClassVar[frozenset[str]] = frozenset({"password"})

    #: Names the dump in the archive: ``dumps/<name>/``.
    name: str = attrs.field(validator=lambda _, __, v: validate_dumper_name(v))
    #: Seconds a dump, or a load, may take before its tool is stopped (0: no limit).
    timeout: float | None = attrs.field(default=DEFAULT_TIMEOUT, converter=to_optional_float)
    #: Load this dump automatically when the cell is restored in place. Off, the
    #: dump is only staged, for a restore hook (``$CELLVAULT_DUMPS``) to import.
    autoload: bool = attrs.field(default=True, converter=to_bool)
    #: The options as configured, before the type filled in fields from others (a
    #: dsn's host and port): what :meth:`with_options` starts from.
    _configured: dict[str, Any] | None = attrs.field(default=None, init=False, repr=False, eq=False)

    @classmethod
    def from_spec(cls, spec: DumperSpec) -> Dumper:
        """Build a dumper of this class from *spec*; :class:`ConfigError` names a bad option."""
        return cls._build(spec.name, spec.type, dict(spec.options))

    @classmethod
    def _build(cls, name: str, kind: str, options: dict[str, Any]) -> Dumper:
        known = {f.name for f in attrs.fields(cls) if f.init} - {"name"}
        where = f"dumper {name} (type {kind})"
        for key in options:
            if key not in known:
                match = difflib.get_close_matches(key, sorted(known), n=1)
                raise ConfigError(
                    f"{where}: unknown option {key!r}",
                    hint=f"did you mean {match[0]!r}?"
                    if match
                    else f"known options: {', '.join(sorted(known))}",
                )
        try:
            dumper = cls(name=name, **options)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {redact_text(str(exc))}") from None
        dumper._configured = dict(options)
        return dumper

    def with_options(self, options: Mapping[str, Any]) -> Dumper:
        """A copy with *options* changed (restore-time choices such as ``tables``)."""
        if not options:
            return self
        if self._configured is not None:
            # From the options as configured: a dsn given for this restore must not
            # lose to the host and port the configured dsn filled in.
            current = dict(self._configured)
        else:
            current = {f.name: getattr(self, f.name) for f in attrs.fields(type(self)) if f.init}
            current.pop("name")
        return self._build(self.name, self.type, {**current, **options})

    def describe(self) -> dict[str, Any]:
        """The options, without secrets: what ``dumper.json`` and logs show."""
        out: dict[str, Any] = {}
        for f in attrs.fields(type(self)):
            if not f.init or f.name == "name":
                continue
            value = getattr(self, f.name)
            if f.name in self.secret_fields:
                value = "***" if value else value
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = redact(value, f.name)
        return out

    def dump(self, ctx: DumpContext) -> None:
        """Write a consistent snapshot through *ctx* (:meth:`DumpContext.open`, :meth:`DumpContext.run`).

        Raise :class:`DumpError` (or let :func:`run_tool` raise it) when the
        snapshot cannot be taken: the cell's backup then fails and alerts.
        """
        raise NotImplementedError

    def load(self, ctx: LoadContext) -> None:
        """Load the staged dump in *ctx* back; raise :class:`LoadError` on failure.

        Called before the cell's files are swapped into place: a failure here
        leaves the files as they were. What it leaves in the database depends
        on the type (see ``docs/dumpers.md``).
        """
        raise NotImplementedError

    def probe(self) -> str | None:
        """Check, from this machine, that a backup and a restore could run; say what was found.

        Connect, check the permissions the dump needs and the tools'
        versions; raise :class:`DumpError` (with a hint that says the fix)
        when something is wrong. ``None`` (the default): this type has no
        probe. ``cellvault doctor`` calls it for every configured dumper.
        """
        return None

    def stage(self, ctx: LoadContext) -> StagedLoad | None:
        """Load the staged dump in *ctx* into a side object; return how to swap it in.

        The default, ``None``, says this dumper cannot stage: :meth:`load`
        then runs against the live store before the cell's files are swapped,
        and a restore requires a safety backup (see
        :mod:`cellvault.dumpers.staging`). Raise :class:`LoadError` on
        failure, leaving the live store untouched.
        """
        return None

    def resume(self, state: Mapping[str, Any]) -> StagedLoad | None:
        """The staged load *state* describes (its :meth:`StagedLoad.state`), rebuilt after a kill.

        A restore killed between staging and the end of its swap leaves a
        journal; the next run calls this to finish the swap or put the old
        state back (see :mod:`cellvault.dumpers.staging`). Build the object
        from *state* and this dumper's options only: no load context exists
        then. ``None`` (the default): the side object is left for a person,
        and the recovery names it.
        """
        return None

    def stock_restore(self, files: Sequence[str]) -> str | None:
        """How to load this dump by hand with stock tools, for ``dumper.json`` (optional)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@attrs.define
class DumpContext:
    """What a dumper gets at backup time: where to write, and how to run tools.

    Write each file of the dump with :meth:`open` (or :meth:`add_file` for a
    file of known size, or :meth:`run` to stream a tool's stdout). *spool* is
    a private scratch folder beside the archive being written, deleted when
    the dump ends.
    """

    cell: Cell
    archive: str
    dumper: Dumper
    spool: Path
    reason: str
    _dumps: ArchiveDumps
    files: dict[str, FileRecord] = attrs.field(factory=dict)
    #: Facts the dumper wants recorded in ``dumper.json`` (tool versions, database names).
    info: dict[str, Any] = attrs.field(factory=dict)

    @property
    def where(self) -> str:
        return f"cell {self.cell.name}, dumper {self.dumper.name}"

    def _check_name(self, filename: str) -> None:
        if not is_dump_file_name(filename) or filename in self.files:
            raise DumpError(
                f"{self.where}: cannot write a dump file named {filename!r}",
                hint=f"use a plain, new file name (not {DESCRIPTOR} nor *.part-NNNNNN)",
            )

    @contextlib.contextmanager
    def open(self, filename: str) -> Iterator[IO[bytes]]:
        """A writer for the dump file *filename*; it is complete when the ``with`` ends."""
        self._check_name(filename)
        writer = DumpWriter(self._dumps, self._dumps.folder(self.dumper.name), filename)
        try:
            yield writer  # type: ignore[misc]
        except BaseException:
            # What was written as parts stays in the archive (the manifest must list
            # every member); dumper.json says the dump did not complete.
            self.files[filename] = FileRecord(writer.size, "", list(writer.parts))
            raise
        writer.finish()
        self.files[filename] = FileRecord(writer.size, writer.digest.hexdigest(), writer.parts)

    def add_file(self, filename: str, path: Path) -> None:
        """Add the local file *path* as dump file *filename*, streamed (its size is known)."""
        self._check_name(filename)
        size = os.stat(path).st_size
        with open(path, "rb") as raw:
            reader = SizedFileReader(raw, size)
            self._dumps.add_member(
                f"{self._dumps.folder(self.dumper.name)}/{filename}", size, reader
            )
        self._dumps.progress(size)
        self.files[filename] = FileRecord(size, reader.digest.hexdigest(), [filename])

    def run(
        self,
        argv: Sequence[str],
        *,
        stdout_to: str,
        env: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        hint: str | None = None,
        cwd: Path | None = None,
    ) -> ToolResult:
        """Run *argv* and stream its stdout into the dump file *stdout_to*."""
        with self.open(stdout_to) as out:
            return run_tool(
                argv,
                what=f"{self.where}: {Path(argv[0]).name}",
                env=env,
                stdout=out,
                timeout=self.dumper.timeout,
                secrets=secrets,
                hint=hint,
                cwd=cwd,
            )


@attrs.define
class LoadContext:
    """What a dumper gets at restore time: its staged dump, and how to run tools.

    *dir* is the dumper's staged folder (``dumps/<name>/`` of the archive,
    every file checked against the manifest). *spool* is a private scratch
    folder, deleted after the restore. *descriptor* is its ``dumper.json``.
    *staged_roots* maps each of the cell's live paths to its staged copy,
    which is swapped into place after the load (see :meth:`staged`).
    """

    cell: Cell
    archive: str
    meta: ArchiveMeta
    dumper: Dumper
    dir: Path
    spool: Path
    descriptor: dict[str, Any]
    staged_roots: Mapping[Path, Path] = attrs.field(factory=dict)
    #: Told the bytes read through :meth:`open` (and ``run(stdin=<file name>)``):
    #: the restore's progress display.
    on_read: Callable[[int], None] | None = None
    #: Told of a side object as soon as it exists (see :meth:`side_created`).
    on_side: Callable[[StagedLoad], None] | None = None
    #: Why :meth:`Dumper.stage` did not stage (see :meth:`cannot_stage`).
    not_staged: str = ""

    def cannot_stage(self, reason: str) -> StagedLoad | None:
        """Say, from :meth:`Dumper.stage`, why this load cannot stage; ``return ctx.cannot_stage(...)``.

        The restore report quotes *reason* beside "loaded into the live
        database before the swap (this dumper cannot stage: ...)". Returns
        ``None``, what ``stage`` returns then.
        """
        self.not_staged = reason
        return None

    def side_created(self, side: StagedLoad) -> None:
        """Say, from :meth:`Dumper.stage`, that *side*'s object exists, before loading into it.

        The restore journals it at once, so that a restore killed during the
        load leaves it named, and the next run drops it (through
        :meth:`Dumper.resume` and :meth:`StagedLoad.discard`).
        """
        if self.on_side is not None:
            self.on_side(side)

    def staged(self, path: Path) -> Path | None:
        """Where *path* is staged, if it lies in one of the cell's paths (else ``None``).

        A file a dumper restores inside the cell (a SQLite database) is
        written there, so that the swap puts it in place with the rest.
        """
        for live, staged in self.staged_roots.items():
            if path == live or live in path.parents:
                return staged / path.relative_to(live)
        return None

    @property
    def where(self) -> str:
        return f"cell {self.cell.name}, dumper {self.dumper.name}"

    def files(self) -> list[str]:
        """The names of the dump's files, as :meth:`DumpContext.open` wrote them."""
        return list(self.descriptor.get("files", {}))

    def _parts(self, filename: str) -> list[Path]:
        record = self.descriptor.get("files", {}).get(filename)
        if record is None:
            raise LoadError(
                f"{self.where}: archive {self.archive} holds no dump file {filename!r}",
                hint=f"it holds: {', '.join(self.files()) or 'nothing'}",
            )
        return [self.dir / part for part in record.get("parts", [])]

    def path(self, filename: str) -> Path:
        """The staged file *filename* as one file on disk (parts are joined, once)."""
        parts = self._parts(filename)
        whole = self.dir / filename
        if len(parts) == 1 and parts[0] == whole:
            return whole
        if not whole.exists():
            tmp = self.dir / f".{filename}.joining"
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, BLOCK)
                    part.unlink()  # each part once copied: the disk never holds both in full
            os.replace(tmp, whole)
            self.descriptor["files"][filename]["parts"] = [filename]
        return whole

    def open(self, filename: str) -> IO[bytes]:
        """The staged file *filename* as a stream (parts are read in order)."""
        raw: Any = ConcatReader(self._parts(filename))
        if self.on_read is not None:
            raw = CountingReader(raw, self.on_read)
        return io.BufferedReader(raw, BLOCK)

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: StdinSource | str = None,
        env: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        stdout: IO[bytes] | Literal["capture", "discard"] = "capture",
        hint: str | None = None,
        check: bool = True,
        cwd: Path | None = None,
    ) -> ToolResult:
        """Run *argv* with *stdin* (a file name of this dump is opened for you)."""
        with contextlib.ExitStack() as stack:
            if isinstance(stdin, str):
                stdin = stack.enter_context(self.open(stdin))
            elif isinstance(stdin, Path) and self.on_read is not None:
                # Fed through a counting reader, so that the progress display sees the load move.
                raw = CountingReader(stack.enter_context(open(stdin, "rb")), self.on_read)
                stdin = io.BufferedReader(cast(Any, raw), BLOCK)
            return run_tool(
                argv,
                what=f"{self.where}: {Path(argv[0]).name}",
                error=LoadError,
                env=env,
                stdin=stdin,
                stdout=stdout,
                timeout=self.dumper.timeout,
                secrets=secrets,
                hint=hint,
                check=check,
                cwd=cwd,
            )
