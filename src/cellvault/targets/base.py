"""The storage target interface.

A :class:`Target` is a place archives are kept. A target type implements a few
primitives on keys (relative POSIX paths under the target's root): put a whole
file or bytes atomically, create a key only if it is absent, open a key for
streaming reads, list a folder, delete. Everything cellvault does with archives
(commit order, listing committed archives, locks, debris) is built here on
those primitives, the same for every target.

Layout on every target::

    <root>/<cell>/<id>.tar.zst              the archive data
    <root>/<cell>/<id>.manifest.json.zst    a copy of its manifest
    <root>/<cell>/<id>.json                 the sidecar, written last: the commit
    <root>/.locks/<cell>.lock               the lease of the run writing the cell
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import datetime as dt
import errno
import io
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import attrs
import tenacity
import zstandard

from ..archive import ArchiveId, Sidecar
from ..cell import is_cell_name
from ..codec import HashingReader
from ..crypt import open_small
from ..errors import (
    ArchiveCorrupt,
    ArchiveNotFound,
    CellvaultError,
    SignatureError,
    TargetError,
)
from ..immutability import ObjectLock
from ..log import get_logger, redact_text
from ..manifest import Manifest
from ..modes import private_opener
from ..signing import SigningKeys
from ..specs import TargetSpec
from ..trust import MAX_SIDECAR_BYTES, manifest_limit

__all__ = ["ObjectInfo", "ObjectStat", "Target"]

log = get_logger(__name__)

SIDECAR_SUFFIX = ".json"
MANIFEST_SUFFIX = ".manifest.json.zst"
LOCKS = ".locks"
_T = TypeVar("_T")
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.EAGAIN,
        errno.EHOSTUNREACH,
    }
)


@attrs.frozen
class ObjectInfo:
    """One entry of a listing."""

    name: str
    size: int
    is_dir: bool = False


@attrs.frozen
class ObjectStat:
    """What a store says about one object without reading it (a HEAD request).

    *checksums* are the store's own checksums of the content, by kind:
    ``crc64ecma`` (OSS's ``x-oss-hash-crc64ecma``), ``md5`` (an S3 ETag of a
    single-part upload). Empty when the store gives none cheaply.
    """

    size: int
    checksums: Mapping[str, str] = attrs.field(factory=dict)


class Target(abc.ABC):
    """A place archives are kept.

    Subclasses implement the primitives (the abstract methods). They raise
    :class:`FileNotFoundError` for a missing key and may raise anything else
    for other failures: the archive-level methods turn those into
    :class:`TargetError` naming the target, with secrets masked.
    """

    #: How often a primitive that fails with a transient error is tried, in all.
    retry_attempts: int = 4
    #: The longest a primitive is retried, in seconds.
    retry_timeout: float = 60.0
    #: The checksum kinds :meth:`stat` can report for this target type. A
    #: backup records these in the sidecar so a quick verify can compare them.
    stat_checksums: frozenset[str] = frozenset()
    #: The public keys every sidecar read from this target is checked against
    #: (:mod:`cellvault.signing`); the vault that makes the target sets it.
    signing_keys: SigningKeys = SigningKeys()
    #: Object Lock retention for what is stored (:mod:`cellvault.immutability`),
    #: applied by target types that can (:meth:`protect`); set by the vault.
    object_lock: ObjectLock | None = None

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.spec.display()}>"

    # -- primitives ------------------------------------------------------

    @abc.abstractmethod
    def put_file(self, local: Path, key: str) -> None:
        """Store the local file *local* at *key*; readers see all of it or nothing."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store *data* at *key*, replacing what is there, atomically."""

    @abc.abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Store *data* at *key* only if *key* does not exist; tell whether it did."""

    @abc.abstractmethod
    def open_read(self, key: str) -> IO[bytes]:
        """Open *key* for a streaming read."""

    @abc.abstractmethod
    def list(self, folder: str) -> builtins.list[ObjectInfo]:
        """The entries directly inside *folder* (``""`` is the root); empty when absent."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete *key*; a missing key is not an error."""

    def read_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def read_bounded(self, key: str, limit: int) -> bytes:
        """At most *limit* + 1 bytes of *key*: enough to tell an object over *limit*.

        For small records read from a target (leases, DR records): a planted
        giant object costs no more memory than the limit.
        """
        with self.open_read(key) as f:
            return f.read(limit + 1)

    #: Whether :meth:`replace_if` is a compare-and-swap of the store itself
    #: (S3's ``If-Match``). Leases on other targets are taken over, renewed
    #: and released through a claim made with :meth:`create_exclusive` (see
    #: :mod:`cellvault.lock`).
    conditional_replace: bool = False

    def read_tagged(self, key: str, limit: int) -> tuple[bytes, str]:
        """At most *limit* + 1 bytes of *key*, and the tag of that very version.

        The tag (an ETag) changes whenever *key* is written; it is what
        :meth:`replace_if` compares. Only for target types with
        :attr:`conditional_replace`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no conditional replace")

    def replace_if(self, key: str, data: bytes, tag: str) -> bool:
        """Store *data* at *key* only if its tag is still *tag*; tell whether it did.

        ``False`` when *key* changed or is gone since the tag was read. Only
        for target types with :attr:`conditional_replace`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no conditional replace")

    def delete_if(self, key: str, tag: str) -> bool:
        """Delete *key* only if its tag is still *tag*; tell whether it did.

        ``False`` when *key* changed or is gone since the tag was read. Only
        for target types with :attr:`conditional_replace`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no conditional delete")

    def fetch(self, key: str, local: Path) -> None:
        """Copy *key* to the local file *local*."""
        with self.open_read(key) as src, open(local, "wb", opener=private_opener) as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)

    def put_stream(self, key: str, stream: IO[bytes]) -> bool:
        """Store what *stream* yields, read to its end in bounded memory, at *key*.

        Return ``False`` at once, having read nothing, when this target type
        cannot write a stream (the default): the caller then spools to a local
        file and uses :meth:`put_file`. If reading *stream* raises, nothing
        appears at *key* (``cellvault.dr`` checks an archive's sha256 as it
        streams this way, and raises at its end on a mismatch).
        """
        return False

    def stat(self, key: str) -> ObjectStat:
        """Size (and the store's own checksums) of *key*, without reading it.

        Raises :class:`FileNotFoundError` when *key* is absent. The default
        lists the key's folder; target types with a cheaper HEAD override it.
        """
        folder, _, name = key.rpartition("/")
        for entry in self.list(folder):
            if entry.name == name and not entry.is_dir:
                return ObjectStat(entry.size)
        raise FileNotFoundError(key)

    def check(self) -> None:
        """Make sure the target can be reached; raise :class:`TargetError` if not."""
        with self.guard("reach"):
            self.retrying(self.list, "")

    # -- errors and retries ----------------------------------------------

    def is_transient(self, exc: BaseException) -> bool:
        """Tell whether *exc* may go away if the same call is made again.

        Connection resets and refusals, timeouts and 5xx answers are; a missing
        key, a refused credential or a full disk are not. Target types refine
        this for their client's exceptions.
        """
        if isinstance(exc, FileNotFoundError | PermissionError | FileExistsError | CellvaultError):
            return False
        if isinstance(exc, ConnectionError | TimeoutError):
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
        return isinstance(status, int) and (status >= 500 or status == 429)

    def retrying(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Call the primitive *fn*, retrying transient errors with exponential backoff and jitter."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "target.retry",
                target=self.name,
                call=getattr(fn, "__name__", "?"),
                attempt=state.attempt_number,
                error=redact_text(f"{type(exc).__name__}: {exc}"),
            )

        retryer = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self.is_transient),
            stop=tenacity.stop_after_attempt(self.retry_attempts)
            | tenacity.stop_after_delay(self.retry_timeout),
            wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.3),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retryer(fn, *args, **kwargs)

    @contextlib.contextmanager
    def guard(
        self, action: str, hint: str | None = None, *, missing_ok: bool = False
    ) -> Iterator[None]:
        """Turn what a primitive raises into a :class:`TargetError` naming this target.

        With *missing_ok*, :class:`FileNotFoundError` passes through for the
        caller to handle (a key that is not there); otherwise it is an error
        too: a write that finds no bucket or folder.
        """
        try:
            yield
        except CellvaultError:
            raise
        except FileNotFoundError as exc:
            if missing_ok:
                raise
            detail = redact_text(f"{type(exc).__name__}: {exc}")
            raise TargetError(
                f"cannot {action}: the bucket or folder does not exist ({detail})",
                target=self.name,
                hint=f"create {self.spec.display()} or fix the target's URL",
            ) from None
        except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
            detail = redact_text(f"{type(exc).__name__}: {exc}")
            raise TargetError(
                f"cannot {action} ({detail})",
                target=self.name,
                hint=hint
                or f"check that {self.spec.display()} is reachable and writable, "
                "and the credentials",
            ) from None

    # -- archives --------------------------------------------------------

    @staticmethod
    def data_key(ident: ArchiveId, suffix: str) -> str:
        return f"{ident.cell}/{ident}{suffix}"

    @staticmethod
    def sidecar_key(ident: ArchiveId) -> str:
        return f"{ident.cell}/{ident}{SIDECAR_SUFFIX}"

    @staticmethod
    def manifest_key(ident: ArchiveId) -> str:
        return f"{ident.cell}/{ident}{MANIFEST_SUFFIX}"

    def store(
        self,
        data: Path,
        manifest: Path,
        sidecar: Sidecar,
        *,
        before_commit: Callable[[], object] | None = None,
    ) -> None:
        """Store an archive: data, then the manifest copy, then the sidecar that commits it.

        *before_commit* is called between the two (DR fencing checks there);
        if it raises, nothing is committed: what was written is debris.
        """
        ident = sidecar.id
        with self.guard(f"store archive {ident}"):
            self.retrying(self.put_file, data, f"{ident.cell}/{sidecar.data_name}")
            self.retrying(self.put_file, manifest, self.manifest_key(ident))
            self.protect(sidecar, [f"{ident.cell}/{sidecar.data_name}", self.manifest_key(ident)])
        if before_commit is not None:
            before_commit()
        with self.guard(f"commit archive {ident}"):
            self.retrying(self.put_bytes, self.sidecar_key(ident), sidecar.to_json())
            self.protect(sidecar, [self.sidecar_key(ident)])

    def protect(self, sidecar: Sidecar, keys: builtins.list[str]) -> None:
        """Lock *keys* of *sidecar*'s archive against deletion, as :attr:`object_lock` says.

        Called after the data and manifest copy are stored, then after the
        sidecar (whose call also applies the chain rule). The default locks
        nothing: target types that can lock objects override it.
        """
        return None

    def locked_until(self, sidecar: Sidecar) -> dt.datetime | None:
        """Until when the store refuses to delete *sidecar*'s archive (``None``: it does not)."""
        return None

    def unlock_expired(self, sidecar: Sidecar) -> None:
        """Lift what still protects *sidecar*'s archive though its lock's date has passed.

        Called before an archive's objects are rewritten in place (``rekey``),
        after :meth:`locked_until` said it is no longer locked. The default does
        nothing: object stores end a retention by themselves.
        """
        return None

    def uncommit(self, sidecar: Sidecar) -> None:
        """Delete the sidecar this run just wrote, whose copy failed its check after the store.

        The archive stops counting (its data is debris). A target that locks
        what it stores unlocks that sidecar first: it was never a good copy.
        """
        self.delete(self.sidecar_key(sidecar.id))

    def cells(self) -> builtins.list[str]:
        """The cells whose folder on this target holds at least one committed archive.

        Other folders (the seed's ``logs/``, a NAS's ``lost+found``, a
        cell's folder with nothing committed yet) are not cells.
        """
        with self.guard("list cells"):
            folders = [
                e.name
                for e in self.retrying(self.list, "")
                if e.is_dir and not e.name.startswith(".") and is_cell_name(e.name)
            ]
        return sorted(name for name in folders if self.archive_ids(name))

    def archive_ids(self, cell: str) -> builtins.list[ArchiveId]:
        """The ids of the committed archives of *cell*, oldest first, from a listing alone."""
        with self.guard(f"list archives of cell {cell}"):
            entries = self.retrying(self.list, cell)
        ids = [
            ArchiveId.parse(e.name.removesuffix(SIDECAR_SUFFIX))
            for e in entries
            if _is_sidecar(e.name)
        ]
        return sorted(ids)

    def archives(
        self, cell: str, listing: Sequence[ObjectInfo] | None = None
    ) -> builtins.list[Sidecar]:
        """The committed archives of *cell*, oldest first (those whose sidecar exists).

        What the listing refuses is reported (:meth:`distrust`); :meth:`distrusted`
        and :meth:`refused` then name, for *cell*, what this listing refused.
        *listing*: the cell folder's listing, when the caller made one already
        (``self.list(cell)``); otherwise it is listed here.
        """
        if listing is None:
            with self.guard(f"list archives of cell {cell}"):
                listing = self.retrying(self.list, cell)
        self._forget_refused(cell)
        out: builtins.list[Any] = []
        for entry in listing:
            stem = entry.name.removesuffix(SIDECAR_SUFFIX)
            if entry.name == stem or not ArchiveId.is_id(stem) or stem.endswith(".manifest"):
                continue
            if entry.is_dir or entry.size > MAX_SIDECAR_BYTES:
                self.distrust(f"{cell}/{entry.name}", f"{entry.size} bytes, not a sidecar")
                continue
            try:
                with self.guard(f"read sidecar {entry.name}", missing_ok=True):
                    raw = self.retrying(self.read_bytes, f"{cell}/{entry.name}")
            except FileNotFoundError:
                continue  # pruned while we listed
            try:
                out.append(self.trusted(Sidecar.from_json(raw, name=stem, cell=cell)))
            except SignatureError as exc:
                self.__dict__.setdefault("_refused", {})[ArchiveId.parse(stem)] = str(exc)
                self.distrust(f"{cell}/{entry.name}", str(exc))
            except ArchiveCorrupt as exc:
                self.distrust(f"{cell}/{entry.name}", str(exc))
        out.sort(key=lambda s: s.id)
        return out

    def distrust(self, key: str, error: str, event: str = "sidecar.unreadable") -> None:
        """Report an object of this target that fails its checks; it is then left alone.

        *event* names the kind of object in the log: ``sidecar.unreadable``
        for an archive's sidecar, manifest copy or ``meta.json``,
        ``dr.record_unreadable`` for a DR record (an epoch, a site record).

        The warning is logged once per process for each object and error (the
        same object is met again by every listing); :meth:`distrusted` keeps
        what this target object met, for ``status`` and the alerts. No command
        reads, writes or deletes anything on the word of such an object (see
        :mod:`cellvault.trust`).
        """
        seen: dict[str, str] = self.__dict__.setdefault("_distrusted", {})
        seen[key] = error
        where = (self.spec.url, key, error)
        with _DISTRUSTED_LOCK:
            logged = where in _DISTRUSTED
            _DISTRUSTED.add(where)
        if not logged:
            log.warning(event, target=self.name, key=key, error=error)

    def _forget_refused(self, cell: str) -> None:
        """Drop what earlier listings of *cell* refused (a forged sidecar since removed)."""
        distrusted: dict[str, str] = self.__dict__.get("_distrusted", {})
        for key in [k for k in list(distrusted) if k.startswith(f"{cell}/")]:
            distrusted.pop(key, None)
        refused: dict[ArchiveId, str] = self.__dict__.get("_refused", {})
        for ident in [i for i in list(refused) if i.cell == cell]:
            refused.pop(ident, None)

    def refused(self, cell: str) -> dict[ArchiveId, str]:
        """The archives of *cell* whose signature a listing refused, and why."""
        seen: dict[ArchiveId, str] = self.__dict__.get("_refused", {})
        return {i: why for i, why in seen.items() if i.cell == cell}

    def distrusted(self) -> builtins.list[tuple[str, str, str]]:
        """(target, key, error) of every object of this target :meth:`distrust` met."""
        seen: dict[str, str] = self.__dict__.get("_distrusted", {})
        return sorted((self.name, key, error) for key, error in seen.items())

    def sidecar(self, ident: ArchiveId) -> Sidecar:
        """The sidecar of *ident*; :class:`ArchiveNotFound` when it is not committed here."""
        try:
            with self.guard(f"read sidecar of {ident}", missing_ok=True):
                raw = self.retrying(self.read_bytes, self.sidecar_key(ident))
        except FileNotFoundError:
            raise ArchiveNotFound(f"archive {ident} is not on target {self.name}") from None
        return self.trusted(Sidecar.from_json(raw, name=str(ident), cell=ident.cell))

    def trusted(self, sidecar: Sidecar) -> Sidecar:
        """*sidecar*, once its signature is checked against :attr:`signing_keys`.

        Raises :class:`~cellvault.errors.SignatureError` (an
        :class:`ArchiveCorrupt`) naming this target when it is refused.
        """
        self.signing_keys.check(sidecar, target=self.name)
        return sidecar

    @contextlib.contextmanager
    def open_archive(self, sidecar: Sidecar) -> Iterator[IO[bytes]]:
        """Open the data of a committed archive for a streaming read."""
        key = f"{sidecar.id.cell}/{sidecar.data_name}"
        try:
            with self.guard(f"open archive {sidecar.id}", missing_ok=True):
                f = self.retrying(self.open_read, key)
        except FileNotFoundError:
            raise ArchiveCorrupt(
                "data is missing although the sidecar exists",
                archive=str(sidecar.id),
                target=self.name,
                hint="the archive cannot be restored from this target; use another target",
            ) from None
        with f:
            yield cast(IO[bytes], _GuardedRead(f, self, f"read archive {sidecar.id}"))

    def manifest(self, sidecar: Sidecar) -> Manifest:
        """The manifest of a committed archive, from its compressed copy.

        Read as a stream: neither the copy nor its text is ever whole in memory.
        """
        try:
            with self.guard(f"read manifest of {sidecar.id}", missing_ok=True):
                f = self.retrying(self.open_read, self.manifest_key(sidecar.id))
        except FileNotFoundError:
            raise ArchiveCorrupt(
                "manifest copy is missing", archive=str(sidecar.id), target=self.name
            ) from None
        with f, self.guard(f"read manifest of {sidecar.id}"):
            return self._read_manifest(sidecar, f)

    def _read_manifest(self, sidecar: Sidecar, f: IO[bytes]) -> Manifest:
        if sidecar.manifest_sha256 is not None:
            # The copy's digest (signed with the sidecar): checked once it is read.
            hashing = HashingReader(f)
            manifest = self._parse_manifest(sidecar, cast(IO[bytes], hashing))
            while hashing.read(1 << 20):
                pass
            if hashing.digest.hexdigest() != sidecar.manifest_sha256:
                raise ArchiveCorrupt(
                    "manifest copy does not match the sha256 its sidecar records "
                    "(replaced or damaged)",
                    archive=str(sidecar.id),
                    target=self.name,
                    hint="restore from another target; the archive's own manifest is in its data",
                )
            return manifest
        return self._parse_manifest(sidecar, f)

    def _parse_manifest(self, sidecar: Sidecar, f: IO[bytes]) -> Manifest:
        limit = manifest_limit(sidecar.files, sidecar.manifest_size)
        if sidecar.encryption is not None:
            # A sealed copy is opened whole (it is the compressed manifest, a small
            # fraction of the archive), then read as a stream like a plain one.
            try:
                f = io.BytesIO(open_small(f.read(), sidecar))
            except ArchiveCorrupt as exc:
                raise ArchiveCorrupt(
                    exc.detail, archive=str(sidecar.id), target=self.name
                ) from None
        text = _BoundedZstd(f, limit, str(sidecar.id))
        try:
            return Manifest.read(text, archive=str(sidecar.id))
        except ArchiveCorrupt as exc:
            if text.failure is None:
                raise
            raise ArchiveCorrupt(text.failure, archive=str(sidecar.id), target=self.name) from exc

    def parse_manifest(self, sidecar: Sidecar, raw: bytes | IO[bytes]) -> Manifest:
        """The manifest in *raw*, the stored (compressed) manifest copy of *sidecar* (or a file of it)."""
        return self._read_manifest(sidecar, io.BytesIO(raw) if isinstance(raw, bytes) else raw)

    def delete_archive(self, sidecar: Sidecar) -> None:
        """Delete an archive: the sidecar first (it stops counting), then its data."""
        ident = sidecar.id
        with self.guard(f"delete archive {ident}"):
            self.retrying(self.delete, self.sidecar_key(ident))
            self.retrying(self.delete, self.manifest_key(ident))
            self.retrying(self.delete, f"{ident.cell}/{sidecar.data_name}")

    def debris(self, cell: str) -> builtins.list[str]:
        """Keys under *cell* that belong to no committed archive (interrupted runs).

        Only call this while holding the cell's lock: a run in progress leaves
        exactly such keys until it commits.
        """
        with self.guard(f"list archives of cell {cell}"):
            entries = self.retrying(self.list, cell)
        names = {e.name for e in entries if not e.is_dir}
        committed = {n.removesuffix(SIDECAR_SUFFIX) for n in names if _is_sidecar(n)}
        out: builtins.list[Any] = []
        for name in sorted(names):
            if _is_sidecar(name):
                continue
            stem = _archive_stem(name)
            if stem is not None and stem not in committed:
                out.append(f"{cell}/{name}")
        return out

    def _deletable(self, key: str) -> None:
        """Make the debris *key* deletable before :meth:`clear_debris` deletes it (here: nothing)."""
        return

    def clear_debris(self, cell: str) -> builtins.list[str]:
        """Delete what :meth:`debris` finds; return the deleted keys."""
        keys = self.debris(cell)
        for key in keys:
            with self.guard(f"delete debris {key}"):
                self._deletable(key)
                self.retrying(self.delete, key)
            log.info("debris.removed", target=self.name, key=key)
        return keys


# What :meth:`Target.distrust` logged already: (target URL, key, error).
_DISTRUSTED: set[tuple[str, str, str]] = set()
_DISTRUSTED_LOCK = threading.Lock()


def _is_sidecar(name: str) -> bool:
    stem = name.removesuffix(SIDECAR_SUFFIX)
    return stem != name and ArchiveId.is_id(stem)


def _archive_stem(name: str) -> str | None:
    """The archive id a data, manifest or temporary file name belongs to, if any."""
    match = _OWNED.fullmatch(name)
    return match["stem"] if match else None


# Ours: "<id>.<suffix>", and temporary ".<id>.<suffix>.<tmp>" names; any other
# file in a cell's folder is left alone.
_OWNED = re.compile(r"\.?(?P<stem>cell_[a-z0-9][a-z0-9_-]*_\d{8}_\d{6})\..*")


class _GuardedRead:
    """A stored archive read through :meth:`Target.guard`.

    A read that fails in the middle (a disk's I/O error, a connection
    reset) is then the target's error, naming it, as a failed open is:
    not "truncated or damaged", which the bytes read may not be.
    """

    def __init__(self, raw: IO[bytes], target: Target, action: str) -> None:
        self._raw = raw
        self._target = target
        self._action = action

    def read(self, size: int = -1, /) -> bytes:
        with self._target.guard(self._action):
            return self._raw.read(size)

    def readable(self) -> bool:
        return True


class _BoundedZstd:
    """The text of a zstd stream, failing once it would expand past *limit* bytes.

    A failure is raised as :class:`ArchiveCorrupt` and kept in :attr:`failure`
    (the manifest reader names the manifest; the caller names the copy).
    """

    def __init__(self, raw: IO[bytes], limit: int, archive: str) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(raw)
        self._limit = limit
        self._archive = archive
        self._count = 0
        self.failure: str | None = None

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = 1 << 20
        try:
            block = self._reader.read(min(size, self._limit + 1 - self._count))
        except zstandard.ZstdError as exc:
            self.failure = f"manifest copy does not decompress ({exc})"
            raise ArchiveCorrupt(self.failure, archive=self._archive) from None
        self._count += len(block)
        if self._count > self._limit:
            self.failure = f"manifest copy expands past the {self._limit} bytes declared for it"
            raise ArchiveCorrupt(
                self.failure,
                archive=self._archive,
                hint="the object was altered or damaged; it is ignored",
            )
        return block
