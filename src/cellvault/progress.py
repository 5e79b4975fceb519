"""How far a run has come: cells, bytes and files done of their totals.

A :class:`Meter` is the running count of one operation (backup, restore,
verify, sync). The operation states its totals as soon as it knows them (a
backup from a quick pre-scan of the cells' trees, a restore and a verify from
the archives' sidecars, a sync from the archives it is about to copy) and
advances the counts as it goes; :meth:`Meter.snapshot` turns them into what a
display needs: the fraction done, the rate and the estimated time left.

The ``progress`` events of a run carry a snapshot, so that an embedding
service can show a percentage; the command line draws them as a progress bar
on a terminal, and every run writes :meth:`Meter.line` to its log every
``progress_interval`` seconds (``BACKUP_PROGRESS_INTERVAL``), which is what
cron mail and ``journalctl`` show of a long run. A step the counts do not
cover (a restore loading a cell's dumps after its archive was read) is
named in the snapshot and the line (:meth:`Meter.begin_step`), with the
bytes it read when the dumper reads through cellvault.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO, Any

import attrs

__all__ = ["CountingReader", "Meter", "human_size"]


def human_size(n: float) -> str:
    """``1.5 GiB``: a byte count as people read it."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@attrs.define
class Meter:
    """The counts of one run: cells, bytes and files, done of total.

    Bytes and files are counted per cell (each cell's work reports its own
    running count, from any thread), so a cell that is redone or reports
    twice never counts twice. A total is what the operation expected; a done
    count that passes it (a file that grew since the pre-scan) raises the
    total to match, so that the fraction never exceeds 1.
    """

    operation: str
    #: What one "cell" of the counts is: a cell (backup, restore), a cell on
    #: one target (``checks``, verify) or an archive copied (``archives``, sync).
    unit: str = "cells"
    cells_total: int = 0
    bytes_total: int = 0
    files_total: int = 0
    clock: Callable[[], float] = time.monotonic
    started: float = attrs.field(init=False)
    _bytes: dict[str, int] = attrs.field(init=False, factory=dict)
    _files: dict[str, int] = attrs.field(init=False, factory=dict)
    _finished: set[str] = attrs.field(init=False, factory=set)
    _expected: dict[str, tuple[int, int]] = attrs.field(init=False, factory=dict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    #: The step in hand that the counts above do not cover (loading a cell's
    #: dumps after its archive was read): its text, start, bytes done and total.
    _step: tuple[str, float, int, int] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.started = self.clock()

    def begin_step(self, text: str, *, bytes: int = 0) -> None:
        """A step starts: *text* says what it is, *bytes* how much it will read (0: unknown)."""
        with self._lock:
            self._step = (text, self.clock(), 0, bytes)

    def step_read(self, n: int) -> None:
        """The step in hand read *n* more bytes."""
        with self._lock:
            if self._step is not None:
                text, started, done, total = self._step
                self._step = (text, started, done + n, total)

    def end_step(self) -> None:
        """The step in hand is over."""
        with self._lock:
            self._step = None

    def expect(
        self, *, cells: int = 0, bytes: int = 0, files: int = 0, cell: str | None = None
    ) -> None:
        """Add to the totals (an operation may learn them cell by cell).

        With *cell*, the bytes and files are that cell's: once it is
        finished, it counts as wholly done whatever its own counts said (a
        file excluded or vanished since the pre-scan must not hold the
        fraction below 1 at the end).
        """
        with self._lock:
            self.cells_total += cells
            self.bytes_total += bytes
            self.files_total += files
            if cell is not None:
                old = self._expected.get(cell, (0, 0))
                self._expected[cell] = (old[0] + bytes, old[1] + files)

    def update(self, cell: str, *, bytes: int | None = None, files: int | None = None) -> None:
        """Set *cell*'s running counts (absolute, not increments)."""
        with self._lock:
            if bytes is not None:
                self._bytes[cell] = bytes
            if files is not None:
                self._files[cell] = files

    def add(self, cell: str, *, bytes: int = 0, files: int = 0) -> None:
        """Add to *cell*'s running counts."""
        with self._lock:
            self._bytes[cell] = self._bytes.get(cell, 0) + bytes
            self._files[cell] = self._files.get(cell, 0) + files

    def finish(self, cell: str) -> None:
        """*cell* is done (whether it succeeded or not)."""
        with self._lock:
            self._finished.add(cell)
            want_bytes, want_files = self._expected.get(cell, (0, 0))
            self._bytes[cell] = max(self._bytes.get(cell, 0), want_bytes)
            self._files[cell] = max(self._files.get(cell, 0), want_files)

    @property
    def expected(self) -> frozenset[str]:
        """The cells (or other units) whose totals were given with :meth:`expect`."""
        with self._lock:
            return frozenset(self._expected)

    def snapshot(self) -> dict[str, Any]:
        """The counts, the fraction done (0..1, or ``None`` without a total), rate and ETA.

        ``rate`` is bytes per second since the start; ``eta`` the seconds
        left at that rate (``None`` until there is a rate and a total).
        """
        with self._lock:
            done_bytes = sum(self._bytes.values())
            done_files = sum(self._files.values())
            cells_done = len(self._finished)
            self.bytes_total = max(self.bytes_total, done_bytes)
            self.files_total = max(self.files_total, done_files)
            self.cells_total = max(self.cells_total, cells_done)
            bytes_total, files_total, cells_total = (
                self.bytes_total,
                self.files_total,
                self.cells_total,
            )
            step = self._step
        elapsed = max(0.0, self.clock() - self.started)
        if bytes_total:
            fraction: float | None = done_bytes / bytes_total
        elif cells_total:
            fraction = cells_done / cells_total
        else:
            fraction = None
        rate = done_bytes / elapsed if elapsed > 0 else 0.0
        eta = (bytes_total - done_bytes) / rate if rate > 0 and bytes_total else None
        return {
            "operation": self.operation,
            "unit": self.unit,
            "cells_done": cells_done,
            "cells_total": cells_total,
            "bytes_done": done_bytes,
            "bytes_total": bytes_total,
            "files_done": done_files,
            "files_total": files_total,
            "fraction": fraction,
            "elapsed": round(elapsed, 3),
            "rate": round(rate, 1),
            "eta": None if eta is None else round(eta, 1),
            **self._step_counts(step),
        }

    def _step_counts(self, step: tuple[str, float, int, int] | None) -> dict[str, Any]:
        if step is None:
            return {"step": None}
        text, started, done, total = step
        elapsed = max(0.0, self.clock() - started)
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (total - done) / rate if rate > 0 and total > done else None
        return {
            "step": text,
            "step_bytes_done": done,
            "step_bytes_total": max(total, done),
            "step_elapsed": round(elapsed, 3),
            "step_eta": None if left is None else round(left, 1),
        }

    def line(self, snapshot: dict[str, Any] | None = None) -> str:
        """``backup: 1 of 3 cells, 1.2 GiB of 2.0 GiB (60%), 48.0 MiB/s, 17 s left``."""
        s = self.snapshot() if snapshot is None else snapshot
        parts = [f"{s['cells_done']} of {s['cells_total']} {self.unit}"]
        if s["bytes_total"]:
            parts.append(
                f"{human_size(s['bytes_done'])} of {human_size(s['bytes_total'])}"
                f" ({100 * (s['fraction'] or 0):.0f}%)"
            )
        if s["files_total"]:
            parts.append(f"{s['files_done']} of {s['files_total']} files")
        if s["rate"]:
            parts.append(f"{human_size(s['rate'])}/s")
        if s["eta"] is not None:
            parts.append(f"{_duration(s['eta'])} left")
        else:
            parts.append(f"{_duration(s['elapsed'])} so far")
        line = f"{s['operation']}: " + ", ".join(parts)
        if s.get("step"):
            line += f"; now {s['step']}: " + _step_text(s)
        return line


def _step_text(s: dict[str, Any]) -> str:
    """``12.0 MiB of 40.0 MiB read, 2 min 10 s so far, 5 min 03 s left``."""
    parts = []
    done, total = s.get("step_bytes_done", 0), s.get("step_bytes_total", 0)
    if total:
        parts.append(f"{human_size(done)} of {human_size(total)} read")
    parts.append(f"{_duration(s.get('step_elapsed', 0.0))} so far")
    if s.get("step_eta") is not None:
        parts.append(f"{_duration(s['step_eta'])} left")
    return ", ".join(parts)


class CountingReader:
    """Pass reads from *raw* through, telling *seen* how many bytes each read gave."""

    def __init__(self, raw: IO[bytes], seen: Callable[[int], None]) -> None:
        self.raw = raw
        self.seen = seen

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.seen(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)
