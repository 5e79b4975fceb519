"""The ``redis`` dumper: an RDB snapshot, restored key by key through a scratch server.

::

    [[cells.crm.dumpers]]
    type = "redis"
    url = "redis://127.0.0.1:6379"
    password_env = "CRM_REDIS_PASSWORD"     # passed as REDISCLI_AUTH, never on a command line
    db = [9]                                # the databases a restore brings back

**Backup.** ``redis-cli --rdb`` asks the server for a replication snapshot:
the server forks and writes its whole keyspace as of one instant (every
database). It works with persistence switched off (``--save ""``).
redis-cli writes it to a file of the run's spool: it appends a 40-byte end
marker to standard output instead of removing it, so the file is the one
form of its output that is a clean RDB. With ``db`` set (or a database in the
url), the snapshot is cut down to those databases in a scratch
``redis-server`` (the others emptied, then ``SAVE``), so other tenants'
data never reaches the archive; without it, or without ``redis-server`` on
the backup host, the whole snapshot is stored and ``dumper.json`` says why.
The file is then streamed into the archive as ``dumps/<name>/dump.rdb``.

**Restore.** A running Redis cannot load an RDB file without a restart
(``DEBUG RELOAD`` replaces everything and needs the file on the server's own
disk). So cellvault starts a scratch ``redis-server`` from this machine's
Redis installation on the staged ``dump.rdb``, listening only on a Unix
socket in a private folder, and copies each key of the chosen databases to
the live server with ``DUMP``/``PTTL`` there and ``RESTORE ... REPLACE``
here (values, types and remaining expiry are kept). With ``flush`` (the
default) each target database is emptied first (``FLUSHDB``, that database
only), so it ends up exactly as in the snapshot. With ``swap_db = N``, the
keys are loaded into the empty database ``N`` of the live server first and
exchanged with the target by ``SWAPDB`` in one atomic step, so clients never
see a half-loaded database and a failed load leaves the target as it was.
The scratch server needs a Redis version that reads the snapshot's RDB
version (the same or newer than the server that made it).
"""

from __future__ import annotations

import contextlib
import os
import secrets as _secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from ..errors import ConfigError, DumpError, LoadError
from ..hookspecs import hookimpl
from ..log import get_logger, redact_text
from ..specs import DumperSpec
from ..tool import run_tool
from .base import DumpContext, Dumper, LoadContext
from .options import to_bool, to_list
from .staging import StagedLoad

__all__ = ["RedisDumper", "Resp"]

log = get_logger(__name__)

FILENAME = "dump.rdb"
#: Keys moved per round trip.
BATCH = 500


class _RespError(Exception):
    """A Redis error reply (``-ERR ...``); the dumper reports it as a LoadError."""


# Messages name the type of the error, as they did.
_RespError.__name__ = _RespError.__qualname__ = "RespError"


