"""A small OSS-protocol server for the test suite.

Alibaba Cloud OSS speaks its own dialect of the S3 protocol: the signature is
``Authorization: OSS <AccessKeyId>:<Signature>`` (HMAC-SHA1, "v1"), listings
carry fields S3 lacks (``Type`` on every entry), buckets answer ``?bucketInfo``
and every object carries a CRC-64/ECMA-182 checksum that the ``oss2`` SDK
verifies on upload. moto does not speak this dialect, so the suite brings its
own server: just enough of OSS for ``ossfs`` (which drives ``oss2``, or
``aiooss2`` for ``AioOSSFileSystem``) to work against it unchanged.

What it does, in the shape oss2 2.18 parses:

* path-style addressing only (``http://127.0.0.1:PORT/<bucket>/<key>``); oss2
  switches to path style by itself when the endpoint host is an IP address
  (``oss2.api._determine_endpoint_type``);
* the v1 header signature, checked for every request (``SignatureDoesNotMatch``,
  ``InvalidAccessKeyId``, ``AccessDenied`` for anonymous requests,
  ``RequestTimeTooSkewed``); ossfs builds a plain ``oss2.Auth`` (v1);
* list buckets; create, delete, ``?bucketInfo``, ``?location`` of a bucket;
  a bucket's WORM retention policy (``POST``/``GET ?worm``), enforced: a key
  it keeps is neither deleted nor overwritten (409 ``FileImmutable``);
  list objects v1 (marker) and v2 (continuation token) with prefix, delimiter,
  ``max-keys`` and ``encoding-type=url``; batch delete (``?delete``);
* put, get (ranges, both the legacy and the ``x-oss-range-behavior: standard``
  semantics, ``If-Match`` and friends), head, ``?objectMeta``, delete, copy
  (``x-oss-copy-source``), append (``?append&position=``, which is what
  ``ossfs``' ``open(..., "wb")`` uses), multipart upload (init, upload part,
  complete, abort, list parts, list uploads);
* ``x-oss-forbid-overwrite: true`` (409 ``FileAlreadyExists``), so a target can
  create a file only if it does not exist;
* ``x-oss-hash-crc64ecma`` on every write and read, ``ETag``, ``Last-Modified``,
  ``x-oss-request-id``, ``x-oss-object-type``, and for HEAD errors the
  base64 ``x-oss-err`` header oss2 reads the error code from;
* fault injection: :meth:`OssServer.fail_every`, :meth:`OssServer.fail_next`
  (an OSS error reply or a dropped connection, before or after the request
  took effect), :meth:`OssServer.stop` and :meth:`OssServer.restart` (data
  survives a restart).

Everything lives in memory. The HTTP server runs in daemon threads, binds
127.0.0.1 only and stops with :meth:`OssServer.stop` (the fixtures call it).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import re
import socket
import socketserver
import threading
import time
import traceback
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qsl, quote, unquote, urlsplit

__all__ = ["OssObject", "OssRequestRecord", "OssServer", "crc64ecma"]

#: The owner every bucket and object reports; OSS always names one.
OWNER_ID = "1234567890123456"
OWNER_NAME = "cellvault-test-owner"
#: The region the server claims to be in (``Location`` in bucket info).
LOCATION = "oss-cn-test"

# OSS refuses parts smaller than 100 KiB, except the last one.
_MIN_PART_SIZE = 100 * 1024
_MAX_KEY_BYTES = 1023
_MAX_LIST_KEYS = 1000

# The query parameters that OSS's v1 signature covers ("subresources"),
# exactly as oss2.auth.ProviderAuth lists them: a parameter in this set is part
# of the canonical resource, any other one is not. A mismatch between client
# and server here shows up as SignatureDoesNotMatch, so keep it verbatim.
_SUBRESOURCES = frozenset(
    [
        "response-content-type", "response-content-language",
        "response-cache-control", "logging", "response-content-encoding",
        "acl", "uploadId", "uploads", "partNumber", "group", "link",
        "delete", "website", "location", "objectInfo", "objectMeta",
        "response-expires", "response-content-disposition", "cors", "lifecycle",
        "restore", "qos", "referer", "stat", "bucketInfo", "append", "position",
        "security-token", "live", "comp", "status", "vod", "startTime", "endTime",
        "x-oss-process", "symlink", "callback", "callback-var", "tagging",
        "encryption", "versions", "versioning", "versionId", "policy",
        "requestPayment", "x-oss-traffic-limit", "qosInfo", "asyncFetch",
        "x-oss-request-payer", "sequential", "inventory", "inventoryId",
        "continuation-token", "worm", "wormId", "wormExtend", "replication",
        "replicationLocation", "replicationProgress", "transferAcceleration",
        "cname", "metaQuery", "x-oss-ac-source-ip", "x-oss-ac-subnet-mask",
        "x-oss-ac-vpc-id", "x-oss-ac-forward-allow", "resourceGroup", "style",
        "styleName", "x-oss-async-process", "regionList",
        "x-oss-write-get-object-response",
    ]
)  # fmt: skip

# Subresources this server implements, per kind of resource; anything else in
# _SUBRESOURCES gets NotImplemented instead of being silently misread (a GET
# bucket?acl must not come back as an object listing).
_BUCKET_SUBRESOURCES = frozenset(
    ["bucketInfo", "location", "uploads", "delete", "continuation-token", "worm"]
)
_OBJECT_SUBRESOURCES = frozenset(
    [
        "objectMeta", "uploadId", "uploads", "partNumber", "append", "position",
        "response-content-type", "response-content-language", "response-expires",
        "response-cache-control", "response-content-disposition",
        "response-content-encoding",
    ]
)  # fmt: skip

# Headers stored with an object and given back on GET/HEAD, besides
# Content-Type and the user metadata (x-oss-meta-*).
_STORED_HEADERS = (
    "Cache-Control",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Expires",
)

_DEFAULT_ERROR_CODES = {
    400: "InvalidRequest",
    403: "AccessDenied",
    404: "NotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


# --- CRC-64/ECMA-182 as OSS computes it ---------------------------------------
#
# OSS's x-oss-hash-crc64ecma is CRC-64 with the ECMA-182 polynomial, reflected,
# initial value and final xor all ones (the parameters known as CRC-64/XZ);
# oss2 computes it with crcmod, whose C extension is fast. The pure-Python
# table is only a fallback for a machine where crcmod is missing.

_CRC64_POLY_REFLECTED = 0xC96C5795D7870F42
_CRC64_MASK = 0xFFFFFFFFFFFFFFFF


def _make_crc64_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC64_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64_TABLE = _make_crc64_table()


def _crc64_pure(data: bytes, crc: int = 0) -> int:
    crc ^= _CRC64_MASK
    for byte in data:
        crc = _CRC64_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _CRC64_MASK


try:
    import crcmod  # type: ignore[import-untyped,unused-ignore]

    _crc64_fast = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=_CRC64_MASK)
except ImportError:  # pragma: no cover - crcmod comes with oss2
    _crc64_fast = None


def crc64ecma(data: bytes, crc: int = 0) -> int:
    """Return OSS's CRC-64 of ``data``, continuing from ``crc``.

    ``crc64ecma(b, crc64ecma(a)) == crc64ecma(a + b)``, which is how an
    appendable object's checksum grows.
    """
    if _crc64_fast is not None:
        return int(_crc64_fast(data, crc))
    return _crc64_pure(data, crc)


# --- the stored state ---------------------------------------------------------


@dataclass
class OssObject:
    """One object as the server stores it."""

    data: bytes
    #: Upper-case hex, without the quotes OSS puts around it on the wire.
    etag: str
    #: CRC-64/ECMA-182 of ``data`` (``x-oss-hash-crc64ecma``).
    crc64: int
    #: Seconds since the epoch, whole seconds as OSS reports them.
    last_modified: int
    #: ``Normal`` (put, copy), ``Multipart`` or ``Appendable``.
    object_type: str = "Normal"
    content_type: str = "application/octet-stream"
    #: User metadata (``x-oss-meta-*``) and the standard headers kept with it.
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Length of the object in bytes."""
        return len(self.data)


