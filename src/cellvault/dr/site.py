"""Disaster recovery: push archives to object storage, pull them on a standby site, fail over and back.

The seed's section 5: the primary site pushes its backups to object storage
(``sync_backup_to_dr.sh``), a standby site pulls them every few minutes
(``DR_PULL_ONLY=1``) and, when the primary is lost, restores them, writes a
failover marker and switches traffic (``dr_failover.sh`` with ``DR_SITE_ID``).
A :class:`Site` is one side of that pair: a :class:`~cellvault.Vault` whose
first target is the site's own backup directory and whose other targets (or
``DR_TARGET``) are the shared object storage.

Copies keep the guarantees of a backup: each archive is copied data first,
then its manifest copy, then its sidecar, which commits it; the data's sha256
is computed while it streams and compared with the sidecar before the sidecar
is written, so a destination never lists an archive that is not whole. A copy
holds the cell's lease on the destination (purpose ``sync``); what a killed
copy left behind is cleared under that lease and the copy starts again. Only
what is missing is copied, oldest first (a chain is whole at every moment),
and only what the destination's retention policy would keep.

What lives where on the object storage, beside the cells' folders::

    <root>/.dr/failover.json            the failover marker, while a failover is in effect
    <root>/.dr/history/<stamp>_*.json   markers of finished failovers and failbacks
    <root>/.dr/sites/<site>.json        what each site held at its last sync

and on each site, ``<backup_dir>/.cellvault/dr/failover.json`` (the marker as
this site last wrote or saw it) and ``<backup_dir>/.cellvault/spool/sync/``
(archives being pulled from a store that cannot be written to as a stream).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, cast

import attrs
import zstandard

from ..archive import ArchiveId, Selector, Sidecar
from ..cell import validate_cell_name
from ..config import Config
from ..errors import ArchiveCorrupt, CellvaultError, ConfigError, DrError, LockHeld, TargetError
from ..events import Event
from ..extract import verify_archive
from ..lock import Lease
from ..log import get_logger, redact_text
from ..manifest import Manifest
from ..report import (
    BackupReport,
    Failure,
    RestoreReport,
    VerifyReport,
    VerifyResult,
)
from ..retention import plan
from ..targets.base import SIDECAR_SUFFIX, Target
from ..vault import Vault

__all__ = [
    "CellLag",
    "CellSync",
    "DrError",
    "DrSettings",
    "FailbackReport",
    "FailoverMarker",
    "FailoverReport",
    "Handback",
    "Holding",
    "HookOutcome",
    "PrepareReport",
    "Site",
    "SiteRecord",
    "StatusReport",
    "SyncReport",
    "TargetCheck",
    "TargetView",
    "copy_cell",
]

log = get_logger(__name__)

#: Keys on the object storage (relative to each target's root).
MARKER_KEY = ".dr/failover.json"
HISTORY_FOLDER = ".dr/history"
SITES_FOLDER = ".dr/sites"
#: Version of the marker and site-record JSON.
DR_FORMAT = 1

_SITE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_BLOCK = 1 << 20
#: A copy cut by a transient error starts again this many times in all.
COPY_ATTEMPTS = 3


# -- settings ----------------------------------------------------------------


def _site_id(value: str, *, field: str = "site id") -> str:
    if not _SITE_ID.fullmatch(value):
        raise ConfigError(
            f"invalid {field} {value!r}",
            hint="a site id is 1-63 characters of a-z, 0-9, '_' and '-', e.g. 'primary' or 'dr'",
        )
    return value


def _host_site_id() -> str:
    """This host's short name as a site id (the default when DR_SITE_ID is unset)."""
    name = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-_") or "site"
    return name[:63]


def _flag(key: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{key}={raw!r} is not a yes/no value", hint="use 1 or 0")


@attrs.frozen
class DrSettings:
    """The seed's ``DR_*`` variables: which site this is, and how ``sync`` runs here.

    * ``DR_SITE_ID``: this site's id (``primary``, ``dr``); default: the host name.
    * ``DR_PULL_ONLY=1``: ``cellvault sync`` pulls from the object storage into
      this site's backup directory instead of pushing (the standby's mode).
    * ``DR_TARGET``: the object-storage targets of the DR pair, comma-separated
      (default: every configured target but the first).

    In a TOML file they are ``dr_site_id``, ``dr_pull_only`` and ``dr_targets``.
    """

    site_id: str | None = None
    pull_only: bool = False
    storage: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.site_id is not None:
            _site_id(self.site_id, field="DR_SITE_ID")

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> DrSettings:
        """The settings of *config*, with ``DR_*`` variables of *environ* (if given) winning."""
        base = cls(config.dr_site_id, config.dr_pull_only, tuple(config.dr_targets))
        return base.merged(environ) if environ is not None else base

    @classmethod
    def from_env(cls, *sources: Mapping[str, str]) -> DrSettings:
        """Read ``DR_*`` from *sources*, later ones winning."""
        settings = cls()
        for source in sources:
            settings = settings.merged(source)
        return settings

    def merged(self, environ: Mapping[str, str]) -> DrSettings:
        """These settings with the ``DR_*`` variables set in *environ* applied over them."""
        changes: dict[str, Any] = {}
        if environ.get("DR_SITE_ID", "").strip():
            changes["site_id"] = environ["DR_SITE_ID"].strip()
        if "DR_PULL_ONLY" in environ:
            changes["pull_only"] = _flag("DR_PULL_ONLY", environ["DR_PULL_ONLY"])
        if environ.get("DR_TARGET", "").strip():
            changes["storage"] = tuple(
                t.strip() for t in environ["DR_TARGET"].replace(" ", ",").split(",") if t.strip()
            )
        return attrs.evolve(self, **changes) if changes else self


# -- values --------------------------------------------------------------------


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any) -> dt.datetime:
    when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _plain(value: Any) -> Any:
    """*value* as JSON-ready data: times in UTC with a ``Z``, reports with their ``ok``."""
    if isinstance(value, dt.datetime):
        return _iso(value)
    if attrs.has(type(value)):
        names = [f.name for f in attrs.fields(type(value))]
        out = {name: _plain(getattr(value, name)) for name in names}
        if "ok" not in names and isinstance(getattr(type(value), "ok", None), property):
            out["ok"] = value.ok
        return out
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


class _Value:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``--json`` prints)."""
        out: dict[str, Any] = _plain(self)
        return out


@attrs.frozen
class Handback(_Value):
    """The active site's hand-back at the start of a failback: what it pushed, and when."""

    site_id: str
    host: str
    at: dt.datetime
    #: cell -> the archive the primary must restore (the newest the active site made).
    archives: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Handback:
        return cls(
            site_id=str(data["site_id"]),
            host=str(data.get("host", "")),
            at=_parse_time(data["at"]),
            archives={str(k): str(v) for k, v in dict(data.get("archives") or {}).items()},
        )


