"""The dumper plugin interface, and how a dump travels inside an archive.

A :class:`Dumper` takes a consistent snapshot of something that is not a
plain file tree (a PostgreSQL or MariaDB database, a SQLite file that is being
written, a Redis keyspace, any command's output) while a cell is backed up,
and loads it back when the cell is restored. Dumper types are plugins: the
``cellvault_make_dumper`` hook turns a :class:`DumperSpec` (what a cell's
configuration says) into a dumper, and the built-in types register through
that same hook.

In the archive, the output of the dumper called ``<name>`` is a tree of its
own, after the cell's files and before ``manifest.json``::

    dumps/<name>/                  directory
    dumps/<name>/<file>            one member per file the dumper wrote ...
    dumps/<name>/<file>.part-000001  ... or, for a file larger than one chunk,
    dumps/<name>/<file>.part-000002  consecutive parts to concatenate
    dumps/<name>/dumper.json       what was dumped, how, and whether it completed

A tar member needs its size before its data. A tool's output has no size
until the tool ends, so it is cut into chunks of :data:`DUMP_CHUNK` bytes
held in memory: output that fits in one chunk becomes one member; a larger
one becomes parts, each written as soon as the next byte shows that more is
coming. Nothing is copied to disk on the way, memory stays bounded, and
``cat <file>.part-*`` rebuilds the file with stock tools. Every member is in
the manifest with its sha256, so verify covers dumps like any file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import attrs

from ..errors import BackupError, CellvaultError, ConfigError, DumpError, LoadError, RestoreError
from ..log import get_logger, redact, redact_text
from ..manifest import Entry, Manifest

if TYPE_CHECKING:
    from ..archive import ArchiveMeta
    from ..cell import Cell

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
    "to_bool",
    "to_float",
    "to_list",
]

log = get_logger(__name__)

#: Top-level folder of dumper output in an archive.
DUMPS_ROOT = "dumps"
#: The descriptor each dumper's folder ends with.
DESCRIPTOR = "dumper.json"
#: Bytes of tool output held in memory before a part is written (see the module docs).
DUMP_CHUNK = 32 << 20
BLOCK = 1 << 20
#: Default seconds a dump, or a load, may take before its tool is stopped.
DEFAULT_TIMEOUT = 3600.0

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PART = re.compile(r"(?P<file>.+)\.part-(?P<n>\d{6})")
# How much of a failing tool's stderr an error message quotes.
_STDERR_TAIL = 1500


# -- values from TOML and the environment ---------------------------------------------


def to_bool(value: Any) -> bool:
    """``true``/``1``/``yes``/``on`` (any case) or a bool; :class:`ValueError` otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a yes/no value")


def to_float(value: Any) -> float:
    """A number of seconds, from a number or a string."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def to_optional_float(value: Any) -> float | None:
    """Like :func:`to_float`; ``None``, ``""`` and ``0`` mean no limit."""
    if value is None or value == "":
        return None
    number = to_float(value)
    return number if number > 0 else None


def to_list(value: Any) -> tuple[str, ...]:
    """A list of strings; a string is split on commas and white space (as env values are)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in re.split(r"[,\s]+", value) if v)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{value!r} is not a list of strings")


def to_args(value: Any) -> tuple[str, ...]:
    """Extra command-line arguments: a list, or a string split on white space."""
    if isinstance(value, str):
        return tuple(value.split())
    return to_list(value)


def to_env(value: Any) -> dict[str, str]:
    """Extra environment variables: a table of strings."""
    if value is None:
        return {}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: str(v) for k, v in value.items()}
    raise ValueError(f"{value!r} is not a table of environment variables")


# -- specs ------------------------------------------------------------------------------