@dataclass
class OssRequestRecord:
    """What the server saw of one request, for assertions in tests."""

    method: str
    bucket: str
    key: str
    query: dict[str, str]
    #: HTTP status sent back; 0 when the connection was dropped on purpose.
    status: int
    #: The OSS error code sent back, ``""`` on success.
    code: str = ""


@dataclass
class _Part:
    data: bytes
    etag: str
    crc64: int
    last_modified: int


@dataclass
class _Upload:
    key: str
    initiated: int
    content_type: str
    headers: dict[str, str]
    forbid_overwrite: bool
    parts: dict[int, _Part] = field(default_factory=dict)


@dataclass
class _Bucket:
    name: str
    created: int
    objects: dict[str, OssObject] = field(default_factory=dict)
    uploads: dict[str, _Upload] = field(default_factory=dict)
    #: The WORM retention policy (``?worm``): days objects are kept after they
    #: are written; ``None`` when the bucket has none.
    worm_days: int | None = None

    def immutable(self, key: str) -> None:
        """Refuse (409 FileImmutable) to delete or overwrite *key* while the policy keeps it."""
        obj = self.objects.get(key)
        if self.worm_days and obj and time.time() < obj.last_modified + self.worm_days * 86400:
            raise _OssError(
                409, "FileImmutable", "Object is protected by the bucket's retention policy."
            )


@dataclass
class _Fault:
    status: int
    code: str
    message: str
    drop: bool
    after: bool
    methods: frozenset[str] | None
    every: int = 0
    remaining: int = 0
    seen: int = 0

    def fires(self, method: str) -> bool:
        """Count a request and tell whether this fault hits it."""
        if self.methods is not None and method not in self.methods:
            return False
        self.seen += 1
        if self.every:
            return self.seen % self.every == 0
        if self.remaining > 0:
            self.remaining -= 1
            return True
        return False


# --- requests, responses, errors ----------------------------------------------


@dataclass
class _Request:
    method: str
    bucket: str
    key: str
    query: dict[str, str]
    headers: Message
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        value = self.headers.get(name)
        return default if value is None else str(value)


@dataclass
class _Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: For HEAD: the Content-Length to announce without sending a body.
    content_length: int | None = None


