"""moto's S3 as a real HTTP server on 127.0.0.1, for s3fs.

moto's ``ThreadedMotoServer`` serves every AWS service moto mocks from one
werkzeug server in a daemon thread; s3fs reaches it over HTTP with
``client_kwargs={"endpoint_url": server.endpoint}``, exactly as it would
reach MinIO or OSS's S3-compatible endpoint.

Two things ``ThreadedMotoServer`` does not do, and :class:`S3Server` adds:

* Going away for real. ``ThreadedMotoServer.stop()`` only ends the accept
  loop: the listening socket stays open (new connections hang in the backlog
  instead of being refused) and keep-alive connections go on being served.
  :meth:`S3Server.stop` closes the socket and cuts open connections, so a
  client mid-upload sees its connection reset and then "connection refused".
  :meth:`S3Server.restart` listens again on the same port; moto's state is
  process-global, so buckets and objects survive (unfinished multipart
  uploads too).
* Resetting state between tests: ``POST /moto-api/reset`` (:meth:`reset`)
  empties every moto backend of this process.

moto accepts any credentials, so tests of wrong secrets belong to the OSS
test server, which checks signatures.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from types import TracebackType
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

__all__ = ["S3Server"]

#: The region the fixtures use; moto needs one, us-east-1 needs no
#: LocationConstraint when creating buckets.
REGION = "us-east-1"


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's handler without the access log (it floods test output)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log nothing for a served request; errors are still logged."""


class _TrackingWSGIServer(ThreadedWSGIServer):
    """werkzeug's threaded server, remembering open connections to cut them."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Reset every open client connection."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _serialized_writes(app: Any) -> Any:
    """*app* with its writes one at a time, as S3 evaluates a conditional write.

    moto checks ``If-None-Match`` / ``If-Match`` and then stores, in two
    steps of a request thread: two racing PUTs could both pass the check.
    S3 itself decides a conditional write atomically; so does this server.
    """
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") not in ("PUT", "POST", "DELETE"):
            return app(environ, start_response)
        with lock:
            return list(app(environ, start_response))

    return serve


class _MotoServer(ThreadedMotoServer):
    """ThreadedMotoServer on a server class that can really go away.

    It overrides moto's ``_server_entry`` (moto 5.x), which builds the
    werkzeug server inside the thread, to build a :class:`_TrackingWSGIServer`.
    """

    def _server_entry(self) -> None:
        app = _serialized_writes(DomainDispatcherApplication(create_backend_app))
        self._server = _TrackingWSGIServer(self._ip_address, self._port, app, handler=_QuietHandler)
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        server = self._server
        super().stop()
        if isinstance(server, _TrackingWSGIServer):
            server.cut_connections()
            server.server_close()


class S3Server:
    """moto S3 on ``127.0.0.1``, with bucket helpers and a real stop.

    ::

        server = S3Server().start()
        server.create_bucket("backups")
        fs = s3fs.S3FileSystem(**server.storage_options())
        fs.pipe("backups/a.txt", b"hi")
        server.stop()
    """

    def __init__(
        self,
        access_key_id: str = "cellvault-test-key-id",
        secret_access_key: str = "cellvault-test-secret",  # noqa: S107 - a test key
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = REGION,
    ) -> None:
        """Set up; :meth:`start` listens (``port=0``: a free port, kept on restart)."""
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.host = host
        self.region = region
        self._port = port
        self._moto: _MotoServer | None = None

    # -- life cycle

    def start(self) -> S3Server:
        """Start moto in a daemon thread; return ``self``."""
        if self._moto is not None:
            return self
        moto = _MotoServer(ip_address=self.host, port=self._port, verbose=False)
        moto.start()
        self._port = moto.get_host_and_port()[1]
        self._moto = moto
        return self

    def stop(self) -> None:
        """Stop listening and reset open connections; moto's state stays."""
        moto, self._moto = self._moto, None
        if moto is not None:
            moto.stop()

    def restart(self) -> None:
        """Stop, then listen again on the same port with the same state."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._moto is not None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: the ``endpoint_url`` for boto3 and s3fs."""
        return f"http://{self.host}:{self._port}"

    # -- clients and state

    def storage_options(self) -> dict[str, Any]:
        """The ``storage_options`` that make s3fs talk to this server."""
        return {
            "key": self.access_key_id,
            "secret": self.secret_access_key,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": self.region},
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server (for setting up and asserting)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket with boto3.

        Not with ``s3fs.mkdir``: against moto that goes through s3fs' own
        region logic and caches, and the test would then depend on it.
        """
        self.client().create_bucket(Bucket=name)

    def objects(self, bucket: str) -> dict[str, bytes]:
        """A snapshot of ``bucket``: key to content."""
        client = self.client()
        out: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out

    def uploads(self, bucket: str) -> dict[str, str]:
        """Multipart uploads still open in ``bucket``: upload id to key."""
        answer = self.client().list_multipart_uploads(Bucket=bucket)
        return {u["UploadId"]: u["Key"] for u in answer.get("Uploads", [])}

    def reset(self) -> None:
        """Empty every moto backend of this process (``/moto-api/reset``)."""
        conn = http.client.HTTPConnection(self.host, self._port, timeout=10)
        try:
            conn.request("POST", "/moto-api/reset", body=b"")
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"moto reset failed: HTTP {answer.status}")
        finally:
            conn.close()

    def require_auth(self, on: bool = True) -> None:
        """Check credentials from the next request on (moto accepts any by default).

        With checks on, only access keys moto's IAM knows are accepted, so any
        key a test makes up is refused with ``InvalidAccessKeyId``.
        """
        conn = http.client.HTTPConnection(self.host, self._port, timeout=10)
        try:
            conn.request("POST", "/moto-api/reset-auth", body=b"0" if on else b"inf")
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"moto reset-auth failed: HTTP {answer.status}")
        finally:
            conn.close()
