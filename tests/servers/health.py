"""A health endpoint for ``dr watch`` tests: a primary's gateway that can be up, failing or gone.

``HealthServer().start()`` answers ``GET /healthz`` with :attr:`status`
(200 by default; set 503 to fail it); :meth:`stop` closes the port (the
primary is gone: connections are refused). Every request is counted.
"""

from __future__ import annotations

import http.server
import threading
from typing import Any

import attrs


@attrs.define
class HealthServer:
    status: int = 200
    hits: int = 0
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def start(self) -> HealthServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                self.send_response(owner.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