class Resp:
    """A minimal RESP2 client: enough to copy keys (no pub/sub, no cluster).

    Binary-safe both ways; replies are ``bytes``, ``int``, ``list`` or
    ``None``; an error reply in a pipeline is returned as an exception, not raised.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    @classmethod
    def tcp(cls, host: str, port: int, timeout: float) -> Resp:
        return cls(socket.create_connection((host, port), timeout=timeout))

    @classmethod
    def unix(cls, path: Path, timeout: float) -> Resp:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(path))
        return cls(sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()

    @staticmethod
    def _encode(args: Sequence[bytes | str | int]) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    def _read(self) -> Any:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the connection closed mid-reply")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body
        if kind == b"-":
            return _RespError(body.decode("utf-8", "replace"))
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(body)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ConnectionError(f"unexpected reply {line[:20]!r}")

    def pipeline(self, commands: Iterable[Sequence[bytes | str | int]]) -> list[Any]:
        """Send *commands* at once, return their replies (error replies as exceptions)."""
        batch = list(commands)
        self.sock.sendall(b"".join(self._encode(c) for c in batch))
        return [self._read() for _ in batch]

    def __call__(self, *args: bytes | str | int) -> Any:
        (reply,) = self.pipeline([args])
        if isinstance(reply, _RespError):
            raise reply
        return reply


def _dbs(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return tuple(int(v) for v in to_list(value))


@attrs.define(kw_only=True)
class RedisDumper(Dumper):
    """A Redis server's keyspace, snapshotted as RDB and restored key by key."""

    type: ClassVar[str] = "redis"

    #: ``redis://[user[:password]@]host[:port][/db]`` (the db is the default for *db*).
    url: str = attrs.field(default="", repr=False)
    host: str | None = None
    port: int | None = attrs.field(default=None, converter=attrs.converters.optional(int))
    #: ACL user name (Redis 6+).
    username: str | None = None
    #: Name of an environment variable holding the password.
    password_env: str | None = None
    #: The password itself (prefer password_env).
    password: str | None = attrs.field(default=None, repr=False)
    #: The databases a restore brings back (default: all the snapshot holds).
    db: tuple[int, ...] = attrs.field(default=(), converter=_dbs)
    #: Load the (one) restored database into this database number instead.
    restore_db: int | None = attrs.field(default=None, converter=attrs.converters.optional(int))
    #: Restore to another server: ``redis://host:port`` (default: *url*).
    restore_url: str | None = attrs.field(default=None, repr=False)
    #: Empty each target database before loading (so it is exactly the snapshot).
    flush: bool = attrs.field(default=True, converter=to_bool)
    #: An empty database of the live server to load into, then SWAPDB with the target.
    swap_db: int | None = attrs.field(default=None, converter=attrs.converters.optional(int))
    cli_program: str = "redis-cli"
    server_program: str = "redis-server"

    secret_fields: ClassVar[frozenset[str]] = frozenset({"password"})

    def __attrs_post_init__(self) -> None:
        where = f"dumper {self.name} (type redis)"
        for field in ("url", "restore_url"):
            value = getattr(self, field)
            if value and not value.startswith("redis://"):
                raise ConfigError(f"{where}: {field} must look like redis://host:port/db")
        if self.url:
            url = urllib.parse.urlsplit(self.url)
            try:
                port = url.port
            except ValueError:
                raise ConfigError(f"{where}: the url's port is not a number") from None
            self.host = self.host or url.hostname
            self.port = self.port or port
            if url.username:
                self.username = self.username or urllib.parse.unquote(url.username)
            if url.password is not None and self.password is None:
                self.password = urllib.parse.unquote(url.password)
            if not self.db and url.path.strip("/"):
                self.db = _dbs(url.path.strip("/"))
        if self.restore_db is not None and len(self.db) != 1:
            raise ConfigError(f"{where}: restore_db needs exactly one db to restore")
        if self.swap_db is not None and (
            self.swap_db in self.db or self.restore_db == self.swap_db
        ):
            raise ConfigError(f"{where}: swap_db must be a database that is not restored")

    def _address(self, restore: bool = False) -> tuple[str, int]:
        if restore and self.restore_url:
            url = urllib.parse.urlsplit(self.restore_url)
            return url.hostname or "127.0.0.1", url.port or 6379
        return self.host or "127.0.0.1", self.port or 6379

    def _secret(self) -> str | None:
        if self.password:
            return self.password
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"dumper {self.name} (type redis): environment variable "
                    f"{self.password_env} (password_env) is not set"
                )
            return value
        return None

    # -- backup ----------------------------------------------------------------------

    def dump(self, ctx: DumpContext) -> None:
        host, port = self._address()
        password = self._secret()
        env = dict(os.environ)
        env.pop("REDISCLI_AUTH", None)
        if password:
            env["REDISCLI_AUTH"] = password  # redis-cli's way to keep it off the command line
        argv = [self.cli_program, "-h", host, "-p", str(port)]
        if self.username:
            argv += ["--user", self.username]
        rdb = ctx.spool / FILENAME
        run_tool(
            [*argv, "--rdb", str(rdb)],
            what=f"{ctx.where}: redis-cli --rdb",
            env=env,
            stdout="discard",
            timeout=self.timeout,
            secrets=[password] if password else [],
            hint="check the url, the password (password_env) and that the server allows SYNC",
        )
        with open(rdb, "rb") as f:
            magic = f.read(9)
        if not magic.startswith(b"REDIS"):
            raise DumpError(f"{ctx.where}: redis-cli --rdb wrote no RDB file (it starts {magic!r})")
        ctx.info.update(host=host, port=port, rdb_version=magic[5:].decode("ascii", "replace"))
        ctx.add_file(FILENAME, self._scoped(ctx, rdb))

    def _scoped(self, ctx: DumpContext, rdb: Path) -> Path:
        """The snapshot with only the cell's databases (``db``), or the whole one, saying why.

        The server's snapshot holds every database (other tenants' too): it is
        loaded into a scratch ``redis-server``, the other databases are
        emptied there, and the scratch server saves the result.
        """
        if not self.db:
            ctx.info["databases"] = "all: set db = [N] to store only the cell's database"
            return rdb
        folder = ctx.spool / "scope"
        try:
            with _scratch_server(
                self.server_program, rdb, folder, self.timeout or 3600.0, ctx.where
            ) as scratch:
                for number in _keyspace(scratch("INFO", "keyspace")):
                    if number not in self.db:
                        scratch("SELECT", number)
                        scratch("FLUSHDB")
                scratch("SAVE")
        except (LoadError, _RespError, OSError) as exc:
            why = exc.message if isinstance(exc, LoadError) else redact_text(str(exc))
            log.warning("dump.redis_unscoped", dumper=self.name, error=why)
            ctx.info["databases"] = (
                f"all: the snapshot could not be cut down to db {list(self.db)} ({why}); "
                f"install {self.server_program} on the backup host"
            )
            return rdb
        ctx.info["databases"] = list(self.db)
        return folder / "redis" / FILENAME

    def stock_restore(self, files: Sequence[str]) -> str | None:
        return (
            f"stop redis; cp {FILENAME} <redis dir>/dump.rdb; start redis "
            "(replaces every database), or see docs/dumpers.md"
        )

    # -- restore ---------------------------------------------------------------------

    def probe(self) -> str:
        """PING the server; compare its version with this machine's redis-server (for loads)."""
        try:
            live = self._live(15.0)
        except LoadError as exc:
            raise DumpError(
                f"dumper {self.name}: {exc.message}", hint="check url, host, port and the password"
            ) from None
        try:
            info = live("INFO", "server").decode()
        except (_RespError, OSError) as exc:
            raise DumpError(f"dumper {self.name}: INFO failed: {redact_text(str(exc))}") from None
        finally:
            live.close()
        server = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in info.splitlines()
                if ln.startswith("redis_version:")
            ),
            "?",
        )
        local = run_tool(
            [self.server_program, "--version"], what=f"dumper {self.name}", timeout=30
        ).stdout.decode()
        mine = next((w.split("=", 1)[1] for w in local.split() if w.startswith("v=")), "?")
        if _version(mine) < _version(server):
            raise DumpError(
                f"dumper {self.name}: the live server is Redis {server}, but this machine's "
                f"{self.server_program} is {mine}: it may not read the server's snapshots",
                hint=f"install redis-server {server} or newer on the restore host",
            )
        return f"Redis {server} reachable; local {self.server_program} {mine}"

    def _live(self, timeout: float) -> Resp:
        host, port = self._address(restore=True)
        try:
            live = Resp.tcp(host, port, timeout)
        except OSError as exc:
            raise LoadError(f"cannot reach Redis at {host}:{port}: {exc.strerror or exc}") from None
        password = self._secret()
        try:
            if password:
                live(*(["AUTH", self.username] if self.username else ["AUTH"]), password)
        except _RespError as exc:
            live.close()
            raise LoadError(
                f"Redis at {host}:{port} refused the credentials: {redact_text(str(exc))}"
            ) from None
        return live

    def load(self, ctx: LoadContext) -> None:
        rdb = ctx.path(FILENAME)
        timeout = self.timeout or 3600.0
        with _scratch_server(self.server_program, rdb, ctx.spool, timeout, ctx.where) as scratch:
            keyspace = _keyspace(scratch("INFO", "keyspace"))
            sources = list(self.db) or sorted(keyspace)
            try:
                live = self._live(timeout)
            except LoadError as exc:
                raise LoadError(f"{ctx.where}: {exc.message}") from None
            try:
                for source in sources:
                    target = self.restore_db if self.restore_db is not None else source
                    copied = self._copy_db(ctx, scratch, live, source, target)
                    log.info(
                        "dump.redis_db_loaded",
                        cell=ctx.cell.name,
                        dumper=self.name,
                        db=source,
                        into=target,
                        keys=copied,
                    )
            except (_RespError, OSError) as exc:
                raise LoadError(
                    f"{ctx.where}: loading the keys failed: {redact_text(str(exc))}",
                    hint="the target databases may be partly loaded; swap_db avoids that",
                ) from None
            finally:
                live.close()

    def stage(self, ctx: LoadContext) -> StagedLoad | None:
        """With ``swap_db`` and one database in ``db``: load into ``swap_db``, SWAPDB at the swap.

        Otherwise the keys go into the live database(s): this dumper cannot stage.
        """
        if self.swap_db is None or len(self.db) != 1:
            return ctx.cannot_stage(
                "no swap_db is configured" if self.swap_db is None else "db names several databases"
            )
        (source,) = self.db
        target = self.restore_db if self.restore_db is not None else source
        timeout = self.timeout or 3600.0
        marker = f"__cellvault_swapped__:{_secrets.token_hex(8)}"
        with _scratch_server(
            self.server_program, ctx.path(FILENAME), ctx.spool, timeout, ctx.where
        ) as scratch:
            try:
                live = self._live(timeout)
            except LoadError as exc:
                raise LoadError(f"{ctx.where}: {exc.message}") from None
            try:
                self._copy_db(ctx, scratch, live, source, target, swap=False)
            except (_RespError, OSError) as exc:
                with contextlib.suppress(_RespError, OSError):
                    live("SELECT", self.swap_db)
                    live("FLUSHDB")
                raise LoadError(
                    f"{ctx.where}: loading the keys into database {self.swap_db} failed: "
                    f"{redact_text(str(exc))}",
                    hint=f"database {target} was not touched",
                ) from None
            finally:
                live.close()
        return self._side(target, marker, timeout)

    def _side(self, target: int, marker: str, timeout: float) -> _SwapDb:
        host, port = self._address(restore=True)
        return _SwapDb(
            self.name,
            f"Redis database {target} at {host}:{port}",
            f"database {self.swap_db}",
            owner=self,
            target=target,
            timeout=timeout,
            marker=marker,
        )

    def resume(self, state: Mapping[str, Any]) -> StagedLoad | None:
        """Keys a killed restore loaded into ``swap_db`` (or swapped in, the old ones there)."""
        target, spare, marker = state.get("target"), state.get("spare"), state.get("marker")
        if not isinstance(target, int) or spare != self.swap_db or not isinstance(marker, str):
            return None
        return _SwapDb(
            self.name,
            str(state.get("what")),
            str(state.get("side")),
            owner=self,
            target=target,
            timeout=self.timeout or 3600.0,
            marker=marker,
        )

    def swap_dbs(
        self, a: int, b: int, timeout: float, flush: int | None = None, marker: str = ""
    ) -> None:
        """``SWAPDB a b`` on the live server; then empty database *flush*, if given.

        With *marker*, the swap also sets that key in *b* (which holds the
        old keys then), in one ``MULTI``: how a recovery after a kill tells
        that the swap took effect. A swap back (*marker* starting with
        ``-``) deletes it from *b* first, in the same ``MULTI``.
        """
        live = self._live(timeout)
        try:
            if flush is not None:
                live("SELECT", flush)
                live("FLUSHDB")
            elif marker.startswith("-"):
                _exec(live, [("SELECT", b), ("DEL", marker[1:]), ("SWAPDB", a, b)])
            elif marker:
                _exec(live, [("SWAPDB", a, b), ("SELECT", b), ("SET", marker, "1")])
            else:
                live("SWAPDB", a, b)
        except _RespError as exc:
            raise LoadError(f"Redis: {redact_text(str(exc))}") from None
        finally:
            live.close()

    def has_key(self, db: int, key: str) -> bool:
        """Whether *key* exists in database *db* of the live server."""
        live = self._live(self.timeout or 3600.0)
        try:
            live("SELECT", db)
            return bool(live("EXISTS", key))
        except _RespError as exc:
            raise LoadError(f"Redis: {redact_text(str(exc))}") from None
        finally:
            live.close()

    def _copy_db(
        self,
        ctx: LoadContext,
        scratch: Resp,
        live: Resp,
        source: int,
        target: int,
        *,
        swap: bool = True,
    ) -> int:
        load_into = target if self.swap_db is None else self.swap_db
        live("SELECT", load_into)
        if self.swap_db is not None:
            if live("DBSIZE"):
                raise LoadError(
                    f"{ctx.where}: swap_db {self.swap_db} is not empty",
                    hint="choose a database nobody uses for swap_db",
                )
            if not swap:  # staged: journalled before a key is written there
                ctx.side_created(self._side(target, "", 0.0))
        elif self.flush:
            live("FLUSHDB")
        scratch("SELECT", source)
        copied = 0
        for keys in _scan(scratch):
            replies = scratch.pipeline([c for k in keys for c in (("DUMP", k), ("PTTL", k))])
            commands = []
            for key, payload, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
                if payload is None or isinstance(payload, _RespError):
                    continue  # expired in the scratch server meanwhile
                ttl = int(ttl) if isinstance(ttl, int) and ttl > 0 else 0
                commands.append(("RESTORE", key, ttl, payload, "REPLACE"))
            for reply in live.pipeline(commands):
                if isinstance(reply, _RespError):
                    raise reply
            copied += len(commands)
        if self.swap_db is not None and swap:
            live("SWAPDB", target, self.swap_db)
            live("SELECT", self.swap_db)
            live("FLUSHDB")
        return copied


