"""The S3 target, through s3fs: ``s3://bucket/prefix``.

Credentials come from ``storage_options`` (``key``, ``secret``, ``token``) or
the usual AWS chain (environment, profile, instance role). An S3-compatible
endpoint (MinIO, OSS's S3 endpoint) is ``client_kwargs={"endpoint_url": ...}``.
s3fs uploads large files as multipart uploads, so memory stays bounded; a
completed upload appears whole. Leases use S3's conditional writes: a
PUT with ``If-None-Match: *`` creates a lease only if there is none, and a
PUT with ``If-Match`` on the ETag read replaces a stale lease (or renews
ours) only if no one wrote it since.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import IO

from ..archive import Sidecar
from ..hookspecs import hookimpl
from ..log import get_logger
from ..specs import TargetSpec
from .base import Target
from .fsspec import FsspecTarget

__all__ = ["S3Target"]

log = get_logger(__name__)

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


def _s3_code(exc: BaseException) -> str:
    """The S3 error code behind an s3fs exception (``""`` when there is none)."""
    cause = exc.__cause__
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class S3Target(FsspecTarget):
    """Archives in an S3 bucket (or any S3-compatible store)."""

    #: Part size of multipart uploads; files under twice this go up in one PUT.
    multipart_chunk: int = 50 << 20
    #: HEAD gives the ETag, which is the content's MD5 for a single-part upload.
    stat_checksums = frozenset({"md5"})

    #: PUT with ``If-Match`` on the ETag: a lease is replaced only if unchanged.
    conditional_replace = True

    def create_exclusive(self, key: str, data: bytes) -> bool:
        # PUT with If-None-Match: * (S3's conditional create).
        return self._put_if(key, data, IfNoneMatch="*")

    def read_tagged(self, key: str, limit: int) -> tuple[bytes, str]:
        import fsspec.asyn

        bucket, name, _ = self.fs.split_path(self._path(key))

        async def get() -> tuple[bytes, str]:
            answer = await self.fs._call_s3("get_object", Bucket=bucket, Key=name)
            body = answer["Body"]
            try:
                # Bounded: a planted giant object is read no further than a lease can be.
                data = await body.read(limit + 1)
            finally:
                body.close()
            return bytes(data), str(answer["ETag"])

        return fsspec.asyn.sync(self.fs.loop, get)  # type: ignore[no-any-return]

    def replace_if(self, key: str, data: bytes, tag: str) -> bool:
        return self._put_if(key, data, IfMatch=tag)

    def delete_if(self, key: str, tag: str) -> bool:
        # DELETE with If-Match on the ETag: a lease taken over meanwhile stays.
        bucket, name, _ = self.fs.split_path(self._path(key))
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=name, IfMatch=tag)
        except FileNotFoundError:
            return False  # gone already
        except OSError as exc:
            if _s3_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        finally:
            self.fs.invalidate_cache(self._path(key))
        return True

    def _put_if(self, key: str, data: bytes, **condition: str) -> bool:
        """One PUT of *data* at *key* under *condition*; ``False`` when the condition fails."""
        bucket, name, _ = self.fs.split_path(self._path(key))
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=name, Body=data, **condition)
        except FileExistsError:
            return False  # If-None-Match: the key exists
        except FileNotFoundError:
            if "IfMatch" in condition:
                return False  # If-Match on a key that is gone
            raise
        except OSError as exc:
            # 412 PreconditionFailed; 409 ConditionalRequestConflict (another
            # conditional write of the same key in flight: it wins, we lose).
            if _s3_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        self.fs.invalidate_cache(self._path(key))
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

    # -- Object Lock (cellvault.immutability) -----------------------------

    def protect(self, sidecar: Sidecar, keys: list[str]) -> None:
        """Lock *keys* until the archive's date; with its sidecar, extend its chain's locks."""
        if self.object_lock is None:
            return
        until = self.object_lock.retain_until(sidecar)
        # The store compares with its own clock: a date already past locks nothing.
        if until is None or until <= dt.datetime.now(dt.UTC):
            return
        if self.sidecar_key(sidecar.id) in keys and sidecar.meta.chain:
            # The chain rule: what this incremental needs is kept at least as long.
            needed = {str(i) for i in sidecar.meta.chain}
            keys = keys + [
                f"{sidecar.id.cell}/{e.name}"
                for e in self.retrying(self.list, sidecar.id.cell)
                if not e.is_dir and e.name.split(".", 1)[0] in needed
            ]
        for key in keys:
            self.retrying(self._retain, key, until)

    def _retain(self, key: str, until: dt.datetime) -> None:
        """Lock *key* until *until*, unless it is locked as long already (a lock only grows)."""
        assert self.object_lock is not None
        current = self._retention(key)
        if current is not None and current >= until:
            return
        bucket, name, _ = self.fs.split_path(self._path(key))
        self.fs.call_s3(
            "put_object_retention",
            Bucket=bucket,
            Key=name,
            Retention={"Mode": self.object_lock.mode.upper(), "RetainUntilDate": until},
        )
        log.info("archive.locked", target=self.name, key=key, until=until.isoformat())

    def _retention(self, key: str) -> dt.datetime | None:
        """The retain-until date of *key*'s current version (``None``: not locked, or absent)."""
        bucket, name, _ = self.fs.split_path(self._path(key))
        try:
            # HEAD says it (x-amz-object-lock-retain-until-date) with s3:GetObjectRetention.
            head = self.fs.call_s3("head_object", Bucket=bucket, Key=name)
        except FileNotFoundError:
            return None
        until = head.get("ObjectLockRetainUntilDate")
        return until.astimezone(dt.UTC) if isinstance(until, dt.datetime) else None

    def locked_until(self, sidecar: Sidecar) -> dt.datetime | None:
        """The latest retain-until date of the archive's objects, if still to come."""
        now = dt.datetime.now(dt.UTC)
        ident = sidecar.id
        keys = [
            f"{ident.cell}/{sidecar.data_name}",
            self.manifest_key(ident),
            self.sidecar_key(ident),
        ]
        with self.guard(f"read the Object Lock retention of archive {ident}"):
            dates = [d for d in (self.retrying(self._retention, k) for k in keys) if d is not None]
        latest = max(dates, default=None)
        return latest if latest is not None and latest > now else None

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