class _OssError(Exception):
    """An OSS error reply: status, code, message and extra XML fields."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **fields: str,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.fields = fields

    def response(self, request_id: str) -> _Response:
        xml = _xml(
            "Error",
            [
                ("Code", self.code),
                ("Message", self.message),
                ("RequestId", request_id),
                ("HostId", "127.0.0.1"),
                *self.fields.items(),
            ],
        )
        headers = {"Content-Type": "application/xml", **self.headers}
        # A HEAD reply has no body, so OSS puts the error document in a
        # header; oss2 reads the code from there (object_exists needs it to
        # tell NoSuchBucket from NoSuchKey).
        headers["x-oss-err"] = base64.b64encode(xml).decode("ascii")
        return _Response(self.status, headers, xml)


_XmlValue = str | int | None | list["tuple[str, _XmlValue]"]


def _xml(tag: str, children: Iterable[tuple[str, _XmlValue]], text: str | None = None) -> bytes:
    """Render ``(tag, value)`` pairs, nesting lists, as an OSS XML document."""
    root = ET.Element(tag)
    root.text = text
    _xml_fill(root, children)
    text = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + text).encode("utf-8")


def _xml_fill(parent: ET.Element, children: Iterable[tuple[str, _XmlValue]]) -> None:
    for name, value in children:
        element = ET.SubElement(parent, name)
        if isinstance(value, list):
            _xml_fill(element, value)
        elif value is not None:
            element.text = str(value)


def _iso8601(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(timestamp))


def _http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest().upper()  # noqa: S324 - OSS's ETag


def _unquote_etag(etag: str) -> str:
    return etag.strip().strip('"').upper()


def _owner() -> list[tuple[str, _XmlValue]]:
    return [("ID", OWNER_ID), ("DisplayName", OWNER_NAME)]


def _is_true(value: str) -> bool:
    return value.strip().lower() == "true"


# --- the OSS logic (no HTTP in here) ------------------------------------------


class _Backend:
    """Buckets, objects, uploads and the OSS semantics on top of them."""

    def __init__(
        self, credentials: dict[str, str], security_token: str | None, max_clock_skew: float
    ) -> None:
        self.lock = threading.RLock()
        self.buckets: dict[str, _Bucket] = {}
        self.credentials = credentials
        self.security_token = security_token
        self.max_clock_skew = max_clock_skew
        self.endpoint = ""

    # -- authentication

    def authenticate(self, req: _Request) -> None:
        """Check the v1 signature of ``req`` or raise the error OSS would."""
        authorization = req.header("Authorization")
        if not authorization:
            raise _OssError(
                403,
                "AccessDenied",
                "You have no right to access this object because of bucket acl "
                "(the test server allows no anonymous access).",
            )
        if not authorization.startswith("OSS "):
            raise _OssError(
                400,
                "InvalidArgument",
                "Authorization header method not supported: the cellvault OSS "
                "test server checks OSS signature v1 ('OSS <id>:<signature>') only.",
            )
        key_id, _, signature = authorization[4:].partition(":")
        secret = self.credentials.get(key_id.strip())
        if secret is None:
            raise _OssError(
                403,
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
                OSSAccessKeyId=key_id,
            )
        if self.security_token is not None and (
            req.header("x-oss-security-token") != self.security_token
        ):
            raise _OssError(403, "InvalidSecurityToken", "The security token is invalid.")
        string_to_sign = _string_to_sign(req)
        digest = hmac.new(secret.encode(), string_to_sign, hashlib.sha1).digest()
        expected = base64.b64encode(digest).decode("ascii")
        if not hmac.compare_digest(expected, signature.strip()):
            raise _OssError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature "
                "you provided. Check your key and signing method.",
                OSSAccessKeyId=key_id,
                SignatureProvided=signature,
                StringToSign=string_to_sign.decode("utf-8", "replace"),
            )
        date = req.header("x-oss-date") or req.header("Date")
        try:
            sent = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            raise _OssError(
                403, "AccessDenied", "OSS authentication requires a valid Date."
            ) from None
        if abs(time.time() - sent) > self.max_clock_skew:
            raise _OssError(
                403,
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
                RequestTime=date,
            )

    # -- dispatch

    def dispatch(self, req: _Request) -> _Response:
        """Carry out an authenticated request."""
        with self.lock:
            if not req.bucket:
                if req.method == "GET":
                    return self._list_buckets(req)
                raise _OssError(405, "MethodNotAllowed", "The specified method is not allowed.")
            if not req.key:
                return self._bucket_request(req)
            return self._object_request(req)

    def bucket(self, name: str) -> _Bucket:
        """The bucket called ``name``, or NoSuchBucket."""
        bucket = self.buckets.get(name)
        if bucket is None:
            raise _OssError(
                404, "NoSuchBucket", "The specified bucket does not exist.", BucketName=name
            )
        return bucket

    def _bucket_request(self, req: _Request) -> _Response:
        q, method = req.query, req.method
        _refuse_unknown(q, _BUCKET_SUBRESOURCES)
        if method == "PUT" and not _subresources(q):
            return self._put_bucket(req)
        bucket = self.bucket(req.bucket)
        if "worm" in q:
            return self._worm(bucket, req)
        if method == "GET":
            if "bucketInfo" in q:
                return self._bucket_info(bucket)
            if "location" in q:
                return _Response(body=_xml("LocationConstraint", [], text=LOCATION))
            if "uploads" in q:
                return self._list_uploads(bucket, req)
            if q.get("list-type") == "2":
                return self._list_objects_v2(bucket, req)
            return self._list_objects(bucket, req)
        if method == "POST" and "delete" in q:
            return self._batch_delete(bucket, req)
        if method == "DELETE" and not _subresources(q):
            if bucket.objects:
                raise _OssError(
                    409, "BucketNotEmpty", "The bucket you tried to delete is not empty."
                )
            del self.buckets[bucket.name]
            return _Response(204)
        raise _not_implemented(req)

    def _object_request(self, req: _Request) -> _Response:
        q, method = req.query, req.method
        _refuse_unknown(q, _OBJECT_SUBRESOURCES)
        bucket = self.bucket(req.bucket)
        _check_key(req.key)
        if method in ("GET", "HEAD"):
            if "uploadId" in q and method == "GET":
                return self._list_parts(bucket, req)
            return self._get_object(bucket, req)
        if method == "PUT":
            if "partNumber" in q and "uploadId" in q:
                if req.header("x-oss-copy-source"):
                    raise _not_implemented(req, "UploadPartCopy")
                return self._upload_part(bucket, req)
            if _subresources(q):
                raise _not_implemented(req)
            if req.header("x-oss-copy-source"):
                return self._copy_object(bucket, req)
            return self._put_object(bucket, req)
        if method == "POST":
            if "uploads" in q:
                return self._init_upload(bucket, req)
            if "uploadId" in q:
                return self._complete_upload(bucket, req)
            if "append" in q:
                return self._append_object(bucket, req)
        if method == "DELETE":
            if "uploadId" in q:
                return self._abort_upload(bucket, req)
            if not _subresources(q):
                bucket.immutable(req.key)
                bucket.objects.pop(req.key, None)
                return _Response(204)
        raise _not_implemented(req)

    # -- buckets

    def create_bucket(self, name: str) -> bool:
        """Create ``name``; return False if it already existed."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", name):
            raise ValueError(
                f"invalid OSS bucket name {name!r}: 3-63 characters, lower-case "
                "letters, digits and '-', not starting or ending with '-'"
            )
        with self.lock:
            if name in self.buckets:
                return False
            self.buckets[name] = _Bucket(name, int(time.time()))
            return True

    def _put_bucket(self, req: _Request) -> _Response:
        try:
            created = self.create_bucket(req.bucket)
        except ValueError as err:
            raise _OssError(400, "InvalidBucketName", str(err)) from None
        if not created:
            raise _OssError(
                409, "BucketAlreadyExists", "The requested bucket name is not available."
            )
        return _Response(headers={"Location": f"/{req.bucket}"})

    def _bucket_info(self, bucket: _Bucket) -> _Response:
        host = self.endpoint.split("://", 1)[-1]
        return _Response(
            body=_xml(
                "BucketInfo",
                [
                    (
                        "Bucket",
                        [
                            ("AccessMonitor", "Disabled"),
                            ("CreationDate", _iso8601(bucket.created)),
                            ("ExtranetEndpoint", host),
                            ("IntranetEndpoint", host),
                            ("Location", LOCATION),
                            ("StorageClass", "Standard"),
                            ("TransferAcceleration", "Disabled"),
                            ("CrossRegionReplication", "Disabled"),
                            ("Name", bucket.name),
                            ("ResourceGroupId", "rg-default"),
                            ("Owner", [("DisplayName", OWNER_NAME), ("ID", OWNER_ID)]),
                            ("AccessControlList", [("Grant", "private")]),
                            ("Comment", ""),
                            ("DataRedundancyType", "LRS"),
                            ("ServerSideEncryptionRule", [("SSEAlgorithm", "None")]),
                        ],
                    )
                ],
            )
        )

    def _list_buckets(self, req: _Request) -> _Response:
        prefix = req.query.get("prefix", "")
        marker = req.query.get("marker", "")
        max_keys = _max_keys(req.query, "max-keys")
        names = sorted(n for n in self.buckets if n.startswith(prefix) and n > marker)
        page, truncated = names[:max_keys], len(names) > max_keys
        host = self.endpoint.split("://", 1)[-1]
        children: list[tuple[str, _XmlValue]] = [
            ("Prefix", prefix),
            ("Marker", marker),
            ("MaxKeys", max_keys),
            ("IsTruncated", "true" if truncated else "false"),
        ]
        if truncated:
            children.append(("NextMarker", page[-1]))
        children.append(("Owner", _owner()))
        children.append(
            (
                "Buckets",
                [
                    (
                        "Bucket",
                        [
                            ("CreationDate", _iso8601(self.buckets[n].created)),
                            ("ExtranetEndpoint", host),
                            ("IntranetEndpoint", host),
                            ("Location", LOCATION),
                            ("Name", n),
                            ("Region", LOCATION.removeprefix("oss-")),
                            ("StorageClass", "Standard"),
                        ],
                    )
                    for n in page
                ],
            )
        )
        return _Response(body=_xml("ListAllMyBucketsResult", children))

    # -- listings

    def _list_page(
        self, bucket: _Bucket, prefix: str, delimiter: str, after: str, max_keys: int
    ) -> tuple[list[str], list[str], bool, str]:
        """One page of a listing: keys, common prefixes, truncated, last entry.

        Keys and common prefixes both count against ``max_keys``, and the
        page resumes strictly after ``after``, as OSS does.
        """
        keys: list[str] = []
        prefixes: list[str] = []
        last = ""
        truncated = False
        for key in sorted(k for k in bucket.objects if k.startswith(prefix) and k > after):
            entry, is_prefix = key, False
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    # Even a key that is exactly "dir/" rolls up into a prefix.
                    entry, is_prefix = key[: cut + len(delimiter)], True
                    if entry == last or entry <= after:
                        continue  # the rest of a prefix already reported
            if len(keys) + len(prefixes) == max_keys:
                truncated = True
                break
            (prefixes if is_prefix else keys).append(entry)
            last = entry
        return keys, prefixes, truncated, last

    def _contents(
        self, bucket: _Bucket, keys: list[str], encode: bool, owner: bool
    ) -> list[tuple[str, _XmlValue]]:
        out: list[tuple[str, _XmlValue]] = []
        for key in keys:
            obj = bucket.objects[key]
            entry: list[tuple[str, _XmlValue]] = [
                ("Key", _enc(key, encode)),
                ("LastModified", _iso8601(obj.last_modified)),
                ("ETag", f'"{obj.etag}"'),
                ("Type", obj.object_type),
                ("Size", obj.size),
                ("StorageClass", "Standard"),
            ]
            if owner:
                entry.append(("Owner", _owner()))
            out.append(("Contents", entry))
        return out

    def _list_objects(self, bucket: _Bucket, req: _Request) -> _Response:
        q = req.query
        prefix, delimiter, marker = q.get("prefix", ""), q.get("delimiter", ""), q.get("marker", "")
        max_keys = _max_keys(q, "max-keys")
        encode = q.get("encoding-type") == "url"
        keys, prefixes, truncated, last = self._list_page(
            bucket, prefix, delimiter, marker, max_keys
        )
        children: list[tuple[str, _XmlValue]] = [
            ("Name", bucket.name),
            ("Prefix", _enc(prefix, encode)),
            ("Marker", _enc(marker, encode)),
            ("MaxKeys", max_keys),
            ("Delimiter", _enc(delimiter, encode)),
        ]
        if encode:
            children.append(("EncodingType", "url"))
        children.append(("IsTruncated", "true" if truncated else "false"))
        if truncated:
            children.append(("NextMarker", _enc(last, encode)))
        children += self._contents(bucket, keys, encode, owner=True)
        children += [("CommonPrefixes", [("Prefix", _enc(p, encode))]) for p in prefixes]
        return _Response(body=_xml("ListBucketResult", children))

    def _list_objects_v2(self, bucket: _Bucket, req: _Request) -> _Response:
        q = req.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        token, start_after = q.get("continuation-token", ""), q.get("start-after", "")
        max_keys = _max_keys(q, "max-keys")
        encode = q.get("encoding-type") == "url"
        # The token is opaque to clients; here it is simply the last entry.
        after = max(start_after, token)
        keys, prefixes, truncated, last = self._list_page(
            bucket, prefix, delimiter, after, max_keys
        )
        children: list[tuple[str, _XmlValue]] = [
            ("Name", bucket.name),
            ("Prefix", _enc(prefix, encode)),
        ]
        if start_after:
            children.append(("StartAfter", _enc(start_after, encode)))
        if token:
            children.append(("ContinuationToken", token))
        children += [("MaxKeys", max_keys), ("Delimiter", _enc(delimiter, encode))]
        if encode:
            children.append(("EncodingType", "url"))
        children.append(("IsTruncated", "true" if truncated else "false"))
        if truncated:
            children.append(("NextContinuationToken", _enc(last, encode)))
        children.append(("KeyCount", len(keys) + len(prefixes)))
        children += self._contents(bucket, keys, encode, owner=_is_true(q.get("fetch-owner", "")))
        children += [("CommonPrefixes", [("Prefix", _enc(p, encode))]) for p in prefixes]
        return _Response(body=_xml("ListBucketResult", children))

    def _worm(self, bucket: _Bucket, req: _Request) -> _Response:
        """``POST ?worm`` sets the retention policy (InProgress at once); ``GET ?worm`` reads it."""
        if req.method == "POST":
            root = ET.fromstring(req.body)  # noqa: S314 - the tests' own clients
            bucket.worm_days = int(root.findtext("RetentionPeriodInDays") or "0")
            return _Response(headers={"x-oss-worm-id": f"worm-{bucket.name}"})
        if req.method == "GET" and bucket.worm_days is not None:
            children: list[tuple[str, _XmlValue]] = [
                ("WormId", f"worm-{bucket.name}"),
                ("State", "InProgress"),
                ("RetentionPeriodInDays", str(bucket.worm_days)),
                ("CreationDate", "2026-01-01T00:00:00.000Z"),
            ]
            return _Response(body=_xml("WormConfiguration", children))
        if req.method == "GET":
            raise _OssError(
                404, "NoSuchWORMConfiguration", "The WORM Configuration does not exist."
            )
        raise _not_implemented(req)

    def _batch_delete(self, bucket: _Bucket, req: _Request) -> _Response:
        _check_md5(req)
        try:
            # The XML comes from the tests' own clients, not from strangers.
            root = ET.fromstring(req.body)  # noqa: S314
        except ET.ParseError:
            raise _OssError(
                400, "MalformedXML", "The XML you provided was not well-formed."
            ) from None
        keys = [node.findtext("Key") or "" for node in root.findall("Object")]
        if not keys or len(keys) > _MAX_LIST_KEYS:
            raise _OssError(400, "MalformedXML", "Delete needs 1 to 1000 <Object> entries.")
        quiet = _is_true(root.findtext("Quiet") or "")
        encode = req.query.get("encoding-type") == "url"
        for key in keys:
            bucket.immutable(key)
        for key in keys:
            bucket.objects.pop(key, None)
        children: list[tuple[str, _XmlValue]] = []
        if encode:
            children.append(("EncodingType", "url"))
        if not quiet:
            children += [("Deleted", [("Key", _enc(k, encode))]) for k in keys]
        return _Response(body=_xml("DeleteResult", children))

    # -- objects

    def _object(self, bucket: _Bucket, key: str) -> OssObject:
        obj = bucket.objects.get(key)
        if obj is None:
            raise _OssError(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        return obj

    def _get_object(self, bucket: _Bucket, req: _Request) -> _Response:
        obj = self._object(bucket, req.key)
        headers = _object_headers(obj)
        _check_preconditions(req, obj, headers)
        for name, value in req.query.items():
            if name.startswith("response-"):
                headers[_RESPONSE_OVERRIDES.get(name, name[9:])] = value
        size = obj.size
        standard = req.header("x-oss-range-behavior").lower() == "standard"
        byte_range = _parse_range(req.header("Range"), size, standard)
        if byte_range is None:
            body, status = obj.data, 200
        else:
            start, end = byte_range
            body, status = obj.data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if req.method == "HEAD":
            return _Response(status, headers, b"", content_length=len(body))
        return _Response(status, headers, body)

    def _new_object(
        self, data: bytes, req: _Request, object_type: str, etag: str | None = None
    ) -> OssObject:
        return OssObject(
            data=data,
            etag=etag or _md5_hex(data),
            crc64=crc64ecma(data),
            last_modified=int(time.time()),
            object_type=object_type,
            content_type=req.header("Content-Type") or "application/octet-stream",
            headers=_headers_to_store(req.headers),
        )

    def _forbid_overwrite(self, bucket: _Bucket, key: str, forbidden: bool) -> None:
        if forbidden and key in bucket.objects:
            raise _OssError(
                409,
                "FileAlreadyExists",
                "The object you specified already exists and can not be overwritten.",
                Key=key,
            )

    def _put_object(self, bucket: _Bucket, req: _Request) -> _Response:
        _check_md5(req)
        self._forbid_overwrite(bucket, req.key, _is_true(req.header("x-oss-forbid-overwrite")))
        bucket.immutable(req.key)
        obj = self._new_object(req.body, req, "Normal")
        bucket.objects[req.key] = obj
        return _Response(headers=_write_headers(obj))

    def _copy_object(self, bucket: _Bucket, req: _Request) -> _Response:
        source = req.header("x-oss-copy-source").split("?", 1)[0]
        source_bucket, _, source_key = source.lstrip("/").partition("/")
        src = self._object(self.bucket(source_bucket), unquote(source_key))
        self._forbid_overwrite(bucket, req.key, _is_true(req.header("x-oss-forbid-overwrite")))
        if req.header("x-oss-metadata-directive").upper() == "REPLACE":
            obj = self._new_object(src.data, req, "Normal", etag=src.etag)
        else:
            obj = OssObject(
                src.data,
                src.etag,
                src.crc64,
                int(time.time()),
                "Normal",
                src.content_type,
                dict(src.headers),
            )
        bucket.objects[req.key] = obj
        body = _xml(
            "CopyObjectResult",
            [("ETag", f'"{obj.etag}"'), ("LastModified", _iso8601(obj.last_modified))],
        )
        return _Response(headers=_write_headers(obj), body=body)

    def _append_object(self, bucket: _Bucket, req: _Request) -> _Response:
        _check_md5(req)
        try:
            position = int(req.query.get("position", ""))
        except ValueError:
            raise _OssError(400, "InvalidArgument", "position must be an integer.") from None
        old = bucket.objects.get(req.key)
        length = 0 if old is None else old.size
        if old is not None and old.object_type != "Appendable":
            raise _OssError(
                409,
                "ObjectNotAppendable",
                "The object is not appendable.",
                headers={"x-oss-next-append-position": str(length)},
            )
        if position != length:
            raise _OssError(
                409,
                "PositionNotEqualToLength",
                "Position is not equal to file length.",
                headers={"x-oss-next-append-position": str(length)},
            )
        if old is None:
            obj = self._new_object(req.body, req, "Appendable")
        else:
            data = old.data + req.body
            obj = OssObject(
                data,
                _md5_hex(data),
                crc64ecma(req.body, old.crc64),
                int(time.time()),
                "Appendable",
                old.content_type,
                old.headers,
            )
        bucket.objects[req.key] = obj
        headers = _write_headers(obj)
        headers["x-oss-next-append-position"] = str(obj.size)
        return _Response(headers=headers)

    # -- multipart

    def _upload(self, bucket: _Bucket, req: _Request) -> _Upload:
        upload = bucket.uploads.get(req.query.get("uploadId", ""))
        if upload is None or upload.key != req.key:
            raise _OssError(
                404,
                "NoSuchUpload",
                "The specified upload does not exist. The upload ID may be invalid, "
                "or the upload may have been aborted or completed.",
                UploadId=req.query.get("uploadId", ""),
            )
        return upload

    def _init_upload(self, bucket: _Bucket, req: _Request) -> _Response:
        forbid = _is_true(req.header("x-oss-forbid-overwrite"))
        self._forbid_overwrite(bucket, req.key, forbid)
        upload_id = uuid.uuid4().hex.upper()
        bucket.uploads[upload_id] = _Upload(
            key=req.key,
            initiated=int(time.time()),
            content_type=req.header("Content-Type") or "application/octet-stream",
            headers=_headers_to_store(req.headers),
            forbid_overwrite=forbid,
        )
        encode = req.query.get("encoding-type") == "url"
        children: list[tuple[str, _XmlValue]] = []
        if encode:
            children.append(("EncodingType", "url"))
        children += [
            ("Bucket", bucket.name),
            ("Key", _enc(req.key, encode)),
            ("UploadId", upload_id),
        ]
        return _Response(body=_xml("InitiateMultipartUploadResult", children))

    def _upload_part(self, bucket: _Bucket, req: _Request) -> _Response:
        upload = self._upload(bucket, req)
        try:
            number = int(req.query["partNumber"])
        except ValueError:
            number = 0
        if not 1 <= number <= 10000:
            raise _OssError(
                400, "InvalidArgument", "Part number must be an integer between 1 and 10000."
            )
        _check_md5(req)
        part = _Part(req.body, _md5_hex(req.body), crc64ecma(req.body), int(time.time()))
        upload.parts[number] = part
        return _Response(
            headers={"ETag": f'"{part.etag}"', "x-oss-hash-crc64ecma": str(part.crc64)}
        )

    def _complete_upload(self, bucket: _Bucket, req: _Request) -> _Response:
        upload = self._upload(bucket, req)
        if req.header("x-oss-complete-all").lower() == "yes":
            numbers = sorted(upload.parts)
        else:
            numbers = self._check_parts(upload, req.body)
        parts = [upload.parts[n] for n in numbers]
        for part in parts[:-1]:
            if len(part.data) < _MIN_PART_SIZE:
                raise _OssError(
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed size "
                    "(every part but the last must be at least 100 KiB).",
                )
        forbid = upload.forbid_overwrite or _is_true(req.header("x-oss-forbid-overwrite"))
        self._forbid_overwrite(bucket, req.key, forbid)
        data = b"".join(p.data for p in parts)
        digests = b"".join(bytes.fromhex(p.etag) for p in parts)
        obj = OssObject(
            data=data,
            etag=f"{_md5_hex(digests)}-{len(parts)}",
            crc64=crc64ecma(data),
            last_modified=int(time.time()),
            object_type="Multipart",
            content_type=upload.content_type,
            headers=upload.headers,
        )
        bucket.objects[req.key] = obj
        del bucket.uploads[req.query["uploadId"]]
        body = _xml(
            "CompleteMultipartUploadResult",
            [
                ("Location", f"{self.endpoint}/{bucket.name}/{quote(req.key)}"),
                ("Bucket", bucket.name),
                ("Key", req.key),
                ("ETag", f'"{obj.etag}"'),
            ],
        )
        return _Response(headers=_write_headers(obj), body=body)

    def _check_parts(self, upload: _Upload, body: bytes) -> list[int]:
        try:
            root = ET.fromstring(body)  # noqa: S314 - from the tests' own clients
            wanted = [
                (int(node.findtext("PartNumber") or ""), node.findtext("ETag") or "")
                for node in root.findall("Part")
            ]
        except (ET.ParseError, ValueError):
            raise _OssError(
                400, "MalformedXML", "The XML you provided was not well-formed."
            ) from None
        if not wanted:
            raise _OssError(400, "MalformedXML", "CompleteMultipartUpload lists no parts.")
        numbers = [n for n, _ in wanted]
        if numbers != sorted(set(numbers)):
            raise _OssError(
                400, "InvalidPartOrder", "The list of parts was not in ascending order."
            )
        for number, etag in wanted:
            part = upload.parts.get(number)
            if part is None or _unquote_etag(etag) != part.etag:
                raise _OssError(
                    400,
                    "InvalidPart",
                    "One or more of the specified parts could not be found or the "
                    "specified entity tag might not have matched the part's entity tag.",
                    PartNumber=str(number),
                    ETag=etag,
                )
        return numbers

    def _abort_upload(self, bucket: _Bucket, req: _Request) -> _Response:
        self._upload(bucket, req)
        del bucket.uploads[req.query["uploadId"]]
        return _Response(204)

    def _list_parts(self, bucket: _Bucket, req: _Request) -> _Response:
        upload = self._upload(bucket, req)
        try:
            marker = int(req.query.get("part-number-marker") or 0)
        except ValueError:
            marker = 0
        max_parts = _max_keys(req.query, "max-parts", default=1000)
        numbers = [n for n in sorted(upload.parts) if n > marker]
        page, truncated = numbers[:max_parts], len(numbers) > max_parts
        children: list[tuple[str, _XmlValue]] = [
            ("Bucket", bucket.name),
            ("Key", req.key),
            ("UploadId", req.query["uploadId"]),
            ("PartNumberMarker", marker),
            ("NextPartNumberMarker", page[-1] if page else marker),
            ("MaxParts", max_parts),
            ("IsTruncated", "true" if truncated else "false"),
        ]
        for n in page:
            part = upload.parts[n]
            children.append(
                (
                    "Part",
                    [
                        ("PartNumber", n),
                        ("LastModified", _iso8601(part.last_modified)),
                        ("ETag", f'"{part.etag}"'),
                        ("HashCrc64ecma", str(part.crc64)),
                        ("Size", len(part.data)),
                    ],
                )
            )
        return _Response(body=_xml("ListPartsResult", children))

    def _list_uploads(self, bucket: _Bucket, req: _Request) -> _Response:
        # Enough for finding and aborting stale uploads: no delimiter, no
        # paging (a test bucket never holds a thousand of them).
        prefix = req.query.get("prefix", "")
        encode = req.query.get("encoding-type") == "url"
        uploads = sorted(
            (u.key, uid, u.initiated)
            for uid, u in bucket.uploads.items()
            if u.key.startswith(prefix)
        )
        children: list[tuple[str, _XmlValue]] = [("Bucket", bucket.name)]
        if encode:
            children.append(("EncodingType", "url"))
        children += [
            ("KeyMarker", ""),
            ("UploadIdMarker", ""),
            ("NextKeyMarker", ""),
            ("NextUploadIdMarker", ""),
            ("Delimiter", ""),
            ("Prefix", _enc(prefix, encode)),
            ("MaxUploads", 1000),
            ("IsTruncated", "false"),
        ]
        children += [
            ("Upload", [("Key", _enc(k, encode)), ("UploadId", uid), ("Initiated", _iso8601(t))])
            for k, uid, t in uploads
        ]
        return _Response(body=_xml("ListMultipartUploadsResult", children))


# --- helpers for the OSS logic ------------------------------------------------

_RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


def _string_to_sign(req: _Request) -> bytes:
    """Rebuild what an OSS v1 client signed, as oss2.auth.ProviderAuth does."""
    canonical_headers = sorted(
        (name.lower(), str(value))
        for name, value in req.headers.items()
        if name.lower().startswith("x-oss-")
    )
    headers = b"".join(
        name.encode("utf-8") + b":" + value.encode("utf-8") + b"\n"
        for name, value in canonical_headers
    )
    resource = f"/{req.bucket}/{req.key}" if req.bucket else "/"
    signed = sorted((k, v) for k, v in req.query.items() if k in _SUBRESOURCES)
    if signed:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in signed)
    date = req.header("x-oss-date") or req.header("Date")
    return b"\n".join(
        [
            req.method.encode("utf-8"),
            req.header("Content-MD5").encode("utf-8"),
            req.header("Content-Type").encode("utf-8"),
            date.encode("utf-8"),
            headers + resource.encode("utf-8"),
        ]
    )


