"""The S3 target, through s3fs: ``s3://bucket/prefix``.

Credentials come from ``storage_options`` (``key``, ``secret``, ``token``) or
the usual AWS chain (environment, profile, instance role). An S3-compatible
endpoint (MinIO, OSS's S3 endpoint) is ``client_kwargs={"endpoint_url": ...}``.
s3fs uploads large files as multipart uploads, so memory stays bounded; a
completed upload appears whole. Leases use S3's conditional create
(``If-None-Match``), which s3fs exposes as the ``"xb"`` mode.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO

from ..hookspecs import hookimpl
from ..specs import TargetSpec
from .base import Target
from .fsspec import FsspecTarget

__all__ = ["S3Target"]

# botocore's connection failures are not OSErrors; name them by class.
_TRANSIENT_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ResponseStreamingError",
    }
)


class S3Target(FsspecTarget):
    """Archives in an S3 bucket (or any S3-compatible store)."""

    #: Part size of multipart uploads; files under twice this go up in one PUT.
    multipart_chunk: int = 50 << 20
    #: HEAD gives the ETag, which is the content's MD5 for a single-part upload.
    stat_checksums = frozenset({"md5"})

    def create_exclusive(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    def put_file(self, local: Path, key: str) -> None:
        # s3fs streams the file in parts: memory stays bounded by the part size.
        self.fs.put_file(str(local), self._path(key), chunksize=self.multipart_chunk)

    def put_stream(self, key: str, stream: IO[bytes]) -> bool:
        # A multipart upload of part-size blocks: memory stays bounded by one part.
        f = self.fs.open(self._path(key), "wb", block_size=self.multipart_chunk)
        try:
            for block in iter(lambda: stream.read(1 << 20), b""):
                f.write(block)
        except BaseException:
            # Abort the multipart upload, and keep close() (here or at garbage
            # collection) from completing what was written so far.
            with contextlib.suppress(Exception):
                f.discard()
            f.closed = True
            raise
        f.close()
        return True

    def is_transient(self, exc: BaseException) -> bool:
        if type(exc).__name__ in _TRANSIENT_NAMES:
            return True
        return super().is_transient(exc)


@hookimpl
def cellvault_make_target(spec: TargetSpec) -> Target | None:
    """``s3://`` URLs."""
    if spec.scheme in ("s3", "s3a"):
        return S3Target(spec)
    return None