@attrs.frozen
class FailoverMarker(_Value):
    """Which site serves, since when, and with what data.

    Written to every object-storage target (``.dr/failover.json``) and to the
    site's ``<backup_dir>/.cellvault/dr/failover.json`` by a failover; while
    it exists, the site it names is the active one. *event* is ``failover``
    (a standby took over) or ``failback`` (the marker handed to the
    ``cellvault_failover`` hooks when the primary takes over again; that one
    is kept in the history only).
    """

    site_id: str
    at: dt.datetime
    host: str
    event: str = "failover"
    #: The site that was active before.
    previous_site: str | None = None
    #: cell -> archive restored into the cells' paths by cellvault (empty if none).
    restored: Mapping[str, str] = attrs.field(factory=dict)
    #: cell -> newest archive fully verified on the site at the switch.
    verified: Mapping[str, str] = attrs.field(factory=dict)
    #: Set by the active site when it hands back (the first step of a failback).
    handback: Handback | None = None
    forced: bool = False
    format: int = DR_FORMAT

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, *, where: str = "failover marker") -> FailoverMarker:
        """Parse a marker; :class:`DrError` when it is unusable."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            return cls(
                site_id=str(data["site_id"]),
                at=_parse_time(data["at"]),
                host=str(data.get("host", "")),
                event=str(data.get("event", "failover")),
                previous_site=data.get("previous_site"),
                restored={str(k): str(v) for k, v in dict(data.get("restored") or {}).items()},
                verified={str(k): str(v) for k, v in dict(data.get("verified") or {}).items()},
                handback=Handback.from_dict(data["handback"]) if data.get("handback") else None,
                forced=bool(data.get("forced", False)),
                format=int(data.get("format", DR_FORMAT)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DrError(
                f"the {where} is unusable ({type(exc).__name__}: {exc})",
                hint="inspect it; delete it only if you know which site serves",
            ) from None


@attrs.frozen
class Holding(_Value):
    """What one target holds of one cell: committed archives, their bytes, the newest."""

    count: int = 0
    bytes: int = 0
    newest: str | None = None
    newest_at: dt.datetime | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Holding:
        return cls(
            count=int(data.get("count", 0)),
            bytes=int(data.get("bytes", 0)),
            newest=data.get("newest"),
            newest_at=_parse_time(data["newest_at"]) if data.get("newest_at") else None,
        )


@attrs.frozen
class SiteRecord(_Value):
    """What a site held at its last DR step, as it recorded on the object storage."""

    site_id: str
    host: str
    at: dt.datetime
    #: The step that wrote it: push, pull, prepare, failover, handback, failback.
    action: str
    cells: Mapping[str, Holding] = attrs.field(factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> SiteRecord:
        data = json.loads(raw)
        return cls(
            site_id=str(data["site_id"]),
            host=str(data.get("host", "")),
            at=_parse_time(data["at"]),
            action=str(data.get("action", "")),
            cells={str(k): Holding.from_dict(v) for k, v in dict(data.get("cells") or {}).items()},
        )


# -- reports -------------------------------------------------------------------


@attrs.frozen
class CellSync(_Value):
    """Copying one cell's archives from one target to another."""

    cell: str
    source: str
    target: str
    ok: bool
    #: Archives copied by this run, oldest first.
    copied: tuple[str, ...] = ()
    #: Archives of the source already committed on the target.
    present: int = 0
    #: Missing archives left out because the target's retention would not keep them.
    skipped: tuple[str, ...] = ()
    #: What interrupted runs had left on the target (and in the spool), removed.
    debris: tuple[str, ...] = ()
    bytes: int = 0
    duration: float = 0.0
    #: Set when another run holds the cell's lease on the target: the cell was left to it.
    locked: str | None = None
    stage: str | None = None
    error: str | None = None


@attrs.frozen
class SyncReport(_Value):
    """A push or a pull: every cell, every source and destination."""

    mode: str
    site: str
    cells: tuple[CellSync, ...]
    duration: float
    #: Problems that did not fail the sync (a site record that could not be written).
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cells)

    @property
    def copied(self) -> list[str]:
        """Every archive this run copied."""
        return [a for c in self.cells for a in c.copied]

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.cells)

    @property
    def locked(self) -> list[CellSync]:
        return [c for c in self.cells if c.locked]


@attrs.frozen
class TargetCheck(_Value):
    """Whether a target can be reached, listed, written and read (a probe object)."""

    target: str
    ok: bool
    error: str | None = None
    duration: float = 0.0


@attrs.frozen
class PrepareReport(_Value):
    """Preparing a site: its directories, its targets, a pull, what it holds."""

    site: str
    created: tuple[str, ...]
    checks: tuple[TargetCheck, ...]
    pull: SyncReport | None
    #: cell -> what the site's own backup directory holds after the pull.
    holdings: Mapping[str, Holding]
    duration: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and (self.pull is None or self.pull.ok)


@attrs.frozen
class HookOutcome(_Value):
    """One ``cellvault_failover`` hook implementation's result."""

    plugin: str
    ok: bool
    error: str | None = None


@attrs.frozen
class FailoverReport(_Value):
    """A failover on the standby: pull, checks, verify, restore, marker, hooks."""

    site: str
    ok: bool
    marker: FailoverMarker | None = None
    pull: SyncReport | None = None
    verify: VerifyReport | None = None
    restore: RestoreReport | None = None
    #: Where the marker was written: target names, and ``local``.
    marker_written: tuple[str, ...] = ()
    hooks: tuple[HookOutcome, ...] = ()
    warnings: tuple[str, ...] = ()
    #: The manual switch steps (DNS, SLB, Ingress) to follow.
    steps: tuple[str, ...] = ()
    error: str | None = None
    duration: float = 0.0


@attrs.frozen
class FailbackReport(_Value):
    """One step of a failback.

    *step* ``handback`` runs on the active (standby) site: a final backup,
    a push, and the hand-back recorded in the marker. *step* ``takeover``
    runs on the recovered primary: a pull, a verify, the restore of what was
    handed back, the marker cleared, the hooks.
    """

    site: str
    step: str
    ok: bool
    marker: FailoverMarker | None = None
    backup: BackupReport | None = None
    push: SyncReport | None = None
    pull: SyncReport | None = None
    verify: VerifyReport | None = None
    restore: RestoreReport | None = None
    hooks: tuple[HookOutcome, ...] = ()
    #: Where the marker was written (handback) or cleared (takeover).
    marker_written: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()
    error: str | None = None
    duration: float = 0.0


@attrs.frozen
class TargetView(_Value):
    """What one target holds, per cell, as a status sees it."""

    target: str
    reachable: bool
    cells: Mapping[str, Holding] = attrs.field(factory=dict)
    error: str | None = None


@attrs.frozen
class CellLag(_Value):
    """How far this site's backup directory is from one object-storage target, for one cell."""

    cell: str
    target: str
    #: Newest archive here and there.
    local: str | None
    remote: str | None
    #: Newest there minus newest here, in seconds (positive: this site is behind).
    lag_seconds: float | None
    #: Archives there newer than the newest here (what a pull would bring).
    behind: int
    #: Archives here newer than the newest there (what a push would bring).
    ahead: int


@attrs.frozen
class StatusReport(_Value):
    """Which site is active, and how far each site and target is behind."""

    site: str
    #: The site that serves: the marker's, or ``None`` when no failover is in effect.
    active: str | None
    marker: FailoverMarker | None
    #: Where the marker was read: a target name, ``local``, or ``None``.
    marker_source: str | None
    targets: tuple[TargetView, ...]
    lag: tuple[CellLag, ...]
    #: What every site recorded at its last DR step (the other site's view, too).
    sites: tuple[SiteRecord, ...]
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(t.reachable for t in self.targets)


# -- copying archives ------------------------------------------------------------------


class _ReadFailed(Exception):
    """Internal: reading the source failed (as opposed to writing the destination)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))


class _Truncated(ArchiveCorrupt):
    """Internal: the source's stream ended early (a cut connection): worth reading again."""