def _subresources(query: Mapping[str, str]) -> set[str]:
    return {k for k in query if k in _SUBRESOURCES}


def _refuse_unknown(query: Mapping[str, str], supported: frozenset[str]) -> None:
    unknown = _subresources(query) - supported
    if unknown:
        raise _OssError(
            400,
            "NotImplemented",
            f"The cellvault OSS test server does not implement ?{sorted(unknown)[0]}.",
        )


def _not_implemented(req: _Request, what: str = "") -> _OssError:
    what = what or f"{req.method} with query {sorted(req.query)}"
    return _OssError(
        400, "NotImplemented", f"The cellvault OSS test server does not implement {what}."
    )


def _check_key(key: str) -> None:
    if len(key.encode("utf-8")) > _MAX_KEY_BYTES or key.startswith(("/", "\\")):
        raise _OssError(
            400,
            "InvalidObjectName",
            "The object name must be 1-1023 bytes of UTF-8 and must not start with '/' or '\\'.",
            Key=key,
        )


def _check_md5(req: _Request) -> None:
    sent = req.header("Content-MD5")
    if sent and base64.b64encode(hashlib.md5(req.body).digest()).decode() != sent.strip():  # noqa: S324
        raise _OssError(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")


def _max_keys(query: Mapping[str, str], name: str, default: int = 100) -> int:
    raw = query.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 < value <= _MAX_LIST_KEYS:
        raise _OssError(400, "InvalidArgument", f"{name} must be between 1 and 1000, got {raw!r}.")
    return value


def _enc(value: str, encode: bool) -> str:
    return quote(value, safe="") if encode else value


def _headers_to_store(headers: Message) -> dict[str, str]:
    kept = {}
    for name, value in headers.items():
        if name.lower().startswith("x-oss-meta-"):
            kept[name.lower()] = str(value)
    for name in _STORED_HEADERS:
        if headers.get(name) is not None:
            kept[name] = str(headers[name])
    return kept


def _write_headers(obj: OssObject) -> dict[str, str]:
    return {"ETag": f'"{obj.etag}"', "x-oss-hash-crc64ecma": str(obj.crc64)}


def _object_headers(obj: OssObject) -> dict[str, str]:
    headers = {
        "Content-Type": obj.content_type,
        "ETag": f'"{obj.etag}"',
        "Last-Modified": _http_date(obj.last_modified),
        "Accept-Ranges": "bytes",
        "x-oss-object-type": obj.object_type,
        "x-oss-hash-crc64ecma": str(obj.crc64),
        "x-oss-storage-class": "Standard",
        **obj.headers,
    }
    if obj.object_type == "Appendable":
        headers["x-oss-next-append-position"] = str(obj.size)
    return headers


def _check_preconditions(req: _Request, obj: OssObject, headers: dict[str, str]) -> None:
    etag = obj.etag
    if_match = req.header("If-Match")
    if if_match and if_match.strip() != "*" and _unquote_etag(if_match) != etag:
        raise _OssError(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold.",
            Condition="If-Match",
        )
    unmodified = _parse_http_date(req.header("If-Unmodified-Since"))
    if unmodified is not None and obj.last_modified > unmodified:
        raise _OssError(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold.",
            Condition="If-Unmodified-Since",
        )
    if_none_match = req.header("If-None-Match")
    modified = _parse_http_date(req.header("If-Modified-Since"))
    if (
        if_none_match and (if_none_match.strip() == "*" or _unquote_etag(if_none_match) == etag)
    ) or (modified is not None and obj.last_modified <= modified):
        raise _OssError(304, "NotModified", "Not Modified", headers=headers)


def _parse_http_date(value: str) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _parse_range(value: str, size: int, standard: bool) -> tuple[int, int] | None:
    """Resolve a Range header to inclusive ``(start, end)``, or None for all.

    OSS has two behaviours. By default an unsatisfiable or overlong range is
    ignored and the whole object comes back with 200. With
    ``x-oss-range-behavior: standard`` (which ossfs sends) it follows RFC 7233:
    an end past the object is clipped, a start past it is 416 InvalidRange.
    """
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value or "")
    if not match or (not match[1] and not match[2]):
        return None
    if not match[1]:  # suffix range: the last N bytes
        length = int(match[2])
        if length == 0 or size == 0:
            return _unsatisfiable(size) if standard else None
        return max(size - length, 0), size - 1
    start = int(match[1])
    end = int(match[2]) if match[2] else size - 1
    if end < start:
        return None  # syntactically invalid: ignored, as RFC 7233 says
    if start >= size:
        return _unsatisfiable(size) if standard else None
    if end >= size:
        if not standard:
            return None
        end = size - 1
    return start, end


