"""Embedding cellvault in a service: events, threads, silence, and examples/embed_service.py."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cellvault import Cell, ConfigError, Event, hookimpl
from tests.helpers import SAMPLE, make_vault, write_tree

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "embed_service.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embed_service", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example()


def settings(tmp: Path) -> dict[str, Any]:
    write_tree(tmp / "cells" / "crm", SAMPLE)
    write_tree(tmp / "cells" / "billing", {"ledger.csv": "a,b\n1,2\n" * 1000})
    return {
        "backup_dir": str(tmp / "backup"),
        "cells": {"crm": [str(tmp / "cells" / "crm")], "billing": [str(tmp / "cells" / "billing")]},
        "targets": {"local": str(tmp / "backup"), "nas": {"url": str(tmp / "nas")}},
        "max_age_hours": 26,
    }


class SlowSnapshot:
    """A plugin whose before-backup hook takes a while, like a database freeze."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    @hookimpl
    def cellvault_before_backup(self, cell: Cell, archive: str) -> None:
        time.sleep(self.seconds)


# -- the public API: events, threads, silence -----------------------------------------------


def test_events_follow_a_backup_from_start_to_finish(tmp_path: Path) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    events: list[Event] = []
    vault = make_vault(tmp_path / "backup", {"crm": [crm]}, on_event=events.append)
    report = vault.backup()
    assert report.ok
    names = [e.name for e in events]
    assert names[0] == "backup.started" and names[-1] == "backup.finished"
    for name in ("cell.packing", "cell.progress", "archive.packed", "archive.stored"):
        assert name in names
    assert names.index("archive.verified") > names.index("archive.stored")
    assert names.index("cell.finished") > names.index("archive.verified")
    assert {e.run for e in events} == {report.run}
    progress = next(e for e in events if e.name == "cell.progress")
    assert progress.cell == "crm" and progress.data["bytes"] > 0 and "files" in progress.data
    assert events[0].data["cells"] == ["crm"] and events[-1].data["ok"] is True
    stored = next(e for e in events if e.name == "archive.stored")
    assert (stored.cell, stored.target, stored.archive) == ("crm", "local", report.cells[0].archive)


def test_a_callback_that_raises_does_not_break_the_backup(tmp_path: Path) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)

    def broken(event: Event) -> None:
        raise RuntimeError("the caller's bug")

    vault = make_vault(tmp_path / "backup", {"crm": [crm]}, on_event=broken)
    assert vault.backup().ok


def test_one_vault_serves_several_threads_without_cross_talk(tmp_path: Path) -> None:
    cells = {
        name: [write_tree(tmp_path / "cells" / name, {**SAMPLE, "name.txt": name})]
        for name in ("crm", "billing")
    }
    by_run: dict[str, set[str | None]] = defaultdict(set)
    lock = threading.Lock()

    def on_event(event: Event) -> None:
        with lock:
            by_run[event.run].add(event.cell)
            by_run[event.run].update(event.data.get("cells", ()))

    vault = make_vault(tmp_path / "backup", cells, on_event=on_event, plugins=[SlowSnapshot(0.2)])
    assert vault.backup().ok  # something to list
    reports: dict[str, Any] = {}
    listings: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def back_up(cell: str) -> None:
        try:
            start.wait()
            for _ in range(2):
                reports.setdefault(cell, []).append(vault.backup([cell], kind="incremental"))
        except BaseException as exc:
            errors.append(exc)

    def list_all() -> None:
        try:
            start.wait()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                listings.append(len(vault.list()))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=back_up, args=("crm",)),
        threading.Thread(target=back_up, args=("billing",)),
        threading.Thread(target=list_all),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert listings and min(listings) >= 2
    for cell, runs in reports.items():
        assert len(runs) == 2
        for report in runs:
            assert report.ok, report
            assert [c.cell for c in report.cells] == [cell]
            assert report.cells[0].archive.startswith(f"cell_{cell}_")
            # Every event of this run is about this cell alone.
            assert by_run[report.run] - {None} == {cell}
    # Each run wrote its own run log.
    runs = [r.run for rs in reports.values() for r in rs]
    logs = list((tmp_path / "backup" / "logs").glob("backup_*.log"))
    for run in runs:
        owners = [p for p in logs if f'"run": "{run}"' in p.read_text()]
        assert len(owners) == 1
        assert all(
            json.loads(line).get("run") == run for line in owners[0].read_text().splitlines()
        )
    assert len(vault.list()) == 2 + 4


