"""A platform service that embeds cellvault (see docs/embedding.md).

The service holds one :class:`cellvault.Vault`, built from its own settings
(a plain dict, as a service reads from its config system), and answers:

    POST /cells/<cell>/backup   back the cell up; the progress streams back as
                                server-sent events, the last one the result
    GET  /status                fresh and verified, per cell and target (JSON)

A backup runs in a worker thread (``asyncio.to_thread``): the event loop keeps
serving other requests meanwhile. The vault's ``on_event`` callback, called
from cellvault's worker threads, hands each event to the loop with
``loop.call_soon_threadsafe``; the request that started the run reads them
from an ``asyncio.Queue``.

Only the standard library and cellvault: a tiny HTTP/1.1 front on asyncio
streams, so that no web framework is needed to read it. A real service puts
:meth:`BackupService.backup` and :meth:`BackupService.status` behind its own
framework's routes (an async generator is what Starlette's or aiohttp's
streaming responses take).

Run it::

    python examples/embed_service.py --settings settings.json --port 8080
    curl -N -X POST http://127.0.0.1:8080/cells/crm/backup
    curl http://127.0.0.1:8080/status
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any

from cellvault import Cell, Config, ConfigError, Event, TargetSpec, Vault

__all__ = ["EXAMPLE_SETTINGS", "BackupService", "Busy", "EventHub", "build_vault", "serve"]

#: The shape of the service's own settings.
EXAMPLE_SETTINGS: dict[str, Any] = {
    "backup_dir": "/var/lib/platform/backup",
    "cells": {
        "crm": ["/srv/paas/cells/crm"],
        "billing": ["/srv/paas/cells/billing"],
    },
    # Target name -> a URL, or {"url": ..., "options": {...}} (fsspec storage_options).
    "targets": {
        "local": "/var/lib/platform/backup",
        # "s3": {"url": "s3://paas-backup/prod", "options": {"key": "...", "secret": "..."}},
    },
    "max_age_hours": 26,
}


def build_vault(settings: Mapping[str, Any], **vault_options: Any) -> Vault:
    """A :class:`Vault` from the service's settings (``vault_options`` go to ``Vault``)."""
    targets = []
    for name, target in settings.get("targets", {}).items():
        if isinstance(target, str):
            targets.append(TargetSpec(name, target))
        else:
            targets.append(TargetSpec(name, target["url"], target.get("options", {})))
    config = Config(
        backup_dir=settings["backup_dir"],
        cells=[Cell(name, paths) for name, paths in settings["cells"].items()],
        targets=targets,
        max_age=float(settings.get("max_age_hours", 26)),
    )
    return Vault(config, **vault_options)


class Busy(Exception):
    """A backup of this cell is already streaming to another request."""


class EventHub:
    """The vault's ``on_event``: routes each run's events to the request that started it.

    cellvault calls it from its worker threads. A request subscribes to a cell
    before it starts that cell's backup; the run's first event,
    ``backup.started``, names its cells, so every later event of the same
    ``run`` goes to that request's queue, on that request's event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = {}
        self._runs: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = {}

    def subscribe(self, cell: str) -> asyncio.Queue[Event]:
        """A queue of the events of *cell*'s next backup run (call it on the event loop)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        with self._lock:
            if cell in self._cells:
                raise Busy(cell)
            self._cells[cell] = (asyncio.get_running_loop(), queue)
        return queue

    def unsubscribe(self, cell: str) -> None:
        with self._lock:
            sink = self._cells.pop(cell, None)
            for run in [r for r, s in self._runs.items() if s is sink]:
                del self._runs[run]

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.name == "backup.started":
                for cell in event.data.get("cells", ()):
                    if cell in self._cells:
                        self._runs[event.run] = self._cells[cell]
            sink = self._runs.get(event.run)
            if event.name == "backup.finished":
                self._runs.pop(event.run, None)
        if sink is not None:
            loop, queue = sink
            loop.call_soon_threadsafe(queue.put_nowait, event)


def event_dict(event: Event) -> dict[str, Any]:
    """An event as JSON-ready data; a ``progress`` event gains the ``percent`` a page shows."""
    data = {
        "event": event.name,
        "run": event.run,
        "cell": event.cell,
        "target": event.target,
        "archive": event.archive,
        **{k: v for k, v in event.data.items() if k not in ("event", "run")},
    }
    if event.name == "progress" and event.data.get("fraction") is not None:
        # Cells, bytes and files done of their totals (known from the start).
        data["percent"] = round(100 * event.data["fraction"], 1)
    return data