def _unsatisfiable(size: int) -> tuple[int, int]:
    raise _OssError(
        416,
        "InvalidRange",
        "The requested range cannot be satisfied.",
        headers={"Content-Range": f"bytes */{size}"},
    )


# --- HTTP -----------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    """A threading HTTP server that can cut its open connections on stop.

    ``shutdown()`` alone only ends the accept loop: keep-alive connections
    would go on being served by their threads, so a "stopped" server would
    still answer a client that holds a pooled connection.
    """

    daemon_threads = True
    # server_close() would otherwise join every handler thread, including
    # ones blocked on an idle keep-alive connection.
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: OssServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _OssHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() looks up the FQDN of the address, which can
        # take seconds on a machine with slow DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Close every open client connection, as a dying server would."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _OssHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AliyunOSS"
    sys_version = ""
    # An idle keep-alive connection is closed after this many seconds.
    timeout = 60
    server: _HttpServer

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean; OssServer.request_log has the facts."""

    def do_GET(self) -> None:
        """Serve one request (all methods go the same way)."""
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers: not used by OSS clients
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        owner = self.server.owner
        request_id = uuid.uuid4().hex[:24].upper()
        try:
            # The body is read first, whatever happens next: an error reply
            # that leaves it unread would corrupt the keep-alive connection.
            body = self._read_body()
        except (OSError, ValueError):
            self.close_connection = True
            return
        split = urlsplit(self.path)
        bucket, _, raw_key = split.path.lstrip("/").partition("/")
        req = _Request(
            method=self.command,
            bucket=unquote(bucket),
            key=unquote(raw_key),
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=self.headers,
            body=body,
        )
        fault = owner._take_fault(req.method)
        if fault is not None and not fault.after:
            self._fail(fault, req, request_id)
            return
        try:
            owner._backend.authenticate(req)
            response = owner._backend.dispatch(req)
            code = ""
        except _OssError as err:
            response, code = err.response(request_id), err.code
        except Exception:
            owner.errors.append(traceback.format_exc())
            crash = _OssError(
                500, "InternalError", "The cellvault OSS test server failed; see OssServer.errors."
            )
            response, code = crash.response(request_id), crash.code
        if fault is not None:
            self._fail(fault, req, request_id)  # the request took effect, the reply is lost
            return
        self._send(response, request_id)
        owner._record(req, response.status, code)

    def _fail(self, fault: _Fault, req: _Request, request_id: str) -> None:
        if fault.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            self.server.owner._record(req, 0, "")
            return
        err = _OssError(fault.status, fault.code, fault.message)
        self._send(err.response(request_id), request_id)
        self.server.owner._record(req, fault.status, fault.code)

    def _send(self, response: _Response, request_id: str) -> None:
        head = self.command == "HEAD"
        body = b"" if head else response.body
        length = response.content_length if response.content_length is not None else len(body)
        if head and response.status >= 300:
            length = 0
        self.send_response(response.status)
        for name, value in response.headers.items():
            if head or name.lower() != "x-oss-err":
                self.send_header(name, value)
        self.send_header("x-oss-request-id", request_id)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if body and response.status not in (204, 304):
            self.wfile.write(body)


