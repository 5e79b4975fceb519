"""A webhook receiver on 127.0.0.1 for the alert tests (stdlib ``http.server`` in a thread).

It records every POST (path, query, headers, JSON body) and can be told to
answer slowly (``delay``), with an HTTP status, or with a JSON reply such as
DingTalk's ``{"errcode": 310000, ...}``. Used as a context manager; it stops
itself at the end.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Received", "WebhookServer", "closed_port"]


@dataclass
class Received:
    """One POST the server received."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class WebhookServer:
    """A recording HTTP server; ``url`` is ``http://127.0.0.1:PORT/hook``."""

    #: Seconds to sleep before answering (to test timeouts); at most 5.
    delay: float = 0.0
    status: int = 200
    reply: Any = field(default_factory=lambda: {"errcode": 0, "errmsg": "ok"})
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> WebhookServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                owner.received.append(Received(parts.path, query, dict(self.headers), body))
                if owner.delay:
                    time.sleep(min(owner.delay, 5.0))
                data = json.dumps(owner.reply).encode()
                try:
                    self.send_response(owner.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """The first *count* requests, waiting up to *timeout* seconds for them."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received[:count]


@contextmanager
def running(**kwargs: Any) -> Iterator[WebhookServer]:
    """A started :class:`WebhookServer`, stopped on exit."""
    server = WebhookServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
