"""The Aliyun OSS target, natively through ossfs: ``oss://bucket/prefix``.

Options: ``endpoint`` (``https://oss-cn-hangzhou.aliyuncs.com``), ``key`` and
``secret`` (or ``OSS_ACCESS_KEY_ID`` / ``OSS_ACCESS_KEY_SECRET`` through the
configuration). Archives are uploaded from the spooled file with
``put_file`` (one PUT, or oss2's resumable multipart upload for large files):
ossfs's streaming writer cannot write past its first block. Leases use OSS's
``x-oss-forbid-overwrite`` conditional create, for the lease and for the claim
that guards each change of it (OSS has no ``If-Match`` on a write: see
:mod:`cellvault.lock`). ossfs does not retry server
errors, so cellvault's own retries do.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..archive import Sidecar
from ..hookspecs import hookimpl
from ..specs import TargetSpec
from .base import ObjectInfo, ObjectStat, Target
from .fsspec import FsspecTarget

__all__ = ["OssTarget"]


def _oss_error(exc: Exception) -> OSError:
    """oss2's exceptions as OSErrors that say what OSS said (never a credential)."""
    code = getattr(exc, "code", "") or type(exc).__name__
    status = getattr(exc, "status", "")
    message = getattr(exc, "message", "") or ""
    error = OSError(f"OSS answered {status} {code}: {message}".strip())
    error.status = status  # type: ignore[attr-defined]
    return error


class OssTarget(FsspecTarget):
    """Archives in an OSS bucket."""

    #: HEAD gives ``x-oss-hash-crc64ecma``, the CRC-64 of the whole object
    #: (multipart uploads included).
    stat_checksums = frozenset({"crc64ecma"})

    def stat(self, key: str) -> ObjectStat:
        import oss2

        bucket, name = self.fs.split_path(self._path(key))
        try:
            # ossfs's info() lists the folder and drops the CRC: ask OSS directly.
            head = self.fs._call_oss("head_object", name, bucket=bucket)
        except FileNotFoundError:
            raise
        except oss2.exceptions.OssError as exc:
            if getattr(exc, "status", None) == 404:
                raise FileNotFoundError(key) from None
            raise _oss_error(exc) from None
        checksums = {}
        if head.server_crc is not None:
            checksums["crc64ecma"] = str(head.server_crc)
        return ObjectStat(int(head.content_length or 0), checksums)

    def worm_days(self) -> int | None:
        """The days the bucket's WORM retention policy keeps objects (``None``: it has none).

        Read once per target object. An ``InProgress`` policy protects as a
        ``Locked`` one does (it can still be deleted within 24 hours).
        """
        if "_worm" not in self.__dict__:
            import oss2

            bucket = self.fs.split_path(self._path(""))[0]
            try:
                found = self.fs._call_oss("get_bucket_worm", bucket=bucket)
                days = int(found.retention_period_days or 0) or None
            except (FileNotFoundError, oss2.exceptions.NoSuchWORMConfiguration):
                days = None
            except oss2.exceptions.OssError as exc:
                raise _oss_error(exc) from None
            except OSError as exc:
                if "NoSuchWORMConfiguration" not in str(exc):
                    raise
                days = None
            self.__dict__["_worm"] = days
        days = self.__dict__["_worm"]
        return days if isinstance(days, int) else None

    def locked_until(self, sidecar: Sidecar) -> dt.datetime | None:
        """Until when the bucket's WORM policy keeps the archive's newest object, if still to come."""
        with self.guard(f"read the retention policy of {self.spec.display()}"):
            days = self.retrying(self.worm_days)
        if days is None:
            return None
        ident = sidecar.id
        keys = [
            f"{ident.cell}/{sidecar.data_name}",
            self.manifest_key(ident),
            self.sidecar_key(ident),
        ]
        with self.guard(f"read when archive {ident} was written"):
            written = [w for w in (self.retrying(self._written, k) for k in keys) if w]
        if not written:
            return None
        until = dt.datetime.fromtimestamp(max(written), dt.UTC) + dt.timedelta(days=days)
        return until if until > dt.datetime.now(dt.UTC) else None

    def _written(self, key: str) -> int | None:
        """When *key* was last written (seconds since the epoch); ``None``: it is absent."""
        import oss2

        bucket, name = self.fs.split_path(self._path(key))
        try:
            return int(self.fs._call_oss("head_object", name, bucket=bucket).last_modified)
        except FileNotFoundError:
            return None
        except oss2.exceptions.OssError as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise _oss_error(exc) from None

    def create_exclusive(self, key: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._path(key), data, headers={"x-oss-forbid-overwrite": "true"})
        except OSError as exc:
            if "FileAlreadyExists" in str(exc):
                return False
            raise
        return True

    def list(self, folder: str) -> list[ObjectInfo]:
        import oss2

        try:
            return super().list(folder)
        except oss2.exceptions.OssError as exc:
            if getattr(exc, "code", "") == "NoSuchKey":
                return []
            raise _oss_error(exc) from None

    def is_transient(self, exc: BaseException) -> bool:
        status: Any = getattr(exc, "status", None)
        if isinstance(status, int) and (status >= 500 or status == 429):
            return True
        text = str(exc)
        if any(
            code in text
            for code in ("ServiceUnavailable", "InternalError", "RequestTimeout", " 503 ", " 500 ")
        ):
            return True
        return super().is_transient(exc)


@hookimpl
def cellvault_make_target(spec: TargetSpec) -> Target | None:
    """``oss://`` URLs."""
    if spec.scheme == "oss":
        return OssTarget(spec)
    return None