# --- the public face ----------------------------------------------------------


class OssServer:
    """An in-memory OSS-protocol server on 127.0.0.1 for tests.

    ::

        server = OssServer("test-id", "test-secret").start()
        server.create_bucket("backups")
        fs = ossfs.OSSFileSystem(key="test-id", secret="test-secret",
                                 endpoint=server.endpoint)
        fs.pipe("backups/a.txt", b"hi")
        assert server.objects("backups") == {"a.txt": b"hi"}
        server.stop()

    Data lives in the ``OssServer`` object, so it survives :meth:`stop` and
    :meth:`restart`; :meth:`reset` forgets it.
    """

    def __init__(
        self,
        access_key_id: str = "cellvault-test-key-id",
        access_key_secret: str = "cellvault-test-key-secret",  # noqa: S107 - a test key
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        security_token: str | None = None,
        max_clock_skew: float = 15 * 60,
    ) -> None:
        """Set the server up; :meth:`start` makes it listen.

        ``port=0`` picks a free port at the first start and keeps it for
        restarts. With ``security_token`` set, requests must carry it in
        ``x-oss-security-token`` (what ``oss2.StsAuth`` and ossfs' ``token=``
        send).
        """
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.host = host
        self._port = port
        self._backend = _Backend({access_key_id: access_key_secret}, security_token, max_clock_skew)
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._faults: list[_Fault] = []
        self._faults_lock = threading.Lock()
        #: Every request answered (or dropped), oldest first.
        self.request_log: list[OssRequestRecord] = []
        #: Tracebacks of requests the server failed on (its own bugs); a test
        #: that sees a 500 InternalError should look here.
        self.errors: list[str] = []

    # -- life cycle

    def start(self) -> OssServer:
        """Listen and serve in a daemon thread; return ``self``."""
        if self._httpd is not None:
            return self
        httpd = _HttpServer((self.host, self._port), self)
        self._port = httpd.server_address[1]
        self._backend.endpoint = self.endpoint
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"oss-test-server-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections; the data is kept.

        A client then sees "connection refused" (or a reset, for a request in
        flight), as it would when a real endpoint goes away. Do not call this
        from inside a request.
        """
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.cut_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def restart(self) -> None:
        """Stop and start again on the same port, keeping all data."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._httpd is not None

    def __enter__(self) -> OssServer:
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
        """``http://127.0.0.1:PORT``: the ``endpoint`` for ossfs and oss2."""
        return f"http://{self.host}:{self._port}"

    # -- credentials

    def add_credentials(self, access_key_id: str, access_key_secret: str) -> None:
        """Accept one more key pair (for tests with several identities)."""
        self._backend.credentials[access_key_id] = access_key_secret

    # -- data, for setting up and asserting

    def create_bucket(self, name: str) -> None:
        """Create an empty bucket (no-op if it exists)."""
        self._backend.create_bucket(name)

    def delete_bucket(self, name: str) -> None:
        """Remove a bucket with everything in it (no-op if absent)."""
        with self._backend.lock:
            self._backend.buckets.pop(name, None)

    def buckets(self) -> list[str]:
        """Names of the existing buckets, sorted."""
        with self._backend.lock:
            return sorted(self._backend.buckets)

    def objects(self, bucket: str) -> dict[str, bytes]:
        """A snapshot of ``bucket``: key to content (raises KeyError if absent)."""
        with self._backend.lock:
            return {k: o.data for k, o in sorted(self._backend.buckets[bucket].objects.items())}

    def object(self, bucket: str, key: str) -> OssObject:
        """A copy of the stored object (type, ETag, CRC, headers); KeyError if absent."""
        with self._backend.lock:
            return dataclasses.replace(self._backend.buckets[bucket].objects[key])

    def put(
        self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> None:
        """Store an object directly, bypassing HTTP (to set a test up)."""
        with self._backend.lock:
            self._backend.buckets[bucket].objects[key] = OssObject(
                data, _md5_hex(data), crc64ecma(data), int(time.time()), content_type=content_type
            )

    def corrupt(self, bucket: str, key: str, offset: int = 0) -> None:
        """Flip one byte of a stored object, keeping its ETag and CRC stale.

        That is what bit rot on the storage side looks like to a reader that
        verifies checksums itself.
        """
        with self._backend.lock:
            obj = self._backend.buckets[bucket].objects[key]
            data = bytearray(obj.data)
            data[offset] ^= 0xFF
            obj.data = bytes(data)

    def uploads(self, bucket: str) -> dict[str, str]:
        """Multipart uploads still open in ``bucket``: upload id to key."""
        with self._backend.lock:
            return {uid: u.key for uid, u in self._backend.buckets[bucket].uploads.items()}

    def reset(self) -> None:
        """Forget all buckets, faults, logged requests and errors."""
        with self._backend.lock:
            self._backend.buckets.clear()
        self.reset_faults()
        self.request_log.clear()
        self.errors.clear()

    @property
    def requests(self) -> int:
        """How many requests the server has seen (answered or dropped)."""
        return len(self.request_log)

    # -- faults

    def fail_every(
        self,
        n: int,
        status: int = 503,
        code: str | None = None,
        *,
        methods: Iterable[str] | None = None,
        drop: bool = False,
        after: bool = False,
    ) -> None:
        """Make every ``n``-th request from now on fail.

        The failure is an OSS error reply with ``status`` and ``code``
        (``ServiceUnavailable`` for 503 by default), or with ``drop=True`` a
        connection closed without any reply. With ``after=True`` the request
        takes effect first and only its reply is lost: the case a client's
        retry must survive. ``methods`` (e.g. ``{"PUT", "POST"}``) limits
        which requests count.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        self._add_fault(
            _Fault(
                status,
                code or _DEFAULT_ERROR_CODES.get(status, "InjectedFault"),
                _FAULT_MESSAGE,
                drop,
                after,
                _methods(methods),
                every=n,
            )
        )

    def fail_next(
        self,
        k: int = 1,
        status: int = 503,
        code: str | None = None,
        *,
        methods: Iterable[str] | None = None,
        drop: bool = False,
        after: bool = False,
    ) -> None:
        """Make the next ``k`` requests fail; see :meth:`fail_every`."""
        self._add_fault(
            _Fault(
                status,
                code or _DEFAULT_ERROR_CODES.get(status, "InjectedFault"),
                _FAULT_MESSAGE,
                drop,
                after,
                _methods(methods),
                remaining=k,
            )
        )

    def reset_faults(self) -> None:
        """Remove every injected fault."""
        with self._faults_lock:
            self._faults.clear()

    def _add_fault(self, fault: _Fault) -> None:
        with self._faults_lock:
            self._faults.append(fault)

    def _take_fault(self, method: str) -> _Fault | None:
        with self._faults_lock:
            hit = None
            for fault in self._faults:
                # Every fault counts the request, even when an earlier one
                # already claimed it, so "every n-th" stays true to its word.
                if fault.fires(method) and hit is None:
                    hit = fault
            return hit

    def _record(self, req: _Request, status: int, code: str) -> None:
        self.request_log.append(
            OssRequestRecord(req.method, req.bucket, req.key, dict(req.query), status, code)
        )

    def requests_matching(
        self, method: str | None = None, subresource: str | None = None
    ) -> Iterator[OssRequestRecord]:
        """Logged requests with this method and/or this query parameter."""
        for record in list(self.request_log):
            if (method is None or record.method == method) and (
                subresource is None or subresource in record.query
            ):
                yield record


_FAULT_MESSAGE = "Fault injected by the cellvault OSS test server."


def _methods(methods: Iterable[str] | None) -> frozenset[str] | None:
    return None if methods is None else frozenset(m.upper() for m in methods)
