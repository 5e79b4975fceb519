"""pytest fixtures for the real test servers.

Loaded by the top-level conftest with ``pytest_plugins = ["tests.servers.fixtures"]``.

Session-scoped servers, started once per test process (and per xdist worker):

* ``oss_server`` -> :class:`~tests.servers.oss.OssServer`
* ``s3_server`` -> :class:`~tests.servers.s3.S3Server` (moto)
* ``rsync_daemon`` -> :class:`~tests.servers.rsyncd.RsyncDaemon`

Function-scoped places, fresh and empty for every test:

* ``oss_bucket`` -> :class:`OssBucket`
* ``s3_bucket`` -> :class:`S3Bucket`
* ``rsync_module`` -> :class:`~tests.servers.rsyncd.RsyncModule`

Each function-scoped fixture first brings its server back if an earlier test
stopped it, and clears injected faults, so a fault test cannot leak into the
next test.

A server whose package or program is missing skips the test with the reason,
except under ``CI=true``, where it fails it: CI must not go green by skipping.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.servers.oss import OssServer
from tests.servers.rsyncd import RsyncDaemon, RsyncModule, rsync_binary
from tests.system_tools import import_module, unavailable

if TYPE_CHECKING:
    from tests.servers.s3 import S3Server

__all__ = [
    "OSS_KEY_ID",
    "OSS_KEY_SECRET",
    "S3_KEY_ID",
    "S3_KEY_SECRET",
    "OssBucket",
    "S3Bucket",
    "oss_bucket",
    "oss_server",
    "require_modules",
    "rsync_daemon",
    "rsync_module",
    "s3_bucket",
    "s3_server",
    "unavailable",
]

OSS_KEY_ID = "cellvault-test-key-id"
OSS_KEY_SECRET = "cellvault-test-key-secret"
S3_KEY_ID = "cellvault-test-key-id"
S3_KEY_SECRET = "cellvault-test-secret"


def require_modules(*names: str, install: str) -> None:
    """Import ``names`` or call :func:`unavailable` saying what to install."""
    for name in names:
        import_module(name, install)


def _unique_name(prefix: str) -> str:
    # Bucket rules of both OSS and S3: 3-63 lower-case letters, digits, '-'.
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# --- OSS ----------------------------------------------------------------------


@dataclass(frozen=True)
class OssBucket:
    """A fresh bucket on the OSS test server, and how to reach it."""

    server: OssServer
    name: str
    key: str = OSS_KEY_ID
    secret: str = OSS_KEY_SECRET

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self.server.endpoint

    @property
    def url(self) -> str:
        """``oss://<bucket>``: the root of the bucket as an fsspec URL."""
        return f"oss://{self.name}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """What ``ossfs.OSSFileSystem`` needs: ``key``, ``secret``, ``endpoint``."""
        return {"key": self.key, "secret": self.secret, "endpoint": self.endpoint}

    def fs(self, **kwargs: Any) -> Any:
        """A new (uncached) ``ossfs.OSSFileSystem`` for this server."""
        import ossfs

        return ossfs.OSSFileSystem(
            **{"skip_instance_cache": True, **self.storage_options, **kwargs}
        )

    def oss2_bucket(self) -> Any:
        """An ``oss2.Bucket`` for this bucket (for what ossfs does not expose)."""
        import oss2

        return oss2.Bucket(oss2.Auth(self.key, self.secret), self.endpoint, self.name)

    def objects(self) -> dict[str, bytes]:
        """What the bucket holds now: key to content."""
        return self.server.objects(self.name)


@pytest.fixture(scope="session")
def oss_server() -> Iterator[OssServer]:
    """The in-memory OSS-protocol server, for the whole session."""
    require_modules("oss2", "ossfs", install="ossfs oss2")
    server = OssServer(OSS_KEY_ID, OSS_KEY_SECRET).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def oss_bucket(oss_server: OssServer) -> Iterator[OssBucket]:
    """An empty bucket of its own, on a running server with no faults."""
    oss_server.start()  # an earlier test may have stopped it
    oss_server.reset_faults()
    oss_server.request_log.clear()
    oss_server.errors.clear()
    bucket = OssBucket(oss_server, _unique_name("cv-oss"))
    oss_server.create_bucket(bucket.name)
    yield bucket
    oss_server.reset_faults()
    oss_server.delete_bucket(bucket.name)
    if oss_server.errors:
        # A 500 InternalError is a bug of the test server, not of cellvault.
        errors, oss_server.errors[:] = list(oss_server.errors), []
        pytest.fail("the OSS test server failed:\n" + "\n".join(errors), pytrace=False)


# --- S3 -----------------------------------------------------------------------


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on moto's S3, and how to reach it."""

    server: S3Server
    name: str

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self.server.endpoint

    @property
    def key(self) -> str:
        """The access key id (moto accepts any)."""
        return self.server.access_key_id

    @property
    def secret(self) -> str:
        """The secret access key (moto accepts any)."""
        return self.server.secret_access_key

    @property
    def url(self) -> str:
        """``s3://<bucket>``."""
        return f"s3://{self.name}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """``key``, ``secret`` and ``client_kwargs`` (endpoint, region) for s3fs."""
        return self.server.storage_options()

    def fs(self, **kwargs: Any) -> Any:
        """A new (uncached) ``s3fs.S3FileSystem`` for this server."""
        import s3fs

        return s3fs.S3FileSystem(**{"skip_instance_cache": True, **self.storage_options, **kwargs})

    def client(self) -> Any:
        """A boto3 S3 client."""
        return self.server.client()

    def objects(self) -> dict[str, bytes]:
        """What the bucket holds now: key to content."""
        return self.server.objects(self.name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 on 127.0.0.1, for the whole session."""
    require_modules("moto.server", "boto3", "s3fs", "flask", install="'moto[server]' boto3 s3fs")
    from tests.servers.s3 import S3Server

    server = S3Server(S3_KEY_ID, S3_KEY_SECRET).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> S3Bucket:
    """An empty bucket of its own; moto's state is reset first."""
    s3_server.start()  # an earlier test may have stopped it
    s3_server.reset()
    bucket = S3Bucket(s3_server, _unique_name("cv-s3"))
    s3_server.create_bucket(bucket.name)
    return bucket


# --- rsync --------------------------------------------------------------------


@pytest.fixture(scope="session")
def rsync_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RsyncDaemon]:
    """``rsync --daemon`` on 127.0.0.1, for the whole session."""
    if rsync_binary() is None:
        unavailable("the rsync program is missing; apt-get install rsync")
    daemon = RsyncDaemon(Path(tmp_path_factory.mktemp("rsyncd"))).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def rsync_module(rsync_daemon: RsyncDaemon) -> Iterator[RsyncModule]:
    """A writable, empty module of its own on the daemon."""
    if not rsync_daemon.running:
        rsync_daemon.start()  # an earlier test may have stopped it
    module = rsync_daemon.add_module(_unique_name("m"))
    yield module
    rsync_daemon.remove_module(module.name)


# --- ssh ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def ssh_server() -> Iterator[Any]:
    """OpenSSH's sshd on 127.0.0.1 with a key of its own, for rsync over ssh."""
    from tests.servers.sshd import SshServer, sshd_binary

    if sshd_binary() is None or shutil.which("ssh") is None:
        unavailable("OpenSSH is missing; apt-get install openssh-server openssh-client")
    server = SshServer().start()
    try:
        yield server
    finally:
        server.stop()
