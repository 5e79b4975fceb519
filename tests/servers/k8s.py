"""A small fake Kubernetes API server: the real paths of Services and Ingresses, GET and PATCH.

Enough for the ``kubernetes`` client's ``read_namespaced_*`` and
``patch_namespaced_*`` calls: objects live in :attr:`FakeKubeApi.objects`
keyed by their API path; a PATCH is applied as a JSON merge patch (maps
merged, lists replaced: what a strategic merge does to a selector and to an
Ingress's rules when the whole list is sent) and recorded in
:attr:`patches` with its content type. :meth:`kubeconfig` writes a
kubeconfig file that points the client at it.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any

import attrs

SERVICES = "/api/v1/namespaces/{ns}/services/{name}"
INGRESSES = "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses/{name}"


def merge(base: Any, patch: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return patch
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


@attrs.define
class FakeKubeApi:
    objects: dict[str, dict[str, Any]] = attrs.Factory(dict)
    patches: list[tuple[str, str, dict[str, Any]]] = attrs.Factory(list)
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None

    def add_service(self, ns: str, name: str, selector: dict[str, str]) -> str:
        path = SERVICES.format(ns=ns, name=name)
        self.objects[path] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, "ports": [{"port": 443, "targetPort": 8443}]},
        }
        return path

    def add_ingress(self, ns: str, name: str, service: str) -> str:
        path = INGRESSES.format(ns=ns, name=name)
        backend = {"service": {"name": service, "port": {"number": 443}}}
        self.objects[path] = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "rules": [
                    {
                        "host": "paas.example.com",
                        "http": {
                            "paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]
                        },
                    }
                ]
            },
        }
        return path

    def start(self) -> FakeKubeApi:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _missing(self) -> None:
                self._send(
                    404,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "code": 404,
                        "reason": "NotFound",
                        "message": f"{self.path} not found",
                    },
                )

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in owner.objects:
                    self._send(200, owner.objects[path])
                else:
                    self._missing()

            def do_PATCH(self) -> None:
                path = self.path.split("?")[0]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if path not in owner.objects:
                    self._missing()
                    return
                owner.patches.append((path, self.headers.get("Content-Type", ""), body))
                owner.objects[path] = merge(owner.objects[path], body)
                self._send(200, owner.objects[path])

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

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
                    ],
                    "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                    "current-context": "fake",
                }
            )
        )
        return path