SILENT = """
import sys
from pathlib import Path
from cellvault import Cell, Config, TargetSpec, Vault, ArchiveNotFound, ConfigError

tmp = Path(sys.argv[1])
(tmp / "cells" / "crm").mkdir(parents=True)
(tmp / "cells" / "crm" / "a.txt").write_text("hello\\n")
(tmp / "blocked").write_text("a file where a folder should be\\n")
config = Config(
    backup_dir=tmp / "backup",
    cells=[Cell("crm", [tmp / "cells" / "crm"])],
    targets=[TargetSpec("local", str(tmp / "backup")), TargetSpec("nas", str(tmp / "blocked"))],
    extra={"BACKUP_ALERT_WEBHOOK": "http://127.0.0.1:9/hook", "BACKUP_ALERT_TIMEOUT": "0.2"},
)
vault = Vault(config, load_entry_points=False)
report = vault.backup()                      # fails on nas: logged, alerted, never printed
assert not report.ok and report.cells[0].targets[0].ok
assert not vault.verify(targets=["nas"]).ok
assert vault.verify(targets=["local"]).ok
assert not vault.status().ok
try:
    vault.restore("20000101", into=tmp / "restored")
except ArchiveNotFound:
    pass
try:
    vault.backup(["nope"])
except ConfigError:
    pass
assert vault.restore("latest", into=tmp / "restored").ok
vault.prune(dry_run=True)
vault.list()
(tmp / "done").write_text("done")
"""


def test_the_library_never_prints_exits_or_configures_logging(tmp_path: Path) -> None:
    """An embedded run, failures included, with no logging configured: not one byte of output."""
    script = tmp_path / "silent.py"
    script.write_text(textwrap.dedent(SILENT))
    result = subprocess.run(
        [sys.executable, "-W", "default", str(script), str(tmp_path)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "CELLVAULT_LOAD_PLUGINS": ""},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "done").read_text() == "done"
    assert result.stdout == b""
    assert result.stderr == b""
    # The failure was alerted all the same: the alert log beside the run logs
    # (no configuration file here), never in the current directory.
    alert_log = tmp_path / "backup" / "logs" / "backup_alerts.log"
    assert alert_log.read_text().count('"nas"') >= 1
    assert not (tmp_path / "deploy").exists()


