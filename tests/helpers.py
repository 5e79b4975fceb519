"""Small helpers shared by the vault, restore, CLI, plugin and lock tests."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

from cellvault import Cell, Config, ObjectInfo, Target, TargetSpec, Vault, hookimpl

#: A fixed past instant: file mtimes are set well before any backup's scan
#: start, so that incrementals never treat them as "racy".
OLD_MTIME = 1_700_000_000


def write_tree(
    root: Path, files: dict[str, bytes | str], *, mtime: float | None = OLD_MTIME
) -> Path:
    """Write *files* (relative path -> content) under *root*; old mtimes by default."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
    return root


def age(path: Path, mtime: float = OLD_MTIME) -> None:
    """Set the mtime of *path* to a fixed past instant."""
    os.utime(path, (mtime, mtime), follow_symlinks=False)


def snapshot(root: Path) -> dict[str, tuple[str, Any, int]]:
    """Every path below *root*: kind, content (bytes or link target) and mode."""
    out: dict[str, tuple[str, Any, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", str(path.readlink()), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", None, mode)
            else:
                out[rel] = ("file", path.read_bytes(), mode)
    return out


def clock(
    start: dt.datetime | None = None, step: dt.timedelta = dt.timedelta(minutes=1)
) -> Callable[[], dt.datetime]:
    """A fake UTC clock: each call returns the next instant, *step* apart, forever."""
    start = start or dt.datetime(2025, 1, 1, 2, 0, tzinfo=dt.UTC)
    times: Iterator[dt.datetime] = (start + n * step for n in itertools.count())
    return lambda: next(times)


def times_clock(
    times: Iterable[dt.datetime], then: dt.timedelta = dt.timedelta(minutes=1)
) -> Callable[[], dt.datetime]:
    """A fake clock that returns *times* in order, then keeps going *then* apart."""
    listed = list(times)
    tail = (listed[-1] + n * then for n in itertools.count(1))
    it = itertools.chain(listed, tail)
    return lambda: next(it)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)  # type: ignore[misc]


def make_vault(
    backup_dir: Path,
    cells: dict[str, list[Path]] | list[Cell],
    *,
    targets: Iterable[TargetSpec] = (),
    **kwargs: Any,
) -> Vault:
    """A vault on *backup_dir* with *cells* and no entry points.

    Keyword arguments go to :class:`Config` when they are config fields, to
    :class:`Vault` otherwise.
    """
    if isinstance(cells, dict):
        cells = [Cell(name, paths) for name, paths in cells.items()]
    vault_keys = {"plugins", "on_event", "clock", "load_entry_points"}
    vault_kwargs = {k: v for k, v in kwargs.items() if k in vault_keys}
    config_kwargs = {k: v for k, v in kwargs.items() if k not in vault_keys}
    vault_kwargs.setdefault("load_entry_points", False)
    config = Config(backup_dir=backup_dir, cells=cells, targets=list(targets), **config_kwargs)
    return Vault(config, **vault_kwargs)


SAMPLE: dict[str, bytes | str] = {
    "config.yaml": "service: crm\nreplicas: 2\n",
    "uploads/2025/contract-0001.txt": "Contract 0001\n" * 50,
    "uploads/2025/logo.bin": bytes(range(256)) * 64,
    "db/ledger.db": b"\x00LEDGER" * 512,
}


# -- an in-memory target, as a third-party plugin would write one -----------------------


class MemTarget(Target):
    """Keys and bytes in a dict shared by every target of the same ``mem://`` URL."""

    STORES: ClassVar[dict[str, dict[str, bytes]]] = {}
    _lock = threading.Lock()

    def __init__(self, spec: TargetSpec) -> None:
        super().__init__(spec)
        with self._lock:
            self.data = self.STORES.setdefault(spec.url, {})

    def put_file(self, local: Path, key: str) -> None:
        self.put_bytes(key, local.read_bytes())

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._lock:
            self.data[key] = bytes(data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        with self._lock:
            if key in self.data:
                return False
            self.data[key] = bytes(data)
            return True

    def open_read(self, key: str) -> IO[bytes]:
        with self._lock:
            if key not in self.data:
                raise FileNotFoundError(key)
            return io.BytesIO(self.data[key])

    def list(self, folder: str) -> list[ObjectInfo]:
        prefix = f"{folder}/" if folder else ""
        files: dict[str, int] = {}
        dirs: set[str] = set()
        with self._lock:
            for key, value in self.data.items():
                if not key.startswith(prefix):
                    continue
                head, sep, _ = key[len(prefix) :].partition("/")
                if sep:
                    dirs.add(head)
                else:
                    files[head] = len(value)
        return [ObjectInfo(d, 0, True) for d in sorted(dirs)] + [
            ObjectInfo(f, n) for f, n in sorted(files.items())
        ]

    def delete(self, key: str) -> None:
        with self._lock:
            self.data.pop(key, None)


class MemPlugin:
    """Adds the ``mem://`` target type."""

    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> Target | None:
        return MemTarget(spec) if spec.scheme == "mem" else None


def logged(caplog: Any, name: str) -> list[dict[str, Any]]:
    """The fields of each structured log event *name* that *caplog* captured."""
    return [
        {k: v for k, v in r.msg.items() if k not in ("event", "logger", "level", "timestamp")}
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == name
    ]


def killed_not_reaped(pid: int) -> None:
    """Wait (up to 5 s) until process *pid*, killed, is a zombie: ended, not yet reaped.

    As a process killed in a container whose first process does not reap
    orphans stays: ``kill(pid, 0)`` still answers for it.
    """
    deadline = time.monotonic() + 5
    state = ""
    while state != "Z" and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    assert state == "Z"


def children() -> set[int]:
    """The processes this one has forked and not reaped (zombies too)."""
    found = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:
            found |= {int(pid) for pid in f.read().split()}
    return found
