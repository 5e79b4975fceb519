"""The Aliyun OSS target, natively through ossfs: ``oss://bucket/prefix``.

Options: ``endpoint`` (``https://oss-cn-hangzhou.aliyuncs.com``), ``key`` and
``secret`` (or ``OSS_ACCESS_KEY_ID`` / ``OSS_ACCESS_KEY_SECRET`` through the
configuration). Archives are uploaded from the spooled file with
``put_file`` (one PUT, or oss2's resumable multipart upload for large files):
ossfs's streaming writer cannot write past its first block. Leases use OSS's
``x-oss-forbid-overwrite`` conditional create. ossfs does not retry server
errors, so cellvault's own retries do.
"""

from __future__ import annotations

from typing import Any

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