def test_no_print_exit_or_logging_setup_in_the_library() -> None:
    """Only the command line prints, exits and configures logging."""
    forbidden = {"print", "sys.exit", "exit", "logging.basicConfig", "structlog.configure"}
    for path in sorted((REPO / "src" / "cellvault").rglob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                assert name not in forbidden, f"{path.relative_to(REPO)}:{node.lineno} calls {name}"


# -- the example service --------------------------------------------------------------------


async def collect(stream: Any) -> list[dict[str, Any]]:
    return [item async for item in stream]


def test_the_example_streams_a_backup_and_reads_status(example: ModuleType, tmp_path: Path) -> None:
    service = example.BackupService.from_settings(settings(tmp_path), load_entry_points=False)

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        items = await collect(service.backup("crm"))
        return items, await service.status()

    items, status = asyncio.run(scenario())
    names = [i["event"] for i in items]
    assert names[0] == "backup.started" and names[-2:] == ["backup.finished", "result"]
    assert {"cell.packing", "cell.progress", "archive.stored", "archive.verified"} <= set(names)
    assert {i["target"] for i in items if i["event"] == "archive.stored"} == {"local", "nas"}
    percents = [i["percent"] for i in items if i["event"] == "progress"]
    assert percents and percents[-1] == 100.0 and percents == sorted(percents)
    result = items[-1]
    assert result["ok"] is True
    assert [c["cell"] for c in result["report"]["cells"]] == ["crm"]
    assert {i["run"] for i in items[:-1]} == {result["report"]["run"]}
    json.dumps(items, default=str)  # ready to send
    crm = next(c for c in status["cells"] if c["cell"] == "crm")
    assert crm["ok"] is True and {t["target"] for t in crm["targets"]} == {"local", "nas"}
    billing = next(c for c in status["cells"] if c["cell"] == "billing")
    assert billing["ok"] is False  # never backed up


def test_the_example_does_not_block_its_event_loop(example: ModuleType, tmp_path: Path) -> None:
    service = example.BackupService.from_settings(
        settings(tmp_path), load_entry_points=False, plugins=[SlowSnapshot(0.5)]
    )

    async def scenario() -> tuple[list[dict[str, Any]], list[float], dict[str, Any]]:
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        stream = service.backup("crm")
        first = await anext(stream)
        # While the backup waits in its thread, the loop answers another request.
        status = await asyncio.wait_for(service.status(), timeout=0.4)
        rest = await collect(stream)
        tick.cancel()
        return [first, *rest], ticks, status

    items, ticks, status = asyncio.run(scenario())
    assert items[-1]["ok"] is True
    assert len(ticks) > 20, "the event loop was blocked during the backup"
    assert "cells" in status


def test_the_example_serves_concurrent_requests(example: ModuleType, tmp_path: Path) -> None:
    service = example.BackupService.from_settings(
        settings(tmp_path), load_entry_points=False, plugins=[SlowSnapshot(0.2)]
    )

    async def scenario() -> tuple[list[Any], ...]:
        crm, billing = await asyncio.gather(
            collect(service.backup("crm")), collect(service.backup("billing"))
        )
        stream = service.backup("crm")
        await anext(stream)
        with pytest.raises(example.Busy):
            await anext(service.backup("crm"))
        rest = await collect(stream)
        with pytest.raises(ConfigError):
            await anext(service.backup("nope"))
        return crm, billing, rest

    crm, billing, rest = asyncio.run(scenario())
    for cell, items in (("crm", crm), ("billing", billing)):
        assert items[-1]["ok"] is True
        assert {i["cell"] for i in items[:-1]} - {None} == {cell}
        assert items[0]["cells"] == [cell]
    assert rest[-1]["ok"] is True


def test_the_example_over_http(example: ModuleType, tmp_path: Path) -> None:
    service = example.BackupService.from_settings(settings(tmp_path), load_entry_points=False)

    async def request(port: int, line: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"{line} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        await writer.drain()
        body = await reader.read()
        writer.close()
        await writer.wait_closed()
        return body

    async def scenario() -> tuple[bytes, bytes, bytes]:
        server = await example.serve(service, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            stream = await request(port, "POST /cells/billing/backup")
            status = await request(port, "GET /status")
            missing = await request(port, "POST /cells/nope/backup")
        return stream, status, missing

    stream, status, missing = asyncio.run(scenario())
    head, _, body = stream.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in head
    events = [block.split("\n") for block in body.decode().strip().split("\n\n") if block.strip()]
    assert [e[0] for e in events][:1] == ["event: backup.started"]
    assert events[-1][0] == "event: result"
    assert json.loads(events[-1][1].removeprefix("data: "))["ok"] is True
    head, _, body = status.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert {c["cell"] for c in json.loads(body)["cells"]} == {"crm", "billing"}
    assert missing.startswith(b"HTTP/1.1 404 Not Found")
    assert b"unknown cell 'nope'" in missing


def test_the_embedding_page_quotes_the_example_as_it_is() -> None:
    page = (REPO / "docs" / "embedding.md").read_text()
    excerpts = re.findall(
        r"<!-- excerpt: examples/embed_service.py -->\n```python\n(.*?)```", page, re.S
    )
    assert len(excerpts) >= 3
    source = EXAMPLE.read_text()
    for excerpt in excerpts:
        assert excerpt in source, f"docs/embedding.md quotes lines the example lacks:\n{excerpt}"
