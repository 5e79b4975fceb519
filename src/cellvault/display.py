"""The command line's progress bar on a terminal, drawn with ``rich`` from a run's events.

One bar for the run (``progress`` events: cells, bytes and files done of
their totals, rate and time left) and a line naming the step in hand
(packing, storing, reading an archive, loading dumps, copying). Only on a
terminal: under cron or systemd a run writes a plain progress line to its log
every ``BACKUP_PROGRESS_INTERVAL`` seconds instead (:mod:`cellvault.progress`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .events import Event
from .progress import human_size

__all__ = ["Display", "PlainProgress"]


def _step(event: Event) -> str | None:
    """What the run is doing now, for the line under the bar; ``None`` to keep the last."""
    data = event.data
    if event.name == "cell.packing":
        return f"{event.cell}: packing"
    if event.name == "archive.stored":
        return f"{event.cell}: stored on {event.target}"
    if event.name == "restore.reading":
        return f"{event.cell}: reading {event.archive} from {event.target}"
    if event.name == "restore.fetched":
        return f"{event.cell}: read {event.archive} from {event.target}"
    if event.name == "restore.loading":
        return f"{event.cell}: loading dumps ({', '.join(data.get('dumpers', []))})"
    if event.name == "restore.swapped":
        return f"{event.cell}: swapped in"
    if event.name == "sync.progress":
        return f"{event.archive}: copying to {event.target}"
    return None


class Display:
    """A live progress bar on *stream* (stderr), fed by :meth:`event` from any thread.

    *handler*, the command line's log handler, writes above the bar while it
    is shown, so that warnings do not tear it.
    """

    def __init__(
        self, stream: IO[str] | None = None, *, handler: logging.Handler | None = None
    ) -> None:
        # A given stream is drawn on as a terminal (tests); stderr only when it is one
        # (None: rich looks; False would switch the bar off on a real terminal too).
        self.console = Console(
            file=stream or sys.stderr, force_terminal=True if stream is not None else None
        )
        self.handler = handler if isinstance(handler, logging.StreamHandler) else None
        self._saved: Any = None
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[step]}"),
            console=self.console,
            transient=True,
        )
        self.task: TaskID | None = None
        self.step = ""
        self.lock = threading.Lock()

    def event(self, event: Event) -> None:
        """Update the bar from one of the vault's events."""
        step = _step(event)
        with self.lock:
            if step is not None:
                self.step = step
            if event.name != "progress" and self.task is None:
                return
            fresh = self.task is None
            if self.task is None:
                self.task = self.bar.add_task("", total=None, step="")
            if event.name == "progress":
                self._update(event.data)
            else:
                self.bar.update(self.task, step=self.step)
            if fresh:
                # Drawn from its first counts on, never as an empty bar.
                self._start()

    def _start(self) -> None:
        self.bar.start()
        if self.handler is not None:
            # Log lines go through the console, above the bar.
            self._saved = self.handler.setStream(sys.stderr)

    def _update(self, data: Any) -> None:
        assert self.task is not None
        unit = data.get("unit", "cells")
        text = f"{data.get('operation', '')} {data.get('cells_done', 0)}/{data.get('cells_total', 0)} {unit}"
        if data.get("files_total"):
            text += f", {data.get('files_done', 0)}/{data['files_total']} files"
        total = data.get("bytes_total") or None
        if data.get("step"):
            # A step the counts do not cover (loading dumps): what it has read of what.
            self.step = str(data["step"])
            if data.get("step_bytes_total"):
                self.step += (
                    f", {human_size(data.get('step_bytes_done', 0))}"
                    f" of {human_size(data['step_bytes_total'])} read"
                )
        self.bar.update(
            self.task,
            description=text,
            total=total,
            completed=data.get("bytes_done", 0) if total else 0,
            step=self.step,
        )

    def clear(self) -> None:
        """Take the bar off the screen (before the command prints its result)."""
        with self.lock:
            if self.task is None:
                return
            self.bar.stop()
            if self.handler is not None and self._saved is not None:
                self.handler.setStream(self._saved)
            # A later operation of the same command draws a bar of its own.
            self.bar.remove_task(self.task)
            self.task = None


class PlainProgress:
    """Off a terminal (cron, systemd, a pipe): the run's progress line every *interval* seconds.

    Written to *stream* (stderr), so that cron mail and the journal show how
    far a long run came; ``0`` writes none.
    """

    def __init__(self, interval: float, stream: IO[str] | None = None) -> None:
        self.interval = interval
        self.stream = stream
        self.last: float | None = None
        self.lock = threading.Lock()

    def event(self, event: Event) -> None:
        if event.name != "progress" or not self.interval:
            return
        now = time.monotonic()
        with self.lock:
            if self.last is None:
                self.last = now  # the first line after one interval, not at once
                return
            if now - self.last < self.interval:
                return
            self.last = now
        stream = self.stream or sys.stderr
        stream.write(f"progress: {event.data.get('line', '')}\n")
        stream.flush()

    def clear(self) -> None:
        """Nothing to take off the screen."""
