"""Progress: totals known up front, counts that reach them, a bar on a terminal, a line under cron."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cellvault import Cell, Event
from cellvault.cli import cli
from cellvault.display import Display, PlainProgress
from cellvault.progress import Meter
from cellvault.scan import TotalsAhead, tree_totals
from tests.helpers import SAMPLE, make_vault, write_tree

SAMPLE_BYTES = sum(len(v.encode() if isinstance(v, str) else v) for v in SAMPLE.values())


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the meter -----------------------------------------------------------------------


def test_a_meter_gives_fraction_rate_and_time_left() -> None:
    clock = FakeClock()
    meter = Meter("backup", clock=clock)
    meter.expect(cells=1, bytes=1000, files=10, cell="crm")
    meter.expect(cells=1, bytes=3000, files=30, cell="billing")
    clock.now += 10
    meter.update("crm", bytes=1000, files=10)
    meter.finish("crm")
    meter.update("billing", bytes=1000, files=5)
    snap = meter.snapshot()
    assert (snap["cells_done"], snap["cells_total"]) == (1, 2)
    assert (snap["bytes_done"], snap["bytes_total"]) == (2000, 4000)
    assert (snap["files_done"], snap["files_total"]) == (15, 40)
    assert snap["fraction"] == 0.5
    assert snap["rate"] == 200.0  # bytes per second since the start
    assert snap["eta"] == 10.0
    assert meter.line(snap) == (
        "backup: 1 of 2 cells, 2.0 KiB of 3.9 KiB (50%), 15 of 40 files, 200 B/s, 10 s left"
    )


def test_a_finished_cell_counts_whole_and_growth_never_passes_one() -> None:
    meter = Meter("backup")
    meter.expect(cells=1, bytes=1000, files=4, cell="crm")
    meter.update("crm", bytes=600, files=3)  # a file excluded or gone since the pre-scan
    meter.finish("crm")
    assert meter.snapshot()["fraction"] == 1.0
    grown = Meter("backup")
    grown.expect(cells=1, bytes=100, cell="crm")
    grown.update("crm", bytes=250)  # a file grew since the pre-scan
    snap = grown.snapshot()
    assert snap["bytes_total"] == 250 and snap["fraction"] == 1.0


def test_without_a_byte_total_the_fraction_counts_cells() -> None:
    meter = Meter("verify", unit="checks")
    meter.expect(cells=4)
    meter.finish("crm@local")
    snap = meter.snapshot()
    assert snap["fraction"] == 0.25 and snap["eta"] is None
    assert meter.line(snap).startswith("verify: 1 of 4 checks")


def test_the_pre_scan_counts_in_a_child_what_it_would_count_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    monkeypatch.setattr(TotalsAhead, "FORK_MAX_RSS", 1 << 62)
    cells = []
    for name in ("crm", "billing"):
        root = tmp_path / name
        write_tree(root, SAMPLE)
        (root / "deep" / "er").mkdir(parents=True)
        (root / "deep" / "er" / "f").write_bytes(b"z" * 5000)
        (root / "skipped.log").write_bytes(b"l" * 70)
        cells.append(Cell(name, [root], exclude=["*.log"]))
    ahead = TotalsAhead(cells)
    assert ahead._pid, "a child counts"
    deadline = time.monotonic() + 30
    while not ahead.ready():
        assert time.monotonic() < deadline, "the child never gave its counts"
        time.sleep(0.01)
    assert ahead.get() == [tree_totals(c) for c in cells]
    assert ahead.get()[0].files == len(SAMPLE) + 1
    ahead.close()
    assert TotalsAhead([]).ready() and TotalsAhead([]).get() == []


@pytest.mark.parametrize("why", ["fork fails", "a big process"])
def test_without_a_child_the_pre_scan_counts_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    root = tmp_path / "crm"
    write_tree(root, SAMPLE)
    cell = Cell("crm", [root])

    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    if why == "fork fails":
        monkeypatch.setattr(os, "fork", no_fork)
    else:
        monkeypatch.setattr(TotalsAhead, "FORK_MAX_RSS", 1)  # every process is bigger
    ahead = TotalsAhead([cell])
    assert ahead._pid == 0 and ahead.ready()
    assert ahead.get() == [tree_totals(cell)]


def test_a_pre_scan_child_that_never_answers_is_ended_and_the_counts_taken_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cellvault import scan

    root = tmp_path / "crm"
    write_tree(root, SAMPLE)
    cell = Cell("crm", [root])
    parent = os.getpid()

    def stuck_in_the_child(cell: Cell) -> scan.TreeTotals:
        if os.getpid() != parent:  # the forked child hangs (a lock taken at the fork, say)
            time.sleep(120)
        return tree_totals(cell)

    monkeypatch.setattr(scan, "tree_totals", stuck_in_the_child)
    monkeypatch.setattr(TotalsAhead, "WAIT", 0.5)
    monkeypatch.setattr(TotalsAhead, "FORK_MAX_RSS", 1 << 62)
    ahead = TotalsAhead([cell])
    child = ahead._pid
    assert child and not ahead.ready()
    started = time.monotonic()
    assert ahead.get() == [tree_totals(cell)]
    assert time.monotonic() - started < 60  # not the child's two minutes
    assert ahead._pid == 0
    with pytest.raises(ChildProcessError):  # ended and reaped
        os.waitpid(child, os.WNOHANG)


# -- events with totals, from real runs ---------------------------------------------------


def _progress(events: list[Event]) -> list[dict[str, Any]]:
    return [dict(e.data) for e in events if e.name == "progress"]


def test_backup_restore_and_verify_progress_carry_totals_and_reach_them(tmp_path: Path) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    billing = write_tree(tmp_path / "cells" / "billing", {**SAMPLE, "more.bin": b"x" * 50_000})
    events: list[Event] = []
    vault = make_vault(
        tmp_path / "backup", {"crm": [crm], "billing": [billing]}, on_event=events.append
    )
    assert vault.backup(kind="full").ok
    backup = _progress(events)
    assert backup, "a backup emits progress events"
    # The totals are known from the first event on (the pre-scan), not discovered on the way.
    first, last = backup[0], backup[-1]
    assert first["operation"] == "backup" and first["cells_total"] == 2
    assert first["bytes_total"] >= 2 * SAMPLE_BYTES + 50_000
    assert first["files_total"] == 2 * len(SAMPLE) + 1
    assert (last["cells_done"], last["fraction"]) == (2, 1.0)
    assert last["files_done"] == last["files_total"]
    assert all(0 <= p["fraction"] <= 1 for p in backup)
    assert all(b["bytes_done"] >= a["bytes_done"] for a, b in itertools.pairwise(backup))
    assert last["line"].startswith("backup: 2 of 2 cells")

    events.clear()
    assert vault.restore("latest", cells=["crm"], into=tmp_path / "out").ok
    restore = _progress(events)
    archive = vault.list("crm")[-1]
    assert restore[0]["operation"] == "restore"
    assert (restore[-1]["cells_done"], restore[-1]["cells_total"]) == (1, 1)
    assert restore[-1]["bytes_total"] == archive.size == restore[-1]["bytes_done"]

    events.clear()
    assert vault.verify(level="full").ok
    verify = _progress(events)
    assert verify[-1]["unit"] == "checks"
    assert (verify[-1]["cells_done"], verify[-1]["cells_total"]) == (2, 2)
    assert verify[-1]["fraction"] == 1.0
    # The bytes and files of the archives checked (the files an archive holds, not archives).
    newest = [vault.list(c)[-1] for c in ("crm", "billing")]
    assert verify[-1]["bytes_total"] == sum(a.size for a in newest) == verify[-1]["bytes_done"]
    assert verify[-1]["files_total"] == sum(a.files for a in newest) == verify[-1]["files_done"]


def test_an_incremental_counts_unchanged_files_as_done(tmp_path: Path) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    events: list[Event] = []
    vault = make_vault(tmp_path / "backup", {"crm": [crm]}, on_event=events.append)
    assert vault.backup(kind="full").ok
    events.clear()
    assert vault.backup(kind="incremental").ok
    last = _progress(events)[-1]
    assert last["fraction"] == 1.0 and last["files_done"] == len(SAMPLE)


def test_the_run_log_gets_a_progress_line_every_interval(tmp_path: Path) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    vault = make_vault(tmp_path / "backup", {"crm": [crm]}, progress_interval=1e-9)
    assert vault.backup().ok
    (log,) = (tmp_path / "backup" / "logs").glob("backup_*.log")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    progress = [e for e in lines if e["event"] == "run.progress"]
    assert progress and progress[-1]["line"].startswith("backup: 1 of 1 cells")
    assert progress[-1]["bytes_total"] >= SAMPLE_BYTES
    quiet = make_vault(tmp_path / "backup2", {"crm": [crm]}, progress_interval=0)
    assert quiet.backup().ok
    (log,) = (tmp_path / "backup2" / "logs").glob("backup_*.log")
    assert "run.progress" not in log.read_text()


# -- the command line: a line under cron, a bar on a terminal --------------------------------


def test_off_a_terminal_the_command_writes_a_plain_line_every_interval(tmp_path: Path) -> None:
    write_tree(tmp_path / "cells" / "crm", {**SAMPLE, "big.bin": b"y" * 3_000_000})
    env = {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(tmp_path / "cells"),
        "BACKUP_ALERT_LOG": "off",
        "BACKUP_PROGRESS_INTERVAL": "0.000001",
    }
    result = CliRunner().invoke(cli, ["backup"], env=env)
    assert result.exit_code == 0, result.output
    assert "progress: backup: " in result.stderr
    assert "of 1 cells" in result.stderr
    env["BACKUP_PROGRESS_INTERVAL"] = "0"
    result = CliRunner().invoke(cli, ["backup"], env=env)
    assert result.exit_code == 0 and "progress:" not in result.stderr


def test_plain_progress_waits_one_interval_before_its_first_line() -> None:
    out = io.StringIO()
    plain = PlainProgress(3600, out)
    for _ in range(3):
        plain.event(Event("progress", "run1", data={"line": "backup: 0 of 1 cells"}))
    assert out.getvalue() == ""


def test_on_a_terminal_a_bar_with_totals_is_drawn_and_taken_away(tmp_path: Path) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", {**SAMPLE, "big.bin": b"z" * 2_000_000})
    screen = io.StringIO()
    display = Display(screen)
    vault = make_vault(tmp_path / "backup", {"crm": [crm]}, on_event=display.event)
    assert vault.backup().ok
    assert display.task is not None  # shown while the run went on
    display.clear()
    assert display.task is None
    drawn = screen.getvalue()
    assert "backup 1/1 cells" in drawn
    assert "100%" in drawn
    assert "MiB" in drawn  # bytes done of the total


# -- a step the counts do not cover: loading dumps -------------------------------------------


def test_a_dump_load_is_a_step_with_the_bytes_it_read(tmp_path: Path) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    out = tmp_path / "loaded.bin"
    size = 300_000
    dumper = {
        "type": "command",
        "name": "blob",
        "command": [sys.executable, "-c", f"import sys; sys.stdout.buffer.write(b'd' * {size})"],
        "restore_command": [
            sys.executable,
            "-c",
            f"import sys,pathlib; pathlib.Path({str(out)!r}).write_bytes(sys.stdin.buffer.read())",
        ],
    }
    events: list[Event] = []
    vault = make_vault(
        tmp_path / "backup", [Cell("crm", [crm], dumpers=[dumper])], on_event=events.append
    )
    assert vault.backup().ok
    events.clear()
    assert vault.restore("latest").ok
    assert out.stat().st_size == size
    steps = [p for p in _progress(events) if p.get("step")]
    assert steps and steps[0]["step"] == "crm: loading dumps (blob)"
    assert steps[0]["step_bytes_total"] >= size  # the staged dump (and its dumper.json)
    assert steps[-1]["step_bytes_done"] == size  # all of it read through cellvault
    assert "now crm: loading dumps (blob): " in steps[-1]["line"]
    assert _progress(events)[-1]["step"] is None  # the step is over when the restore is


def test_a_long_step_still_gets_its_line_in_the_run_log(tmp_path: Path) -> None:
    """The heartbeat logs the line while a load counts nothing; the load waits to see it."""
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    logs = tmp_path / "backup" / "logs"
    wait = (
        "import glob,sys,time\n"
        "sys.stdin.buffer.read()\n"
        "while not any('now crm: loading dumps' in open(p).read()"
        f" for p in glob.glob({str(logs)!r} + '/restore_*.log')):\n"
        "    time.sleep(0.05)\n"
    )
    dumper = {
        "type": "command",
        "name": "db",
        "command": ["echo", "dump"],
        "restore_command": [sys.executable, "-c", wait],
        "timeout": 120,
    }
    vault = make_vault(
        tmp_path / "backup", [Cell("crm", [crm], dumpers=[dumper])], progress_interval=1e-9
    )
    assert vault.backup().ok
    report = vault.restore("latest")
    assert report.ok, report.cells[0].error
    (log,) = logs.glob("restore_*.log")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    during = [e for e in lines if e["event"] == "run.progress" and e.get("step")]
    assert during and during[0]["line"].startswith("restore: ")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_command_line_s_display_draws_on_a_real_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not only on a stream forced to be one: stderr that is a terminal gets the bar."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("NO_COLOR", "TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert Display().console.is_terminal
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not Display().console.is_terminal


def test_a_second_run_of_the_same_command_gets_a_bar_of_its_own() -> None:
    display = Display(io.StringIO())
    first = {"operation": "backup", "cells_done": 1, "cells_total": 1, "bytes_total": 10}
    display.event(Event("progress", "run1", data={**first, "bytes_done": 10}))
    display.clear()
    second = {"operation": "restore", "cells_done": 0, "cells_total": 1, "bytes_total": 20}
    display.event(Event("progress", "run2", data={**second, "bytes_done": 5}))
    (task,) = display.bar.tasks
    assert task.description.startswith("restore 0/1 cells") and task.completed == 5
    display.clear()