def _exec(client: Resp, commands: Sequence[Sequence[bytes | str | int]]) -> None:
    """Run *commands* in one ``MULTI``/``EXEC``; raise the first error among the replies."""
    *queued, done = client.pipeline([("MULTI",), *commands, ("EXEC",)])
    if not isinstance(done, list):
        done = [done if isinstance(done, _RespError) else _RespError("EXEC discarded")]
    for reply in [*queued, *done]:
        if isinstance(reply, _RespError):
            raise reply


def _scan(client: Resp) -> Iterator[list[bytes]]:
    cursor = b"0"
    while True:
        cursor, keys = client("SCAN", cursor, "COUNT", BATCH)
        if keys:
            yield keys
        if cursor == b"0":
            return


def _keyspace(info: bytes) -> dict[int, int]:
    """``INFO keyspace`` as db number -> key count."""
    out = {}
    for line in info.decode().splitlines():
        if line.startswith("db") and ":" in line:
            name, _, fields = line.partition(":")
            keys = dict(f.split("=", 1) for f in fields.split(","))
            out[int(name[2:])] = int(keys.get("keys", 0))
    return out


@contextlib.contextmanager
def _scratch_server(
    program: str, rdb: Path, spool: Path, timeout: float, where: str
) -> Iterator[Resp]:
    """A redis-server on *rdb*, on a Unix socket in *spool*, stopped afterwards."""
    folder = spool / "redis"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = folder / FILENAME
    if rdb.stat().st_dev == folder.stat().st_dev:
        os.link(rdb, data)
    else:
        shutil.copyfile(rdb, data)
    # A Unix socket path has a 108-byte limit: the socket gets a short private folder.
    short = Path(tempfile.mkdtemp(prefix="cv-redis-"))
    sock = short / "redis.sock"
    log_file = folder / "redis.log"
    argv = [
        program,
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(folder),
        "--dbfilename", FILENAME,
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", str(log_file),
    ]  # fmt: skip
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise LoadError(
            f"{where}: the program {program!r} is not installed",
            hint="a Redis restore starts a scratch redis-server: install redis-server here",
        ) from None
    client: Resp | None = None
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise LoadError(
                    f"{where}: the scratch redis-server did not start: {_log_tail(log_file)}",
                    hint="its Redis may be older than the snapshot's RDB version",
                )
            try:
                client = Resp.unix(sock, timeout)
                reply = client.pipeline([("PING",)])[0]
                if reply == b"PONG":
                    break
                client.close()
                client = None  # LOADING: the snapshot is still being read
            except OSError:
                client = None
            if time.monotonic() > deadline:
                raise LoadError(
                    f"{where}: the scratch redis-server did not load the snapshot in time"
                )
            time.sleep(0.05)
        yield client
    finally:
        if client is not None:
            with contextlib.suppress(OSError, _RespError, ConnectionError):
                client.pipeline([("SHUTDOWN", "NOSAVE")])
            client.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(short, ignore_errors=True)


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(line.split(" # ", 1)[-1] for line in lines[-3:]) or "no log"