class BackupService:
    """The request handlers of the service, over one shared :class:`Vault`."""

    def __init__(self, vault: Vault, hub: EventHub) -> None:
        self.vault = vault
        self.hub = hub
        # Backups whose request went away: they finish in their thread all the same.
        self._orphans: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], **vault_options: Any) -> BackupService:
        hub = EventHub()
        return cls(build_vault(settings, on_event=hub, **vault_options), hub)

    async def backup(
        self, cell: str, kind: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Back *cell* up; yield each event of the run, then ``{"event": "result", ...}``.

        Raises :class:`cellvault.ConfigError` for an unknown cell and
        :class:`Busy` when a backup of the cell is already streaming, before
        anything runs.
        """
        self.vault.config.cell(cell)  # an unknown cell fails here, as a ConfigError
        queue = self.hub.subscribe(cell)
        task: asyncio.Task[Any] | None = None
        try:
            # The backup runs in a worker thread; this coroutine only waits for events.
            task = asyncio.create_task(asyncio.to_thread(self.vault.backup, [cell], kind=kind))
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                yield event_dict(getter.result())
            # Events are handed over before the thread returns: whatever is left is queued.
            while not queue.empty():
                yield event_dict(queue.get_nowait())
            report = await task
            yield {"event": "result", "ok": report.ok, "report": report.to_dict()}
        finally:
            self.hub.unsubscribe(cell)
            if task is not None and not task.done():
                self._orphans.add(task)
                task.add_done_callback(self._orphans.discard)

    async def status(self) -> dict[str, Any]:
        """``Vault.status`` as JSON-ready data (it lists the targets: in a thread too)."""
        report = await asyncio.to_thread(self.vault.status)
        return report.to_dict()


# -- a tiny HTTP/1.1 front (a real service uses its web framework) ---------------------


def sse(item: Mapping[str, Any]) -> bytes:
    """One server-sent event."""
    return f"event: {item['event']}\ndata: {json.dumps(item, default=str)}\n\n".encode()


def _head(status: str, content_type: str) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        "Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
    ).encode()


async def handle(
    service: BackupService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer one request, then close the connection."""
    try:
        request = (await reader.readline()).decode("latin-1").split()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # headers: not needed here
        method, path = [*request, "", ""][:2]
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 3 and parts[0] == "cells" and parts[2] == "backup":
            stream = service.backup(parts[1])
            try:
                first = await anext(stream)
            except ConfigError as exc:
                writer.write(_head("404 Not Found", "application/json"))
                writer.write(json.dumps({"error": exc.message, "hint": exc.hint}).encode())
                return
            except Busy:
                writer.write(_head("409 Conflict", "application/json"))
                writer.write(json.dumps({"error": f"cell {parts[1]} is being backed up"}).encode())
                return
            try:
                writer.write(_head("200 OK", "text/event-stream"))
                writer.write(sse(first))
                await writer.drain()
                async for item in stream:
                    writer.write(sse(item))
                    await writer.drain()
            finally:
                await stream.aclose()
        elif method == "GET" and path == "/status":
            body = await service.status()
            writer.write(_head("200 OK", "application/json"))
            writer.write(json.dumps(body, default=str).encode())
        else:
            writer.write(_head("404 Not Found", "application/json"))
            writer.write(b'{"error": "not found"}')
    finally:
        try:
            await writer.drain()
        finally:
            writer.close()


async def serve(
    service: BackupService, host: str = "127.0.0.1", port: int = 8080
) -> asyncio.Server:
    """Start the HTTP front; ``port=0`` picks a free port (``server.sockets[0]``)."""
    return await asyncio.start_server(lambda r, w: handle(service, r, w), host, port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=Path, help="a JSON file shaped like EXAMPLE_SETTINGS")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    settings = json.loads(args.settings.read_text()) if args.settings else EXAMPLE_SETTINGS
    # The service decides how logs look; cellvault never configures logging itself.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    service = BackupService.from_settings(settings)

    async def run() -> None:
        server = await serve(service, args.host, args.port)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