def validate_dumper_name(name: str) -> str:
    """Return *name* if it can name a dumper (it becomes ``dumps/<name>/``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 64:
        raise ConfigError(
            f"invalid dumper name {name!r}",
            hint="a dumper name is 1-64 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit",
        )
    return name


@attrs.frozen
class DumperSpec:
    """A dumper as a cell's configuration states it: a type, a name, options.

    ``type`` selects the plugin (``postgres``, ``mysql``, ``sqlite``,
    ``redis``, ``command``, or a third party's); ``name`` (default: the type)
    names the dump inside the archive and must be unique within the cell.
    """

    type: str
    name: str = attrs.field(validator=lambda _, __, v: validate_dumper_name(v))
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "dumper") -> DumperSpec:
        """Read ``{"type": ..., "name": ..., **options}`` (a TOML table)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a dumper is a table with a type, not {data!r}")
        kind = data.get("type")
        if not isinstance(kind, str) or not kind:
            raise ConfigError(
                f"{where}: a dumper needs a type",
                hint='for example type = "postgres" (or mysql, sqlite, redis, command)',
            )
        name = data.get("name", kind)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: dumper name must be a string, not {name!r}")
        options = {k: v for k, v in data.items() if k not in ("type", "name")}
        return cls(kind, name, options)

    def display(self) -> str:
        return f"{self.name} (type {self.type})"


def to_dumpers(value: Any) -> tuple[Any, ...]:
    """Normalize a cell's ``dumpers``: mappings become :class:`DumperSpec`; dumpers stay."""
    if isinstance(value, Mapping | Dumper | DumperSpec):
        value = [value]
    out: list[Any] = []
    for item in value:
        if isinstance(item, Dumper | DumperSpec):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(DumperSpec.from_mapping(item))
        else:
            raise ConfigError(
                f"a dumper is a Dumper, a DumperSpec or a table with a type, not {item!r}"
            )
    return tuple(out)


def check_cell_dumpers(cell: Any, attribute: Any, value: tuple[Any, ...]) -> None:
    """attrs validator for :attr:`Cell.dumpers`: names are unique within the cell."""
    seen: set[str] = set()
    for item in value:
        if item.name in seen:
            raise ConfigError(
                f"cell {cell.name}: two dumpers are named {item.name!r}",
                hint="give each dumper of a cell its own name",
            )
        seen.add(item.name)


# -- the dumper base class --------------------------------------------------------------


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
            return cls(name=name, **options)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {redact_text(str(exc))}") from None

    def with_options(self, options: Mapping[str, Any]) -> Dumper:
        """A copy with *options* changed (restore-time choices such as ``tables``)."""
        if not options:
            return self
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

    def stock_restore(self, files: Sequence[str]) -> str | None:
        """How to load this dump by hand with stock tools, for ``dumper.json`` (optional)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# -- running tools -----------------------------------------------------------------------


@attrs.frozen
class ToolResult:
    """A finished tool: its exit code and what it printed (stdout only when captured)."""

    returncode: int
    stdout: bytes
    stderr: str


StdinSource = bytes | IO[bytes] | Iterable[bytes] | Path | None


def _mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return redact_text(text)


def _tail(raw: bytes, secrets: Iterable[str]) -> str:
    text = raw[-8 * _STDERR_TAIL :].decode("utf-8", "replace")
    text = _mask(text, secrets).strip()
    return text[-_STDERR_TAIL:]


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    error: type[BackupError] | type[RestoreError] = DumpError,
    env: Mapping[str, str] | None = None,
    stdin: StdinSource = None,
    stdout: IO[bytes] | Literal["capture", "discard"] = "capture",
    timeout: float | None = DEFAULT_TIMEOUT,
    secrets: Iterable[str] = (),
    cwd: Path | None = None,
    check: bool = True,
    hint: str | None = None,
) -> ToolResult:
    """Run *argv* (never through a shell), streaming its stdin and stdout.

    *stdin* is fed from bytes, a file, a reader or an iterable of blocks, by
    a thread; *stdout* goes to a writer as it comes, or is captured (and
    returned), or discarded. stderr is kept in a temporary file and its tail,
    with *secrets* and anything credential-like masked, goes into the error.
    After *timeout* seconds the tool and everything it started (its process
    group) are killed. A non-zero exit raises *error* (unless not *check*);
    *what* names the tool for messages ("cell crm, dumper pg: pg_dump").
    """
    secrets = [s for s in secrets if s]
    env_full = dict(os.environ if env is None else env)
    with contextlib.ExitStack() as stack:
        err_file = stack.enter_context(tempfile.TemporaryFile())
        out_file: IO[bytes] | None = None
        if stdout == "capture":
            out_file = stack.enter_context(tempfile.TemporaryFile())
            out_arg: Any = out_file
        elif stdout == "discard":
            out_arg = subprocess.DEVNULL
        else:
            out_arg = subprocess.PIPE
        in_file: IO[bytes] | None = None
        if isinstance(stdin, Path):
            in_file = stack.enter_context(open(stdin, "rb"))
            in_arg: Any = in_file
        elif stdin is None:
            in_arg = subprocess.DEVNULL
        else:
            in_arg = subprocess.PIPE
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=in_arg,
                stdout=out_arg,
                stderr=err_file,
                env=env_full,
                cwd=cwd,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
        except FileNotFoundError:
            raise error(
                f"{what}: the program {argv[0]!r} is not installed or not on PATH",
                hint=hint or "install it on this host (see docs/dumpers.md)",
            ) from None
        except OSError as exc:
            raise error(f"{what}: cannot start {argv[0]!r}: {exc.strerror}") from None
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            _kill_group(proc)

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        feeder: threading.Thread | None = None
        feed_error: list[BaseException] = []
        if in_arg is subprocess.PIPE:
            assert proc.stdin is not None
            feeder = threading.Thread(
                target=_feed, args=(proc, stdin, feed_error), name="tool-stdin", daemon=True
            )
            feeder.start()
        try:
            if out_arg is subprocess.PIPE:
                assert proc.stdout is not None and not isinstance(stdout, str)
                for block in iter(lambda: proc.stdout.read(BLOCK), b""):  # type: ignore[union-attr]
                    stdout.write(block)
                proc.stdout.close()
            proc.wait()
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if feeder is not None:
                feeder.join()
        err_file.seek(0)
        stderr_raw = err_file.read()
        captured = b""
        if out_file is not None:
            out_file.seek(0)
            captured = out_file.read()
    stderr = _tail(stderr_raw, secrets)
    if feed_error:
        failure = feed_error[0]
        if isinstance(failure, BackupError | RestoreError):
            raise failure
        raise error(f"{what}: feeding its input failed: {_mask(str(failure), secrets)}") from None
    if timed_out.is_set():
        raise error(
            f"{what}: timed out after {timeout:g} s and was stopped"
            + (f"; it said: {stderr}" if stderr else ""),
            hint=hint or "raise the dumper's timeout, or find out why it is slow",
        )
    if check and proc.returncode != 0:
        code = (
            f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        )
        raise error(
            f"{what}: failed with {code}" + (f": {stderr}" if stderr else " and said nothing"),
            hint=hint,
        )
    return ToolResult(proc.returncode, captured, stderr)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _feed(proc: subprocess.Popen[bytes], source: StdinSource, errors: list[BaseException]) -> None:
    assert proc.stdin is not None
    sink = proc.stdin
    try:
        if isinstance(source, bytes | bytearray):
            sink.write(source)
        elif hasattr(source, "read"):
            reader: IO[bytes] = source  # type: ignore[assignment]
            for block in iter(lambda: reader.read(BLOCK), b""):
                sink.write(block)
        else:
            assert source is not None and not isinstance(source, Path)
            for block in source:
                sink.write(block)
    except BrokenPipeError:
        pass  # the tool exited early; its exit code tells why
    except BaseException as exc:  # noqa: BLE001 - handed to run_tool, which raises it
        errors.append(exc)
        _kill_group(proc)
    finally:
        with contextlib.suppress(OSError):
            sink.close()


# -- writing dumps into an archive ------------------------------------------------------


class _BufferReader:
    """Read a bytearray through memoryview slices (no copy of the whole chunk)."""

    def __init__(self, data: bytearray) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n < 0 else min(len(self.view), self.pos + n)
        out = self.view[self.pos : end].tobytes()
        self.pos = end
        return out


class _DumpWriter(io.RawIOBase):
    """One file of a dump: buffered into chunks, each written as a tar member (see module docs)."""

    def __init__(self, archive_dumps: _ArchiveDumps, folder: str, filename: str) -> None:
        super().__init__()
        self.owner = archive_dumps
        self.folder = folder
        self.filename = filename
        self.buf = bytearray()
        self.parts: list[str] = []
        self.digest = hashlib.sha256()
        self.size = 0
        self.finished = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        self.digest.update(view)
        self.size += n
        chunk = self.owner.chunk
        while view:
            room = chunk - len(self.buf)
            if room == 0:
                # The chunk is full and more is coming: it becomes a part.
                self._emit(f"{self.filename}.part-{len(self.parts) + 1:06d}")
                continue
            self.buf += view[:room]
            view = view[room:]
        self.owner.progress(n)
        return n

    def _emit(self, member: str) -> None:
        self.owner.add_member(f"{self.folder}/{member}", len(self.buf), _BufferReader(self.buf))
        self.parts.append(member)
        self.buf = bytearray()

    def finish(self) -> None:
        """Write what is buffered: the whole file, or its last part."""
        if self.finished:
            return
        self.finished = True
        if self.parts:
            self._emit(f"{self.filename}.part-{len(self.parts) + 1:06d}")
        else:
            self._emit(self.filename)


@attrs.define
class _FileRecord:
    size: int
    sha256: str
    parts: list[str]


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
    _dumps: _ArchiveDumps
    files: dict[str, _FileRecord] = attrs.field(factory=dict)
    #: Facts the dumper wants recorded in ``dumper.json`` (tool versions, database names).
    info: dict[str, Any] = attrs.field(factory=dict)

    @property
    def where(self) -> str:
        return f"cell {self.cell.name}, dumper {self.dumper.name}"

    def _check_name(self, filename: str) -> None:
        if (
            not _FILE.fullmatch(filename)
            or filename == DESCRIPTOR
            or _PART.fullmatch(filename)
            or filename in self.files
        ):
            raise DumpError(
                f"{self.where}: cannot write a dump file named {filename!r}",
                hint=f"use a plain, new file name (not {DESCRIPTOR} nor *.part-NNNNNN)",
            )

    @contextlib.contextmanager
    def open(self, filename: str) -> Iterator[IO[bytes]]:
        """A writer for the dump file *filename*; it is complete when the ``with`` ends."""
        self._check_name(filename)
        writer = _DumpWriter(self._dumps, self._dumps.folder(self.dumper.name), filename)
        try:
            yield writer  # type: ignore[misc]
        except BaseException:
            # What was written as parts stays in the archive (the manifest must list
            # every member); dumper.json says the dump did not complete.
            self.files[filename] = _FileRecord(writer.size, "", list(writer.parts))
            raise
        writer.finish()
        self.files[filename] = _FileRecord(writer.size, writer.digest.hexdigest(), writer.parts)

    def add_file(self, filename: str, path: Path) -> None:
        """Add the local file *path* as dump file *filename*, streamed (its size is known)."""
        self._check_name(filename)
        size = os.stat(path).st_size
        with open(path, "rb") as raw:
            reader = _HashingFileReader(raw, size)
            self._dumps.add_member(
                f"{self._dumps.folder(self.dumper.name)}/{filename}", size, reader
            )
        self._dumps.progress(size)
        self.files[filename] = _FileRecord(size, reader.digest.hexdigest(), [filename])

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


class _HashingFileReader:
    """Read exactly *size* bytes of a file that must not change while it is read."""

    def __init__(self, raw: IO[bytes], size: int) -> None:
        self.raw = raw
        self.remaining = size
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.remaining:
            n = self.remaining
        data = self.raw.read(n)
        if len(data) != n:
            raise DumpError("a dump file changed size while it was added to the archive")
        self.remaining -= n
        self.digest.update(data)
        return data


class TarSink(Protocol):
    """What the dumpers write into: the part of :class:`tarfile.TarFile` they use.

    The packer passes its own tar writer (:class:`cellvault.pack._TarWriter`).
    """

    members: list[tarfile.TarInfo]

    def addfile(self, tarinfo: tarfile.TarInfo, fileobj: Any = None) -> None: ...


@attrs.define
class _ArchiveDumps:
    """Writes the ``dumps/`` tree of one archive into its tar stream, and into its manifest."""

    tar: TarSink
    manifest: Manifest
    archive: str
    chunk: int = DUMP_CHUNK
    on_progress: Callable[[int], None] | None = None
    #: Set when writing into the tar stream failed: the archive cannot be finished.
    broken: bool = False
    _dirs: set[str] = attrs.field(factory=set)
    _when: int = attrs.field(factory=lambda: int(time.time()))

    def progress(self, n: int) -> None:
        if self.on_progress is not None:
            self.on_progress(n)

    def folder(self, name: str) -> str:
        # No member for dumps/ itself: as for data/, every member lies below it.
        path = f"{DUMPS_ROOT}/{name}"
        if path not in self._dirs:
            self._add_dir(path)
        return path

    def _add_dir(self, path: str) -> None:
        info = tarfile.TarInfo(path)
        info.type = tarfile.DIRTYPE
        info.mode = 0o700
        self._own(info)
        self.tar.addfile(info)
        self.tar.members.clear()
        self._dirs.add(path)
        self.manifest.add(
            Entry(
                path=path,
                type="dir",
                mode=0o700,
                mtime_ns=self._when * 10**9,
                uid=info.uid,
                gid=info.gid,
            )
        )

    def _own(self, info: tarfile.TarInfo) -> None:
        info.uid, info.gid = os.geteuid(), os.getegid()
        info.uname = info.gname = ""
        info.mtime = self._when

    def add_member(self, path: str, size: int, reader: Any) -> None:
        info = tarfile.TarInfo(path)
        info.size = size
        info.mode = 0o600
        self._own(info)
        hashing = _Hashing(reader)
        try:
            self.tar.addfile(info, hashing)
        except BaseException:
            self.broken = True
            raise
        self.tar.members.clear()
        self.manifest.add(
            Entry(
                path=path,
                type="file",
                mode=0o600,
                mtime_ns=self._when * 10**9,
                size=size,
                sha256=hashing.digest.hexdigest(),
                uid=info.uid,
                gid=info.gid,
                archive=self.archive,
            )
        )

    def add_descriptor(self, name: str, body: dict[str, Any]) -> None:
        data = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
        self.add_member(f"{self.folder(name)}/{DESCRIPTOR}", len(data), io.BytesIO(data))


class _Hashing:
    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self.digest.update(data)
        return data


def _iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat().replace("+00:00", "Z")


@attrs.frozen
class DumpSummary:
    """What one dumper did during a backup."""

    name: str
    type: str
    ok: bool
    bytes: int
    duration: float
    error: str | None = None


def write_dumps(
    tar: TarSink,
    manifest: Manifest,
    dumpers: Sequence[Dumper],
    *,
    cell: Cell,
    archive: str,
    spool: Path,
    reason: str,
    chunk: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[DumpSummary]:
    """Run each dumper of *cell* into *tar* and *manifest*, in order (called by the packer).

    A failing dumper raises :class:`DumpError`, which fails the backup;
    except in a safety backup before a restore (``reason == "pre-restore"``),
    where the failure becomes a warning: the database may be what the
    restore is about to repair.
    """
    out = _ArchiveDumps(tar, manifest, archive, chunk or DUMP_CHUNK, on_progress)
    summaries: list[DumpSummary] = []
    for dumper in dumpers:
        # The cells of a run share its spool folder: the scratch folder names both.
        scratch = spool / f".dump-{cell.name}-{dumper.name}"
        started = time.time()
        ctx = DumpContext(cell, archive, dumper, scratch, reason, out)
        dlog = log.bind(cell=cell.name, archive=archive, dumper=dumper.name, type=dumper.type)
        error: str | None = None
        try:
            scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
            dumper.dump(ctx)
        except Exception as exc:
            if isinstance(exc, CellvaultError):
                # A known failure (a DumpError, a ConfigError such as an unset
                # password_env): its message says it all.
                error = str(exc) if ctx.where in str(exc) else f"{ctx.where}: {exc}"
            else:
                dlog.exception("dump.crashed")
                error = f"{ctx.where}: {type(exc).__name__}: {redact_text(str(exc))}"
            # A failed dump fails the backup; in a safety backup, only a failed
            # write does (the tar stream is then unusable).
            if reason != "pre-restore" or out.broken:
                if isinstance(exc, DumpError):
                    raise
                raise DumpError(error) from None
            dlog.warning("dump.failed", error=error)
            if warn is not None:
                warn(f"dumper {dumper.name} failed, so the safety backup lacks its dump: {error}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        finished = time.time()
        body = {
            "format": 1,
            "name": dumper.name,
            "type": dumper.type,
            "ok": error is None,
            "error": error,
            "started_at": _iso(started),
            "finished_at": _iso(finished),
            "options": dumper.describe(),
            "info": redact(ctx.info),
            "files": {
                name: {"size": rec.size, "sha256": rec.sha256 or None, "parts": rec.parts}
                for name, rec in ctx.files.items()
            },
            "restore": dumper.stock_restore(list(ctx.files)),
        }
        out.add_descriptor(dumper.name, body)
        size = sum(rec.size for rec in ctx.files.values())
        dlog.info(
            "dump.written", bytes=size, ok=error is None, duration=round(finished - started, 3)
        )
        summaries.append(
            DumpSummary(dumper.name, dumper.type, error is None, size, finished - started, error)
        )
    return summaries


# -- loading dumps back -----------------------------------------------------------------


class _Concat(io.RawIOBase):
    """Read several files as one stream."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self.paths = list(paths)
        self.current: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while True:
            if self.current is None:
                if not self.paths:
                    return 0
                self.current = open(self.paths.pop(0), "rb")  # noqa: SIM115 - closed below
            n = self.current.readinto(b)
            if n:
                return n
            self.current.close()
            self.current = None

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
        super().close()


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
        return io.BufferedReader(_Concat(self._parts(filename)), BLOCK)

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
        if isinstance(stdin, str):
            stdin = self.open(stdin)
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


def read_descriptor(folder: Path, *, where: str, archive: str) -> dict[str, Any]:
    """The ``dumper.json`` of a staged dump, checked to describe a complete dump."""
    try:
        body = json.loads((folder / DESCRIPTOR).read_text())
    except FileNotFoundError:
        raise LoadError(
            f"{where}: archive {archive} holds no {DESCRIPTOR} for this dump",
            hint="the archive was made before this dumper was configured; restore without it",
        ) from None
    except ValueError as exc:
        raise LoadError(f"{where}: {DESCRIPTOR} is not JSON ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("files"), dict):
        raise LoadError(f"{where}: {DESCRIPTOR} is unusable")
    if not body.get("ok", False):
        raise LoadError(
            f"{where}: archive {archive} holds an incomplete dump ({body.get('error')})",
            hint="choose an older archive, or restore with this dump skipped",
        )
    return body


def staged_dumpers(dumps: Path) -> list[str]:
    """The dumper names staged under *dumps* (``dumps/<name>/`` folders), sorted."""
    if not dumps.is_dir():
        return []
    return sorted(p.name for p in dumps.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))


def dumps_folder(path: PurePosixPath) -> bool:
    """Tell whether an archive member path lies in the ``dumps/`` tree."""
    return bool(path.parts) and path.parts[0] == DUMPS_ROOT


def load_staged_dumps(
    *,
    cell: Cell,
    meta: ArchiveMeta,
    dumpers: Sequence[Dumper],
    dumps: Path,
    spool: Path,
    only: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    staged_roots: Mapping[Path, Path] | None = None,
) -> list[str]:
    """Load the dumps staged in *dumps* with the cell's configured *dumpers*; return their names.

    By default (*only* ``None``) every dumper with ``autoload`` whose dump
    the archive holds is loaded, in the cell's order; a dump the archive
    lacks (made before the dumper was configured) is skipped with a warning.
    *only* names the dumpers to load, whatever their ``autoload``, and each
    must be in the archive. *options* (dumper name -> options) changes
    options for this restore only, such as ``tables`` or ``restore_dsn``.
    Raises :class:`LoadError` at the first failure.
    """
    archive = str(meta.id)
    staged = set(staged_dumpers(dumps))
    by_name = {d.name: d for d in dumpers}
    options = dict(options or {})
    for name in [*(only or ()), *options]:
        if name not in by_name:
            raise LoadError(
                f"cell {cell.name}: no dumper named {name!r} is configured",
                hint=f"configured dumpers: {', '.join(by_name) or 'none'}",
            )
    if only is None:
        chosen = [d for d in dumpers if d.autoload]
    else:
        chosen = [by_name[name] for name in dict.fromkeys(only)]
    llog = log.bind(cell=cell.name, archive=archive)
    loaded = []
    for dumper in chosen:
        if dumper.name not in staged:
            if only is not None:
                raise LoadError(
                    f"cell {cell.name}: archive {archive} holds no dump of dumper {dumper.name}",
                    hint=f"it holds: {', '.join(sorted(staged)) or 'no dumps'}",
                )
            llog.warning("dump.not_in_archive", dumper=dumper.name)
            continue
        folder = dumps / dumper.name
        where = f"cell {cell.name}, dumper {dumper.name}"
        descriptor = read_descriptor(folder, where=where, archive=archive)
        if descriptor.get("type") != dumper.type:
            raise LoadError(
                f"{where}: archive {archive} holds a {descriptor.get('type')} dump, "
                f"but the dumper is of type {dumper.type}",
                hint="rename the dumper, or restore with this dump skipped",
            )
        if dumper.name in options:
            dumper = dumper.with_options(options[dumper.name])
        scratch = spool / f".load-{dumper.name}"
        started = time.monotonic()
        llog.info("dump.loading", dumper=dumper.name, type=dumper.type)
        try:
            scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
            ctx = LoadContext(
                cell, archive, meta, dumper, folder, scratch, descriptor, staged_roots or {}
            )
            try:
                dumper.load(ctx)
            except LoadError:
                raise
            except CellvaultError as exc:
                raise LoadError(f"{where}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - re-raised as a LoadError naming the cause
                llog.exception("dump.load_crashed", dumper=dumper.name)
                raise LoadError(f"{where}: {type(exc).__name__}: {redact_text(str(exc))}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        llog.info("dump.loaded", dumper=dumper.name, duration=round(time.monotonic() - started, 3))
        loaded.append(dumper.name)
    return loaded