@hookimpl
def cellvault_make_dumper(spec: DumperSpec) -> Dumper | None:
    return RedisDumper.from_spec(spec) if spec.type == "redis" else None


@attrs.define
class _SwapDb(StagedLoad):
    """Keys loaded into ``swap_db``, exchanged with the target database by ``SWAPDB``."""

    owner: RedisDumper = attrs.field(kw_only=True)
    target: int = attrs.field(kw_only=True)
    timeout: float = attrs.field(kw_only=True)
    #: Set in the spare database (then holding the old keys) by the swap itself.
    marker: str = attrs.field(kw_only=True)

    @property
    def _spare(self) -> int:
        assert self.owner.swap_db is not None
        return self.owner.swap_db

    def swap(self) -> None:
        self.owner.swap_dbs(self.target, self._spare, self.timeout, marker=self.marker)

    def swapped(self) -> bool:
        return self.owner.has_key(self._spare, self.marker)

    def unswap(self) -> None:
        self.owner.swap_dbs(self.target, self._spare, self.timeout, marker="-" + self.marker)

    def discard(self) -> None:
        try:
            self.owner.swap_dbs(self.target, self._spare, self.timeout, flush=self._spare)
        except LoadError as exc:
            log.warning("dump.cleanup_failed", database=self._spare, error=str(exc))

    def commit(self) -> None:
        self.discard()  # the old keys (and the marker) are in swap_db now

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "target": self.target,
            "spare": self._spare,
            "marker": self.marker,
        }


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())