class _CheckingReader:
    """Read an archive's data from its source, hashing it; check it at the end.

    When the stream ends, its size and sha256 are compared with the sidecar
    and :class:`ArchiveCorrupt` is raised on a mismatch: raised inside the
    destination's write, before that write completes, so a mismatching copy
    never appears whole.
    """

    def __init__(
        self,
        raw: IO[bytes],
        sidecar: Sidecar,
        source: str,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.raw = raw
        self.sidecar = sidecar
        self.source = source
        self.progress = progress
        self.digest = hashlib.sha256()
        self.count = 0
        self.checked = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            data = self.raw.read(-1 if size is None else size)
        except Exception as exc:  # classified and reported by the caller
            raise _ReadFailed(exc) from exc
        if data:
            self.digest.update(data)
            self.count += len(data)
            if self.count > self.sidecar.size:
                raise self._corrupt(
                    f"is longer than the {self.sidecar.size} bytes its sidecar says"
                )
            if self.progress is not None:
                self.progress(self.count)
        elif not self.checked:
            self.checked = True
            if self.count != self.sidecar.size:
                raise self._corrupt(
                    f"ended after {self.count} of the {self.sidecar.size} bytes its sidecar says",
                    truncated=True,
                )
            if self.digest.hexdigest() != self.sidecar.sha256:
                raise self._corrupt("does not match the sha256 of its sidecar")
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _corrupt(self, why: str, *, truncated: bool = False) -> ArchiveCorrupt:
        kind = _Truncated if truncated else ArchiveCorrupt
        return kind(
            f"the data read {why}; nothing was committed",
            archive=str(self.sidecar.id),
            target=self.source,
            hint="verify the source (cellvault verify --target "
            f"{self.source}); a copy cut short is simply run again",
        )


def _read_small(target: Target, key: str, what: str, ident: ArchiveId) -> bytes:
    try:
        with target.guard(f"read {what} of {ident}", missing_ok=True):
            return target.retrying(target.read_bytes, key)
    except FileNotFoundError:
        raise ArchiveCorrupt(
            f"its {what} is missing although its sidecar exists",
            archive=str(ident),
            target=target.name,
            hint="the archive cannot be copied from this target",
        ) from None


def _check_manifest(raw: bytes, sidecar: Sidecar, source: str) -> None:
    try:
        body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    except zstandard.ZstdError as exc:
        raise ArchiveCorrupt(
            f"its manifest copy does not decompress ({exc})", archive=str(sidecar.id), target=source
        ) from None
    Manifest.from_json(body, archive=str(sidecar.id))


def _transfer(
    src: Target,
    dst: Target,
    sidecar: Sidecar,
    spool: Path,
    progress: Callable[[int], None] | None,
) -> None:
    """Copy the data of one archive from *src* to *dst*, checking it as it streams."""
    key = f"{sidecar.id.cell}/{sidecar.data_name}"
    with src.open_archive(sidecar) as raw:
        reader = _CheckingReader(raw, sidecar, src.name, progress)
        if dst.put_stream(key, cast(IO[bytes], reader)):
            return
        # The destination cannot take a stream: spool to a local file, checked
        # as it is written, then store that file whole.
        spool.mkdir(parents=True, exist_ok=True)
        part = spool / f"{sidecar.data_name}.part"
        try:
            with open(part, "wb") as out:
                for block in iter(lambda: reader.read(_BLOCK), b""):
                    out.write(block)
                out.flush()
                # The spool file becomes the committed archive (a hard link on a
                # local target): it must be on disk before the sidecar is.
                os.fsync(out.fileno())
            dst.put_file(part, key)
        finally:
            with contextlib.suppress(OSError):
                part.unlink()


def _copy_archive(
    src: Target,
    dst: Target,
    sidecar: Sidecar,
    spool: Path,
    *,
    verify: bool,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Copy one committed archive: data, manifest copy, then the sidecar that commits it."""
    ident = sidecar.id
    manifest_raw = _read_small(src, src.manifest_key(ident), "manifest copy", ident)
    _check_manifest(manifest_raw, sidecar, src.name)
    sidecar_raw = _read_small(src, src.sidecar_key(ident), "sidecar", ident)
    if Sidecar.from_json(sidecar_raw, name=str(ident)).sha256 != sidecar.sha256:
        raise ArchiveCorrupt(
            "its sidecar changed while it was being copied", archive=str(ident), target=src.name
        )
    failed: CellvaultError
    for attempt in range(1, COPY_ATTEMPTS + 1):
        try:
            _transfer(src, dst, sidecar, spool, progress)
            break
        except _ReadFailed as exc:
            cause: BaseException = exc.cause
            if isinstance(cause, CellvaultError):
                raise cause from None
            transient = src.is_transient(cause)
            failed = TargetError(
                f"cannot read archive {ident} ({redact_text(f'{type(cause).__name__}: {cause}')})",
                target=src.name,
                hint=f"check that {src.spec.display()} is reachable; run the sync again",
            )
        except _Truncated as exc:
            # A stream cut short (a connection reset mid-body): read it once more.
            transient, failed = True, exc
        except CellvaultError:
            # A whole stream that does not match its sidecar is damage, not bad luck.
            raise
        except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError
            transient = dst.is_transient(exc)
            failed = TargetError(
                f"cannot store archive {ident} ({redact_text(f'{type(exc).__name__}: {exc}')})",
                target=dst.name,
                hint=f"check that {dst.spec.display()} is reachable and writable, and the credentials",
            )
        if not transient or attempt == COPY_ATTEMPTS:
            raise failed
        log.warning(
            "sync.retry", archive=str(ident), source=src.name, target=dst.name, attempt=attempt
        )
        time.sleep(min(5.0, 0.5 * 2**attempt))
    with dst.guard(f"store archive {ident}"):
        dst.retrying(dst.put_bytes, dst.manifest_key(ident), manifest_raw)
    if verify:
        # Read back what arrived and check every member before it counts.
        with dst.open_archive(sidecar) as raw:
            verify_archive(raw, sidecar, dst.name)
    with dst.guard(f"commit archive {ident}"):
        dst.retrying(dst.put_bytes, dst.sidecar_key(ident), sidecar_raw)


def _clear_spool(spool: Path) -> list[str]:
    removed = []
    if spool.is_dir():
        for path in sorted(spool.iterdir()):
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(str(path))
    return removed


def copy_cell(
    src: Target,
    dst: Target,
    cell: str,
    *,
    spool: Path,
    now: dt.datetime,
    policy: Any = None,
    verify: bool = False,
    lock_ttl: float = 120.0,
    purpose: str = "sync",
    on_copied: Callable[[Sidecar, int, float], None] | None = None,
    progress: Callable[[Sidecar, int], None] | None = None,
) -> CellSync:
    """Make every archive of *cell* on *src* that *dst* should keep committed on *dst*.

    Under the cell's lease on *dst* (:class:`LockHeld` is turned into a
    report whose ``locked`` says who holds it): debris of interrupted runs is
    removed from *dst* and from *spool* (this cell's spool folder), then each
    missing archive is copied, oldest first, its chain before it. With a
    retention *policy* (:class:`~cellvault.retention.RetentionPolicy`),
    missing archives the destination would prune at once are not copied.
    *verify* reads each copy back completely before committing it.
    """
    started = time.monotonic()
    copied: list[str] = []
    nbytes = 0
    stage = "lock"
    try:
        lease = Lease.acquire(dst, cell, f"{purpose} from {src.name}", lock_ttl)
    except LockHeld as exc:
        log.info("sync.locked", cell=cell, target=dst.name, holder=exc.holder)
        return CellSync(
            cell=cell,
            source=src.name,
            target=dst.name,
            ok=True,
            locked=exc.message,
            duration=time.monotonic() - started,
        )
    except CellvaultError as exc:
        return CellSync(
            cell=cell,
            source=src.name,
            target=dst.name,
            ok=False,
            stage=stage,
            error=str(exc),
            duration=time.monotonic() - started,
        )
    try:
        stage = "debris"
        debris = dst.clear_debris(cell) + _clear_spool(spool)
        stage = "list"
        src_ids = src.archive_ids(cell)
        there = set(dst.archive_ids(cell))
        missing_ids = [i for i in src_ids if i not in there]
        missing = [src.sidecar(i) for i in missing_ids]
        skipped: list[str] = []
        if missing and policy is not None:
            decisions = plan([*dst.archives(cell), *missing], policy, now)
            keep = {d.id for d in decisions if d.keep}
            skipped = [str(s.id) for s in missing if s.id not in keep]
            missing = [s for s in missing if s.id in keep]
        stage = "copy"
        have = there | {s.id for s in missing}
        # A damaged archive (or one whose chain is) fails alone: the archives
        # that do not need it are still copied, so one bad copy on the object
        # storage cannot keep a standby from the newer full backups.
        bad: dict[ArchiveId, str] = {}
        for sidecar in sorted(missing, key=lambda s: s.id):
            gaps = [a for a in sidecar.meta.chain if a not in have or a in bad]
            if gaps:
                why = (
                    "could not be copied"
                    if gaps[0] in bad
                    else f"is on neither {src.name} nor {dst.name}"
                )
                bad[sidecar.id] = (
                    f"archive {sidecar.id}: its chain needs archive {gaps[0]}, which {why}"
                )
                continue
            t0 = time.monotonic()
            try:
                _copy_archive(
                    src,
                    dst,
                    sidecar,
                    spool,
                    verify=verify,
                    progress=functools.partial(progress, sidecar) if progress else None,
                )
            except ArchiveCorrupt as exc:
                bad[sidecar.id] = str(exc)
                continue
            elapsed = time.monotonic() - t0
            copied.append(str(sidecar.id))
            nbytes += sidecar.size
            log.info(
                "archive.copied",
                archive=str(sidecar.id),
                source=src.name,
                target=dst.name,
                bytes=sidecar.size,
                seconds=round(elapsed, 3),
            )
            if on_copied is not None:
                on_copied(sidecar, sidecar.size, elapsed)
        return CellSync(
            cell=cell,
            source=src.name,
            target=dst.name,
            ok=not bad,
            copied=tuple(copied),
            present=len(src_ids) - len(missing_ids),
            skipped=tuple(skipped),
            debris=tuple(debris),
            bytes=nbytes,
            duration=time.monotonic() - started,
            stage="copy" if bad else None,
            error="; ".join(bad.values())
            + (
                " (take a full backup of the cell on the primary, or restore the damaged "
                "copy from another target; then sync again)"
            )
            if bad
            else None,
        )
    except CellvaultError as exc:
        # Site reports it to the alert hooks (and logs it) as a failure of operation "sync".
        log.debug("sync.cell_failed", cell=cell, source=src.name, target=dst.name, error=str(exc))
        return CellSync(
            cell=cell,
            source=src.name,
            target=dst.name,
            ok=False,
            copied=tuple(copied),
            bytes=nbytes,
            stage=stage,
            error=str(exc),
            duration=time.monotonic() - started,
        )
    finally:
        with contextlib.suppress(OSError):
            spool.rmdir()
        lease.release()


# -- holdings ------------------------------------------------------------------


def _cells_of(target: Target) -> list[str]:
    """The cells with a folder on *target* (not the seed's ``logs`` or other folders)."""
    out = []
    for name in target.cells():
        try:
            validate_cell_name(name)
        except ConfigError:
            continue
        out.append(name)
    return out


def _holding(target: Target, cell: str) -> tuple[Holding, list[ArchiveId]]:
    """What *target* holds of *cell*, from one listing."""
    with target.guard(f"list archives of cell {cell}"):
        entries = target.retrying(target.list, cell)
    files = {e.name: e.size for e in entries if not e.is_dir}
    ids = sorted(
        ArchiveId.parse(n.removesuffix(SIDECAR_SUFFIX))
        for n in files
        if n.endswith(SIDECAR_SUFFIX) and ArchiveId.is_id(n.removesuffix(SIDECAR_SUFFIX))
    )
    committed = {str(i) for i in ids}
    size = sum(n for name, n in files.items() if name.split(".", 1)[0] in committed)
    newest = ids[-1] if ids else None
    return (
        Holding(
            count=len(ids),
            bytes=size,
            newest=str(newest) if newest else None,
            newest_at=newest.when if newest else None,
        ),
        ids,
    )


def _lag(cell: str, target: str, here: list[ArchiveId], there: list[ArchiveId]) -> CellLag:
    newest_here = here[-1] if here else None
    newest_there = there[-1] if there else None
    lag = (
        (newest_there.when - newest_here.when).total_seconds()
        if newest_here and newest_there
        else None
    )
    return CellLag(
        cell=cell,
        target=target,
        local=str(newest_here) if newest_here else None,
        remote=str(newest_there) if newest_there else None,
        lag_seconds=lag,
        behind=sum(1 for i in there if newest_here is None or i > newest_here),
        ahead=sum(1 for i in here if newest_there is None or i > newest_there),
    )


# -- the site ------------------------------------------------------------------


class Site:
    """One site of a DR pair: its own backup directory and the shared object storage.

    *vault*'s first target is the site's own (local) backup directory; the
    object storage is *storage* (target names), else ``DR_TARGET``, else every
    other configured target. *settings* default to the ``DR_*`` variables the
    configuration holds (``DR_*``, see :class:`DrSettings`); *site_id* wins
    over ``DR_SITE_ID``, which wins over the host name.

    Every method returns a report and never prints; the command line's
    ``cellvault sync`` and ``cellvault dr ...`` print them.
    """

    def __init__(
        self,
        vault: Vault,
        site_id: str | None = None,
        *,
        storage: Sequence[str] | None = None,
        settings: DrSettings | None = None,
    ) -> None:
        self.vault = vault
        self.settings = settings or DrSettings.from_config(vault.config)
        self.site_id = _site_id(site_id or self.settings.site_id or _host_site_id())
        self.local: Target = vault.targets[0]
        names = list(storage or self.settings.storage)
        if names:
            self.storage = [vault.target(n) for n in dict.fromkeys(names)]
        else:
            self.storage = list(vault.targets[1:])
        if any(t is self.local for t in self.storage):
            raise ConfigError(
                f"target {self.local.name} is this site's own backup directory, not the object storage",
                hint="DR_TARGET names the object-storage targets, e.g. DR_TARGET=s3",
            )
        self.state_dir = vault.config.backup_dir / ".cellvault" / "dr"
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Site {self.site_id} local={self.local.name} storage={[t.name for t in self.storage]}>"

    # -- helpers --------------------------------------------------------------

    def _now(self) -> dt.datetime:
        now = self.vault.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        return now.astimezone(dt.UTC).replace(microsecond=0)

    def _need_storage(self, what: str) -> None:
        if not self.storage:
            raise ConfigError(
                f"{what} needs an object-storage target, and only {self.local.name} is configured",
                hint="add one, e.g. BACKUP_TARGETS=local,s3 with BACKUP_S3_BUCKET, on both sites",
            )

    def _spool(self, dst: Target, cell: str) -> Path:
        return self.vault.spool / "sync" / dst.name / cell

    def _emit(self, name: str, run: str, **data: Any) -> None:
        if self.vault.on_event is None:
            return
        fields = {k: v for k, v in data.items() if k not in ("cell", "target", "archive")}
        event = Event(
            name,
            run,
            cell=data.get("cell"),
            target=data.get("target"),
            archive=data.get("archive"),
            data=fields,
        )
        try:
            self.vault.on_event(event)
        except Exception as exc:  # noqa: BLE001 - a caller's callback must not break a sync
            log.warning("event.callback_failed", event_name=name, error=str(exc))

    def _policy(self, target: Target) -> Any:
        retention_for = getattr(self.vault.config, "retention_for", None)
        return retention_for(target.name) if retention_for is not None else None

    def _copy(
        self,
        pairs: Iterable[tuple[Target, Target]],
        cells: Sequence[str] | None,
        *,
        mode: str,
        verify: bool,
    ) -> list[CellSync]:
        run = secrets.token_hex(6)
        now = self._now()
        out: list[CellSync] = []
        for src, dst in pairs:
            if cells:
                names = list(dict.fromkeys(cells))
            else:
                try:
                    names = _cells_of(src)
                except TargetError as exc:
                    out.append(
                        CellSync(
                            cell="*",
                            source=src.name,
                            target=dst.name,
                            ok=False,
                            stage="list",
                            error=str(exc),
                        )
                    )
                    continue

            def one(cell: str, src: Target = src, dst: Target = dst) -> CellSync:
                result = copy_cell(
                    src,
                    dst,
                    cell,
                    spool=self._spool(dst, cell),
                    now=now,
                    policy=self._policy(dst),
                    verify=verify,
                    lock_ttl=self.vault.config.lock_ttl,
                    purpose=mode,
                    on_copied=lambda s, n, secs: self._emit(
                        "archive.copied",
                        run,
                        cell=s.id.cell,
                        archive=str(s.id),
                        target=dst.name,
                        source=src.name,
                        bytes=n,
                        seconds=secs,
                    ),
                    progress=lambda s, n: self._emit(
                        "sync.progress",
                        run,
                        cell=s.id.cell,
                        archive=str(s.id),
                        target=dst.name,
                        bytes=n,
                        total=s.size,
                    ),
                )
                if not result.ok:
                    self.vault._failed(  # the alert hooks hear of a failed copy as of a failed upload
                        _failure(result, run, self.vault.host, mode)
                    )
                return result

            with ThreadPoolExecutor(
                max_workers=self.vault.config.jobs, thread_name_prefix="sync"
            ) as pool:
                out.extend(pool.map(one, names))
        return out

    # -- markers and records ----------------------------------------------------

    @property
    def local_marker_path(self) -> Path:
        """``<backup_dir>/.cellvault/dr/failover.json``."""
        return self.state_dir / "failover.json"

    def _write_local(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def local_marker(self) -> FailoverMarker | None:
        """The marker as this site last wrote or saw it, or ``None``."""
        try:
            raw = self.local_marker_path.read_bytes()
        except FileNotFoundError:
            return None
        return FailoverMarker.from_json(raw, where=f"failover marker {self.local_marker_path}")

    def remote_marker(self) -> tuple[FailoverMarker | None, str | None, list[str]]:
        """The marker on the object storage: (marker, target it was read from, errors).

        Every storage target is asked; the first that answers decides. When
        none answers, the errors say why.
        """
        errors: list[str] = []
        for target in self.storage:
            try:
                with target.guard("read the failover marker", missing_ok=True):
                    raw = target.retrying(target.read_bytes, MARKER_KEY)
            except FileNotFoundError:
                return None, target.name, errors
            except TargetError as exc:
                errors.append(str(exc))
                continue
            return (
                FailoverMarker.from_json(raw, where=f"failover marker on target {target.name}"),
                target.name,
                errors,
            )
        return None, None, errors

    def marker(self) -> tuple[FailoverMarker | None, str | None]:
        """The failover marker in effect and where it was read (a target name or ``local``).

        The object storage decides when it can be read; this site's own copy
        only when it cannot (the object storage is down, or there is none).
        """
        remote, where, _ = self.remote_marker()
        if where is not None:
            return remote, (where if remote else None)
        local = self.local_marker()
        return local, ("local" if local else None)

    def _publish_marker(self, marker: FailoverMarker) -> tuple[list[str], list[str]]:
        """Write *marker* to every storage target and locally: (where written, errors)."""
        written, errors = [], []
        for target in self.storage:
            try:
                with target.guard("write the failover marker"):
                    target.retrying(target.put_bytes, MARKER_KEY, marker.to_json())
                written.append(target.name)
            except TargetError as exc:
                errors.append(str(exc))
        try:
            self._write_local(self.local_marker_path, marker.to_json())
            written.append("local")
        except OSError as exc:
            errors.append(f"cannot write {self.local_marker_path} ({exc.strerror})")
        return written, errors

    def _retire_marker(self, marker: FailoverMarker, *, everywhere: bool) -> list[str]:
        """Move *marker* into the history (on the storage too if *everywhere*); return errors."""
        errors = []
        stamp = marker.at.strftime("%Y%m%d_%H%M%S")
        name = f"{stamp}_{marker.event}_{marker.site_id}.json"
        if everywhere:
            for target in self.storage:
                try:
                    with target.guard("clear the failover marker"):
                        target.retrying(
                            target.put_bytes, f"{HISTORY_FOLDER}/{name}", marker.to_json()
                        )
                        target.retrying(target.delete, MARKER_KEY)
                except TargetError as exc:
                    errors.append(str(exc))
        try:
            self._write_local(self.state_dir / "history" / name, marker.to_json())
            with contextlib.suppress(FileNotFoundError):
                self.local_marker_path.unlink()
        except OSError as exc:
            errors.append(f"cannot clear {self.local_marker_path} ({exc.strerror})")
        return errors

    def _reconcile(self) -> str | None:
        """Drop this site's copy of a marker the object storage no longer has (a failback ended it)."""
        local = self.local_marker()
        if local is None:
            return None
        remote, where, _ = self.remote_marker()
        if where is None or remote is not None:
            return None
        self._retire_marker(local, everywhere=False)
        log.info("dr.marker_cleared", site=self.site_id, was_active=local.site_id)
        return (
            f"the failover to site {local.site_id} of {_iso(local.at)} has ended (the object "
            "storage no longer holds its marker): this site's copy was moved to its history"
        )

    def holdings(self, target: Target | None = None) -> dict[str, Holding]:
        """What *target* (default: this site's backup directory) holds, per cell."""
        target = target or self.local
        out = {}
        for cell in _cells_of(target):
            out[cell] = _holding(target, cell)[0]
        return out

    def _record(self, action: str) -> list[str]:
        """Write this site's record to the storage; return warnings (never fails a step)."""
        try:
            record = SiteRecord(
                site_id=self.site_id,
                host=self.vault.host,
                at=self._now(),
                action=action,
                cells=self.holdings(),
            )
        except CellvaultError as exc:
            return [f"cannot read this site's holdings for its site record: {exc}"]
        warnings = []
        for target in self.storage:
            try:
                with target.guard("write the site record"):
                    target.retrying(
                        target.put_bytes, f"{SITES_FOLDER}/{self.site_id}.json", record.to_json()
                    )
            except TargetError as exc:
                warnings.append(f"site record not written: {exc}")
        return warnings

    def site_records(self) -> list[SiteRecord]:
        """What every site recorded at its last DR step (from the first readable storage target)."""
        for target in self.storage:
            try:
                with target.guard("list site records"):
                    entries = target.retrying(target.list, SITES_FOLDER)
                out = []
                for entry in entries:
                    if entry.is_dir or not entry.name.endswith(".json"):
                        continue
                    with target.guard("read a site record"):
                        raw = target.retrying(target.read_bytes, f"{SITES_FOLDER}/{entry.name}")
                    try:
                        out.append(SiteRecord.from_json(raw))
                    except (KeyError, TypeError, ValueError) as exc:
                        log.warning("dr.site_record_unreadable", name=entry.name, error=str(exc))
                return sorted(out, key=lambda r: r.site_id)
            except (TargetError, FileNotFoundError):
                continue
        return []

    # -- push and pull ------------------------------------------------------------

    def push(
        self,
        cells: Sequence[str] | None = None,
        *,
        source: str | None = None,
        to: Sequence[str] | None = None,
        verify: bool = False,
    ) -> SyncReport:
        """Copy what the object storage misses from this site (the seed's ``sync_backup_to_dr.sh``).

        From *source* (default: this site's backup directory) to *to* (default:
        the storage targets). Refused with :class:`DrError` while a failover
        marker names another site: this site's archives must not become the
        newest the active site sees.
        """
        started = time.monotonic()
        src = self.vault.target(source) if source else self.local
        dsts = [self.vault.target(n) for n in to] if to else list(self.storage)
        if not dsts:
            self._need_storage("a push")
        if any(d is src for d in dsts):
            raise ConfigError(f"cannot push target {src.name} to itself")
        marker, where = self.marker()
        if marker is not None and marker.site_id != self.site_id:
            raise DrError(
                f"site {marker.site_id} is active since {_iso(marker.at)} (failover marker on "
                f"{where}); this site ({self.site_id}) must not push its archives until failback",
                hint=f"on site {marker.site_id} run 'cellvault dr failback' first, then here; "
                "if this site IS the one serving, set DR_SITE_ID to its id",
            )
        results = self._copy([(src, d) for d in dsts], cells, mode="push", verify=verify)
        warnings = self._record("push")
        return SyncReport(
            mode="push",
            site=self.site_id,
            cells=tuple(results),
            duration=time.monotonic() - started,
            warnings=tuple(warnings),
        )

    def pull(
        self,
        cells: Sequence[str] | None = None,
        *,
        source: Sequence[str] | None = None,
        verify: bool = False,
        record: bool = True,
    ) -> SyncReport:
        """Bring what this site misses from the object storage (``DR_PULL_ONLY=1``).

        From *source* (default: the storage targets, in order: the first that
        holds an archive gives it) into this site's backup directory. Safe to
        run from cron every few minutes: a cell another run is copying is left
        to it (reported as ``locked``, which is not a failure).
        """
        started = time.monotonic()
        srcs = [self.vault.target(n) for n in source] if source else list(self.storage)
        if not srcs:
            self._need_storage("a pull")
        if any(s is self.local for s in srcs):
            raise ConfigError(f"cannot pull target {self.local.name} into itself")
        results = self._copy([(s, self.local) for s in srcs], cells, mode="pull", verify=verify)
        warnings: list[str] = []
        if record:
            with contextlib.suppress(CellvaultError):
                note = self._reconcile()
                if note:
                    warnings.append(note)
            warnings += self._record("pull")
        return SyncReport(
            mode="pull",
            site=self.site_id,
            cells=tuple(results),
            duration=time.monotonic() - started,
            warnings=tuple(warnings),
        )

    def sync(
        self, cells: Sequence[str] | None = None, *, pull_only: bool | None = None, **kwargs: Any
    ) -> SyncReport:
        """:meth:`pull` when *pull_only* (default: ``DR_PULL_ONLY``), else :meth:`push`."""
        if pull_only is None:
            pull_only = self.settings.pull_only
        if pull_only:
            if "to" in kwargs:
                raise ConfigError("a pull copies into this site's backup directory; drop --to")
            src = kwargs.pop("source", None)
            return self.pull(cells, source=[src] if isinstance(src, str) else src, **kwargs)
        return self.push(cells, **kwargs)

    # -- prepare ----------------------------------------------------------------

    def check_targets(self) -> list[TargetCheck]:
        """Reach every target, and write, read back and delete a probe object on each."""
        out = []
        for target in self.vault.targets:
            started = time.monotonic()
            key = f".dr/probe-{self.site_id}-{secrets.token_hex(4)}"
            body = f"cellvault probe from {self.site_id}\n".encode()
            try:
                target.check()
                with target.guard("write a probe object"):
                    target.retrying(target.put_bytes, key, body)
                try:
                    with target.guard("read the probe object back"):
                        back = target.retrying(target.read_bytes, key)
                    if back != body:
                        raise TargetError(
                            "the probe object read back differs from what was written",
                            target=target.name,
                        )
                finally:
                    with target.guard("delete the probe object"):
                        target.retrying(target.delete, key)
                out.append(TargetCheck(target.name, True, duration=time.monotonic() - started))
            except CellvaultError as exc:
                out.append(
                    TargetCheck(target.name, False, str(exc), duration=time.monotonic() - started)
                )
        return out

    def prepare(self, *, pull: bool = True) -> PrepareReport:
        """Set this site up as a standby (the seed's ``prepare_dr_site.sh``).

        Creates the backup directory and the parents of the cells' paths,
        checks every target (credentials, reachability, a probe object
        written, read and removed), pulls, and reports what the site holds.
        """
        started = time.monotonic()
        config = self.vault.config
        wanted = [
            config.backup_dir,
            config.backup_dir / "logs",
            self.vault.spool,
            self.state_dir,
            *(p.parent for c in config.cells for p in c.paths),
        ]
        created = []
        for path in dict.fromkeys(wanted):
            if not path.exists():
                try:
                    path.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DrError(
                        f"cannot create {path} ({exc.strerror})",
                        hint="create it or fix the permissions of its parent",
                    ) from None
                created.append(str(path))
        checks = self.check_targets()
        reachable = {c.target for c in checks if c.ok}
        sync = None
        if pull and self.storage and any(t.name in reachable for t in self.storage):
            sources = [t.name for t in self.storage if t.name in reachable]
            sync = self.pull(source=sources, record=False)
        with contextlib.suppress(CellvaultError):
            self._record("prepare")
        return PrepareReport(
            site=self.site_id,
            created=tuple(created),
            checks=tuple(checks),
            pull=sync,
            holdings=self.holdings() if self.local.name in reachable else {},
            duration=time.monotonic() - started,
        )

    # -- failover ---------------------------------------------------------------

    def _choose(self, cell: str, selector: Selector) -> Sidecar | None:
        """The archive a restore of *cell* with *selector* from this site would use.

        As :meth:`Vault.restore <cellvault.Vault.restore>` picks: the newest
        match that is not a pre-restore safety backup (unless named by id).
        """
        ids = [i for i in self.local.archive_ids(cell) if selector.matches(i)]
        for ident in reversed(ids):
            sidecar = self.local.sidecar(ident)
            if selector.kind == "id" or sidecar.meta.reason != "pre-restore":
                return sidecar
        return self.local.sidecar(ids[-1]) if ids else None

    def _verify(self, chosen: Mapping[str, Sidecar]) -> VerifyReport:
        results: list[VerifyResult] = []
        for cell, sidecar in chosen.items():
            report = self.vault.verify([cell], targets=[self.local.name], select=str(sidecar.id))
            results.extend(report.results)
        return VerifyReport(results=tuple(results))

    def _cells_here(self) -> list[str]:
        configured = [c.name for c in self.vault.config.cells]
        return configured or _cells_of(self.local)

    def _hooks(self, marker: FailoverMarker) -> list[HookOutcome]:
        out = []
        hook = self.vault.plugins.hook.cellvault_failover
        for impl in reversed(hook.get_hookimpls()):
            try:
                impl.function(*(marker for _ in impl.argnames))
                out.append(HookOutcome(impl.plugin_name, True))
            except Exception as exc:  # noqa: BLE001 - a boundary: reported in the report and the log
                error = (
                    str(exc)
                    if isinstance(exc, CellvaultError)
                    else redact_text(f"{type(exc).__name__}: {exc}")
                )
                log.error("dr.hook_failed", plugin=impl.plugin_name, error=error)
                out.append(HookOutcome(impl.plugin_name, False, error))
        return out

    def _previous_site(self) -> str | None:
        pushers = [r for r in self.site_records() if r.site_id != self.site_id]
        pushers.sort(key=lambda r: (r.action == "push", r.at))
        return pushers[-1].site_id if pushers else None

    def failover(
        self,
        *,
        restore: str | None = None,
        skip_prebackup: bool = False,
        force: bool = False,
        pull: bool = True,
    ) -> FailoverReport:
        """Make this (standby) site the active one (the seed's ``dr_failover.sh``).

        Pulls the newest archives, checks that this site holds the newest
        archive of every cell the object storage has, and verifies each one
        completely; with *restore* (``latest``, a date, an id) restores them
        into the cells' own paths. Then writes the failover marker to the
        object storage and locally, calls the ``cellvault_failover`` hooks
        and returns the manual switch steps. Refused with :class:`DrError`
        while a failover is in effect, unless *force*; a failed check, verify
        or restore stops it before the marker is written (``report.error``),
        unless *force* (which never skips the restore's own checks).
        """
        started = time.monotonic()
        current, where = self.marker()
        if current is not None and not force:
            who = "this site" if current.site_id == self.site_id else f"site {current.site_id}"
            raise DrError(
                f"a failover to {who} is already in effect since {_iso(current.at)} "
                f"(marker on {where}, written by host {current.host})",
                hint="see 'cellvault dr status'; after the primary recovers use 'cellvault dr "
                "failback'; --force writes a new marker anyway",
            )
        warnings: list[str] = []
        sync = None
        if pull and self.storage:
            sync = self.pull(record=False)
            warnings += [
                f"pull: {c.cell} from {c.source}: {c.error}" for c in sync.cells if not c.ok
            ]
            warnings += [f"pull: {c.cell}: {c.locked}" for c in sync.locked]

        def stop(error: str) -> FailoverReport:
            return FailoverReport(
                site=self.site_id,
                ok=False,
                pull=sync,
                warnings=tuple(warnings),
                error=error,
                duration=time.monotonic() - started,
            )

        selector = Selector.parse(restore) if restore else Selector.parse("latest")
        cells = self._cells_here()
        if not cells:
            return stop("this site holds no archive of any cell and has no cell configured")
        problems: list[str] = []
        chosen: dict[str, Sidecar] = {}
        for cell in cells:
            sidecar = self._choose(cell, selector)
            if sidecar is None:
                problems.append(f"cell {cell}: no archive matching {selector} on this site")
                continue
            chosen[cell] = sidecar
            for target in self.storage:
                try:
                    newest = target.archive_ids(cell)
                except TargetError as exc:
                    problems.append(f"cell {cell}: cannot tell what {target.name} holds: {exc}")
                    continue
                if selector.kind == "latest" and newest and newest[-1] > sidecar.id:
                    problems.append(
                        f"cell {cell}: {target.name} holds {newest[-1]}, newer than {sidecar.id} "
                        "on this site (the pull did not bring it)"
                    )
        for cell in sorted(set(self._storage_cells()) - set(cells)):
            warnings.append(
                f"cell {cell} has archives on the object storage but is not configured here"
            )
        if problems and not force:
            return stop(
                "this site does not hold the newest backups: "
                + "; ".join(problems)
                + " (fix the pull and run again, or --force to fail over with what is here)"
            )
        warnings += problems
        verify = self._verify(chosen)
        if not verify.ok and not force:
            bad = "; ".join(f"{r.archive}: {r.error}" for r in verify.results if not r.ok)
            return FailoverReport(
                site=self.site_id,
                ok=False,
                pull=sync,
                verify=verify,
                warnings=tuple(warnings),
                error=f"the newest archives do not verify on this site: {bad}",
                duration=time.monotonic() - started,
            )
        restored: dict[str, str] = {}
        result = None
        if restore:
            configured = {c.name for c in self.vault.config.cells}
            targets = [c for c in chosen if c in configured]
            if targets:
                result = self.vault.restore(
                    selector,
                    cells=targets,
                    skip_prebackup=skip_prebackup,
                    source=[self.local.name],
                )
                if not result.ok:
                    return FailoverReport(
                        site=self.site_id,
                        ok=False,
                        pull=sync,
                        verify=verify,
                        restore=result,
                        warnings=tuple(warnings),
                        error=f"the restore failed, so no failover marker was written: {_restore_error(result)}",
                        duration=time.monotonic() - started,
                    )
                restored = {c.cell: c.archive or "" for c in result.cells}
        marker = FailoverMarker(
            site_id=self.site_id,
            at=self._now(),
            host=self.vault.host,
            previous_site=(current.site_id if current else None) or self._previous_site(),
            restored=restored,
            verified={
                c: str(s.id)
                for c, s in chosen.items()
                if any(r.ok and r.archive == str(s.id) for r in verify.results)
            },
            forced=force and (current is not None or bool(problems) or not verify.ok),
        )
        written, errors = self._publish_marker(marker)
        warnings += errors
        if not written:
            return FailoverReport(
                site=self.site_id,
                ok=False,
                pull=sync,
                verify=verify,
                restore=result,
                warnings=tuple(warnings),
                error="the failover marker could not be written anywhere: " + "; ".join(errors),
                duration=time.monotonic() - started,
            )
        log.info("dr.failover", site=self.site_id, restored=restored, written=written)
        hooks = self._hooks(marker)
        warnings += self._record("failover")
        failed = [h for h in hooks if not h.ok]
        return FailoverReport(
            site=self.site_id,
            ok=not failed,
            marker=marker,
            pull=sync,
            verify=verify,
            restore=result,
            marker_written=tuple(written),
            hooks=tuple(hooks),
            warnings=tuple(warnings),
            steps=failover_steps(marker, restored=bool(restored)),
            error=(
                "failover done and marker written, but hook(s) failed: "
                + "; ".join(f"{h.plugin}: {h.error}" for h in failed)
                + "; switch the traffic by hand"
            )
            if failed
            else None,
            duration=time.monotonic() - started,
        )

    def _storage_cells(self) -> list[str]:
        for target in self.storage:
            with contextlib.suppress(TargetError):
                return _cells_of(target)
        return []

    # -- failback ---------------------------------------------------------------

    def failback(
        self,
        *,
        final_backup: str | None = "incremental",
        restore: bool = True,
        skip_prebackup: bool = False,
        force: bool = False,
    ) -> FailbackReport:
        """Give the service back to the recovered primary, in two steps on two sites.

        On the **active** site (the one the marker names), step ``handback``:
        with writes stopped, take a *final_backup* (``full``,
        ``incremental``, or ``None`` for none), push everything the object
        storage misses, and record in the marker which archive of each cell
        the primary must restore. On the **recovered primary**, step
        ``takeover``: pull, check that exactly the handed-back archives are
        the newest here, verify them, restore them (unless not *restore*),
        clear the marker, call the ``cellvault_failover`` hooks (with an
        ``event="failback"`` marker naming this site) and return the
        switch-back steps. *force* lets the takeover go on without a
        hand-back (the newest archives on the storage are used).
        """
        self._need_storage("a failback")
        marker, _ = self.marker()
        if marker is None:
            raise DrError(
                "no failover is in effect: there is nothing to fail back",
                hint="'cellvault dr status' shows which site is active",
            )
        if marker.site_id == self.site_id:
            return self._hand_back(marker, final_backup)
        return self._take_over(marker, restore=restore, skip_prebackup=skip_prebackup, force=force)

    def _hand_back(self, marker: FailoverMarker, final_backup: str | None) -> FailbackReport:
        started = time.monotonic()
        warnings: list[str] = []
        backup = None

        def stop(error: str, **kwargs: Any) -> FailbackReport:
            return FailbackReport(
                site=self.site_id,
                step="handback",
                ok=False,
                backup=backup,
                warnings=tuple(warnings),
                error=error,
                duration=time.monotonic() - started,
                **kwargs,
            )

        if final_backup:
            backup = self.vault.backup(kind=final_backup, reason="failback")
            if not backup.ok:
                return stop("the final backup failed; nothing was handed back")
        push = self.push()
        if not push.ok:
            return stop("the push failed; nothing was handed back", push=push)
        if push.locked:
            return stop(
                "cells were locked by another run, so the push is incomplete: "
                + "; ".join(c.locked or "" for c in push.locked)
                + " (run it again)",
                push=push,
            )
        now = self._now()
        archives: dict[str, str] = {}
        for cell in _cells_of(self.local):
            chosen = self._choose(cell, Selector.at_or_before(now))
            if chosen is None:
                continue
            for target in self.storage:
                if chosen.id not in set(target.archive_ids(cell)):
                    return stop(
                        f"archive {chosen.id} is not on {target.name} after the push", push=push
                    )
            archives[cell] = str(chosen.id)
        handed = attrs.evolve(
            marker,
            handback=Handback(
                site_id=self.site_id, host=self.vault.host, at=now, archives=archives
            ),
        )
        written, errors = self._publish_marker(handed)
        warnings += errors
        if not any(w != "local" for w in written):
            return stop(
                "the hand-back could not be written to the object storage: " + "; ".join(errors),
                push=push,
            )
        warnings += self._record("handback")
        return FailbackReport(
            site=self.site_id,
            step="handback",
            ok=True,
            marker=handed,
            backup=backup,
            push=push,
            marker_written=tuple(written),
            warnings=tuple(warnings),
            steps=handback_steps(handed),
            duration=time.monotonic() - started,
        )

    def _take_over(
        self, marker: FailoverMarker, *, restore: bool, skip_prebackup: bool, force: bool
    ) -> FailbackReport:
        started = time.monotonic()
        warnings: list[str] = []
        handback = marker.handback
        if handback is None and not force:
            raise DrError(
                f"site {marker.site_id} is active and has not handed back yet",
                hint=f"on site {marker.site_id}, stop writes and run 'cellvault dr failback' "
                "there first; --force takes over with the newest archives on the object storage",
            )
        sync = self.pull(record=False)
        if not sync.ok or sync.locked:
            return FailbackReport(
                site=self.site_id,
                step="takeover",
                ok=False,
                marker=marker,
                pull=sync,
                error="the pull failed or was incomplete; nothing was restored (run it again)",
                duration=time.monotonic() - started,
            )
        when = handback.at if handback else self._now()
        selector = Selector.at_or_before(when)
        expected = dict(handback.archives) if handback else {}
        cells = list(expected) or self._storage_cells()
        chosen: dict[str, Sidecar] = {}
        problems = []
        for cell in cells:
            sidecar = self._choose(cell, selector)
            if sidecar is None:
                problems.append(f"cell {cell}: no archive here after the pull")
                continue
            if cell in expected and str(sidecar.id) != expected[cell]:
                problems.append(
                    f"cell {cell}: the newest archive here is {sidecar.id}, not {expected[cell]} "
                    f"that site {marker.site_id} handed back (were backups taken on this site "
                    "during the failover?)"
                )
                continue
            chosen[cell] = sidecar
        if problems and not force:
            return FailbackReport(
                site=self.site_id,
                step="takeover",
                ok=False,
                marker=marker,
                pull=sync,
                error="; ".join(problems),
                duration=time.monotonic() - started,
            )
        warnings += problems
        verify = self._verify(chosen)
        if not verify.ok:
            bad = "; ".join(f"{r.archive}: {r.error}" for r in verify.results if not r.ok)
            return FailbackReport(
                site=self.site_id,
                step="takeover",
                ok=False,
                marker=marker,
                pull=sync,
                verify=verify,
                error=f"the handed-back archives do not verify here: {bad}",
                duration=time.monotonic() - started,
            )
        result = None
        restored: dict[str, str] = {}
        if restore:
            configured = {c.name for c in self.vault.config.cells}
            targets = [c for c in chosen if c in configured]
            warnings += [
                f"cell {c} was handed back but is not configured here; not restored"
                for c in chosen
                if c not in configured
            ]
            if targets:
                result = self.vault.restore(
                    Selector.at_or_before(when),
                    cells=targets,
                    skip_prebackup=skip_prebackup,
                    source=[self.local.name],
                )
                if not result.ok:
                    return FailbackReport(
                        site=self.site_id,
                        step="takeover",
                        ok=False,
                        marker=marker,
                        pull=sync,
                        verify=verify,
                        restore=result,
                        warnings=tuple(warnings),
                        error=f"the restore failed; the failover marker stays: {_restore_error(result)}",
                        duration=time.monotonic() - started,
                    )
                restored = {c.cell: c.archive or "" for c in result.cells}
        back = FailoverMarker(
            site_id=self.site_id,
            at=self._now(),
            host=self.vault.host,
            event="failback",
            previous_site=marker.site_id,
            restored=restored,
            verified={c: str(s.id) for c, s in chosen.items()},
            handback=handback,
            forced=force and (handback is None or bool(problems)),
        )
        errors = self._retire_marker(marker, everywhere=True)
        # The failback itself goes into the history beside the failover it ended.
        errors += self._retire_marker(back, everywhere=True)
        warnings += errors
        log.info("dr.failback", site=self.site_id, restored=restored)
        hooks = self._hooks(back)
        warnings += self._record("failback")
        failed = [h for h in hooks if not h.ok]
        return FailbackReport(
            site=self.site_id,
            step="takeover",
            ok=not failed,
            marker=back,
            pull=sync,
            verify=verify,
            restore=result,
            hooks=tuple(hooks),
            marker_written=tuple(t.name for t in self.storage),
            warnings=tuple(warnings),
            steps=takeover_steps(back, restored=bool(restored)),
            error=(
                "failback done and marker cleared, but hook(s) failed: "
                + "; ".join(f"{h.plugin}: {h.error}" for h in failed)
                + "; switch the traffic back by hand"
            )
            if failed
            else None,
            duration=time.monotonic() - started,
        )

    # -- status -----------------------------------------------------------------

    def status(self, cells: Sequence[str] | None = None) -> StatusReport:
        """Which site is active, what each target holds, and the replication lag per cell."""
        warnings: list[str] = []
        remote, where, errors = self.remote_marker()
        local = self.local_marker()
        if where is not None:
            marker, source = remote, (where if remote else None)
            if local is not None and remote is None:
                warnings.append(
                    f"this site still has a marker of the failover to {local.site_id} "
                    "that the object storage no longer holds: the next pull retires it"
                )
        else:
            marker, source = local, ("local" if local else None)
            if self.storage:
                warnings.append("the object storage cannot be read: " + "; ".join(errors))
        views: list[TargetView] = []
        ids: dict[str, dict[str, list[ArchiveId]]] = {}
        wanted = list(cells) if cells else None
        for target in [self.local, *self.storage]:
            try:
                names = wanted or _cells_of(target)
                held = {}
                ids[target.name] = {}
                for cell in names:
                    held[cell], ids[target.name][cell] = _holding(target, cell)
                views.append(TargetView(target.name, True, held))
            except CellvaultError as exc:
                views.append(TargetView(target.name, False, error=str(exc)))
        lag: list[CellLag] = []
        here = ids.get(self.local.name)
        if here is not None:
            for target in self.storage:
                there = ids.get(target.name)
                if there is None:
                    continue
                for cell in sorted(set(here) | set(there)):
                    lag.append(_lag(cell, target.name, here.get(cell, []), there.get(cell, [])))
        return StatusReport(
            site=self.site_id,
            active=marker.site_id if marker else None,
            marker=marker,
            marker_source=source,
            targets=tuple(views),
            lag=tuple(lag),
            sites=tuple(self.site_records()),
            warnings=tuple(warnings),
        )


def _failure(result: CellSync, run: str, host: str, mode: str) -> Failure:
    return Failure(
        stage=mode,
        error=result.error or "failed",
        cell=result.cell,
        target=result.target,
        run=run,
        host=host,
        operation="sync",
    )


def _restore_error(report: RestoreReport) -> str:
    if report.error:
        return report.error
    return "; ".join(f"cell {c.cell}: {c.stage}: {c.error}" for c in report.cells if not c.ok)


# -- the manual steps ------------------------------------------------------------------


def failover_steps(marker: FailoverMarker, *, restored: bool) -> tuple[str, ...]:
    """What the operator does after a failover (the seed's 5.4, step 3)."""
    site = marker.site_id
    old = marker.previous_site or "the primary"
    return (
        (
            "The cells' data is restored on this site."
            if restored
            else "Restore the cells' data here if not done yet: cellvault restore --date latest"
        )
        + f" Start the services of site {site} (gateway, governance, cells) and check their health.",
        f"Switch the traffic to site {site}: point the platform's DNS record (or the SLB "
        f"listener / Kubernetes Ingress in front of the gateway) at site {site}'s gateway; "
        "lower the DNS TTL first if it is long. A cellvault_failover plugin may have done it: "
        "check.",
        f"Record the switch time ({_iso(marker.at)}) and tell operations and the business; "
        "'cellvault dr status' shows the active site to everyone.",
        f"Keep backups running on site {site}, to its own directory AND the object storage "
        "(BACKUP_TARGETS=local,s3): the failback brings them home.",
        f"Do not run backups or 'cellvault sync' pushes on {old} until the failback: "
        "'cellvault sync' refuses to push there while this marker is in effect.",
    )


def handback_steps(marker: FailoverMarker) -> tuple[str, ...]:
    site = marker.site_id
    old = marker.previous_site or "the primary"
    assert marker.handback is not None
    return (
        f"Site {site} has handed back {len(marker.handback.archives)} cell(s) at "
        f"{_iso(marker.handback.at)}; keep its writes stopped from now on.",
        f"On {old} (rebuilt, its services stopped): cellvault dr prepare, then "
        "cellvault dr failback (pulls, verifies, restores exactly these archives, clears the marker).",
        f"Site {site} stays active until then; after the switch back it is the standby "
        "again: re-enable its 'cellvault sync --pull-only' cron job.",
    )


def takeover_steps(marker: FailoverMarker, *, restored: bool) -> tuple[str, ...]:
    site = marker.site_id
    old = marker.previous_site or "the standby"
    return (
        (
            "The cells' data handed back is restored on this site."
            if restored
            else "Restore the handed-back data: cellvault restore --date latest"
        )
        + f" Start the services of site {site} and check their health.",
        f"Switch the traffic back to site {site}: point the DNS record (or the SLB listener / "
        f"Kubernetes Ingress) at site {site}'s gateway again, and tell operations and the "
        "business; watch the platform for a while.",
        f"Re-enable backups and 'cellvault sync' (push) on site {site}.",
        f"On site {old}: stop its services and its backups; it is the standby again "
        "(keep its 'cellvault sync --pull-only' job, or keep it as a cold standby).",
    )
