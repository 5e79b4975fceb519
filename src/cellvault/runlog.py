"""Run logs: one JSON-lines file per run under ``<backup_dir>/logs/``, and their pruning.

Every backup, verify and restore run writes ``backup_<stamp>.log``,
``verify_<stamp>.log`` or ``restore_<stamp>.log`` (UTC stamp; ``_<run>`` is
added when two runs share a stamp), the seed's ``backup_*.log``. Each line is
one event of that run (``archive.stored``, ``verify.failed``, ...) with its
cell, target, stage and error, enough to see where a failure happened.

The events reach the file through a :class:`logging.Handler` with a
structlog ``ProcessorFormatter`` (``JSONRenderer``), but not through the
``cellvault`` logger's level and propagation: a processor of cellvault's
chain (:func:`cellvault.log.tee`) hands each event whose ``run`` key names an open run
log to that run's handler, at info level and above, whatever the host
application configured. So concurrent runs in one process never write into
each other's files, the run log is complete even when the host logs only
warnings, and the library still configures no logging of its host.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import os
import re
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import structlog

from .log import add_run_sink, get_logger, remove_run_sink, run_sink, summarize_exc_info
from .modes import private_dirs, private_opener

__all__ = ["LOG_KINDS", "RunLog", "active_log", "carry", "prune_logs"]

#: The operations that write run logs (the file name's first word).
LOG_KINDS: tuple[str, ...] = ("backup", "verify", "restore", "prune", "sync")
_NAME = re.compile(r"(?P<kind>[a-z]+)_(?P<stamp>\d{8}_\d{6})(_[0-9a-f]+)?\.log")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # One redacted line per exception: a traceback could carry a secret.
            summarize_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
    )


class RunLog:
    """The log file of one run; a context manager that opens and closes it.

    Opening never fails the run: if the file cannot be created (a read-only
    or full disk), a warning is logged and the run goes on without it.
    """

    def __init__(self, directory: Path, operation: str, run: str, stamp: str) -> None:
        self.directory = directory
        self.operation = operation
        self.run = run
        self.stamp = stamp
        self.path: Path | None = None
        self._stream: IO[str] | None = None
        self._handler: logging.Handler | None = None

    def _open(self) -> IO[str]:
        private_dirs(self.directory)
        for name in (
            f"{self.operation}_{self.stamp}.log",
            f"{self.operation}_{self.stamp}_{self.run}.log",
        ):
            try:
                stream = open(self.directory / name, "x", encoding="utf-8", opener=private_opener)  # noqa: SIM115 - closed in __exit__
            except FileExistsError:
                continue
            self.path = self.directory / name
            return stream
        raise FileExistsError(self.directory / f"{self.operation}_{self.stamp}_{self.run}.log")

    def __enter__(self) -> RunLog:
        try:
            self._stream = self._open()
        except OSError as exc:
            get_logger(__name__).warning(
                "runlog.unavailable",
                directory=str(self.directory),
                error=f"{type(exc).__name__}: {exc}",
            )
            return self
        handler = logging.StreamHandler(self._stream)
        handler.setFormatter(_formatter())
        self._handler = handler
        add_run_sink(self.run, self)
        return self

    def __exit__(self, *exc: object) -> None:
        remove_run_sink(self.run)
        if self._handler is not None:
            self._handler.close()
        if self._stream is not None:
            self._stream.close()

    def emit(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> None:
        """Write one event (already redacted) as a JSON line."""
        handler = self._handler
        if handler is None:
            return
        level = logging.getLevelName(method_name.upper())
        record = logging.LogRecord(
            name=getattr(logger, "name", "cellvault"),
            level=level if isinstance(level, int) else logging.INFO,
            pathname="",
            lineno=0,
            msg=dict(event_dict),
            args=(),
            exc_info=None,
        )
        # What ProcessorFormatter looks for to treat the record as structlog's.
        record._logger = logger
        record._name = method_name
        handler.handle(record)


def active_log(run: str | None) -> Path | None:
    """The log file of the open run *run*, if any (alerts name it)."""
    if not run:
        return None
    sink = run_sink(run)
    return sink.path if isinstance(sink, RunLog) else None


def carry(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """*fn* running in a copy of the caller's context (for worker threads).

    Thread pools do not inherit contextvars; this carries the run bound with
    ``structlog.contextvars`` into each task, so events of deeper layers
    (target retries, lock refreshes) land in the run's log too.
    """
    ctx = contextvars.copy_context()

    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return ctx.copy().run(fn, *args, **kwargs)

    return call


def prune_logs(
    directory: Path,
    *,
    keep_days: float = 14,
    keep_last: int = 10,
    now: float | dt.datetime | None = None,
) -> list[Path]:
    """Delete run logs older than *keep_days*; return the deleted paths.

    Only cellvault's own names (``backup_<stamp>.log``, ...) are touched. The
    newest *keep_last* logs of each kind are always kept, so a run made
    rarely still has its last logs. Age is the file's modification time.
    """
    if isinstance(now, dt.datetime):
        now = now.timestamp()
    limit = (time.time() if now is None else now) - keep_days * 86400
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    by_kind: dict[str, list[tuple[float, Path]]] = {}
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        by_kind.setdefault(match["kind"], []).append((mtime, Path(entry.path)))
    deleted = []
    for logs in by_kind.values():
        logs.sort(reverse=True)
        for mtime, path in logs[max(0, keep_last) :]:
            if mtime < limit:
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                deleted.append(path)
    return sorted(deleted)
