"""The copy engine: one cell's committed archives from one target to another.

Copies keep the guarantees of a backup: each archive is copied data first,
then its manifest copy, then its sidecar, which commits it; the data's sha256
is computed while it streams and compared with the sidecar before the sidecar
is written, so a destination never lists an archive that is not whole. A copy
holds the cell's lease on the destination (purpose ``sync``); what a killed
copy left behind is cleared under that lease and the copy starts again. Only
what is missing is copied, oldest first (a chain is whole at every moment),
and only what the destination's retention policy would keep.

Everything here goes through the targets' own primitives and key functions
(:meth:`~cellvault.targets.base.Target.open_archive`,
:meth:`~cellvault.targets.base.Target.sidecar_key`, ...).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import attrs

from ..archive import ArchiveId, Sidecar
from ..crypt import can_open
from ..errors import ArchiveCorrupt, CellvaultError, LockHeld, TargetError
from ..extract import verify_archive
from ..lock import Lease
from ..log import get_logger
from ..modes import private_dirs, private_opener
from ..retention import plan
from ..run import error_text
from ..targets.base import Target
from ..trust import manifest_limit
from .reports import CellSync

__all__ = ["COPY_ATTEMPTS", "CheckingReader", "clear_spool", "copy_archive", "copy_cell"]

log = get_logger(__name__)

_BLOCK = 1 << 20
#: A copy cut by a transient error starts again this many times in all.
COPY_ATTEMPTS = 3

#: Called with an archive's sidecar, its bytes and the seconds its copy took.
OnCopied = Callable[[Sidecar, int, float], None]


class _ReadFailed(Exception):
    """Reading the source failed (as opposed to writing the destination)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))


class _Truncated(ArchiveCorrupt):
    """The source's stream ended early (a cut connection): worth reading again."""


class CheckingReader:
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


def _data_key(sidecar: Sidecar) -> str:
    """The key of *sidecar*'s data on any target (``<cell>/<id><suffix>``)."""
    ident = sidecar.id
    suffix = sidecar.data_name.removeprefix(str(ident))
    if suffix == sidecar.data_name or "/" in suffix:
        raise ArchiveCorrupt(
            f"its sidecar names the data {sidecar.data_name!r}, which is not this archive's",
            archive=str(ident),
            hint="the archive cannot be copied from this target",
        )
    return Target.data_key(ident, suffix)


def _fetch_manifest(src: Target, sidecar: Sidecar, spool: Path) -> Path:
    """Copy *sidecar*'s manifest copy from *src* into a file of *spool*, a block at a time."""
    ident = sidecar.id
    private_dirs(spool)
    path = spool / f"{ident}.manifest.json.zst.part"
    # Compressed (and sealed) it is at most a little over what it expands to.
    limit = manifest_limit(sidecar.files, sidecar.manifest_size)
    bound = limit + limit // 64 + (1 << 16)
    try:
        with src.guard(f"read manifest copy of {ident}", missing_ok=True):
            f = src.retrying(src.open_read, src.manifest_key(ident))
            with f, open(path, "wb", opener=private_opener) as out:
                copied = 0
                for block in iter(lambda: f.read(_BLOCK), b""):
                    copied += len(block)
                    if copied > bound:
                        raise ArchiveCorrupt(
                            f"its manifest copy is larger than its sidecar allows ({bound} bytes)",
                            archive=str(ident),
                            target=src.name,
                            hint="the archive cannot be copied from this target",
                        )
                    out.write(block)
                out.flush()
                # It becomes the stored copy (a hard link on a local target).
                os.fsync(out.fileno())
    except FileNotFoundError:
        raise ArchiveCorrupt(
            "its manifest copy is missing although its sidecar exists",
            archive=str(ident),
            target=src.name,
            hint="the archive cannot be copied from this target",
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return path


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


def _transfer(
    src: Target,
    dst: Target,
    sidecar: Sidecar,
    spool: Path,
    progress: Callable[[int], None] | None,
) -> None:
    """Copy the data of one archive from *src* to *dst*, checking it as it streams."""
    key = _data_key(sidecar)
    with src.open_archive(sidecar) as raw:
        reader = CheckingReader(raw, sidecar, src.name, progress)
        if dst.put_stream(key, cast(IO[bytes], reader)):
            return
        # The destination cannot take a stream: spool to a local file, checked
        # as it is written, then store that file whole.
        private_dirs(spool)
        part = spool / f"{sidecar.data_name}.part"
        try:
            with open(part, "wb", opener=private_opener) as out:
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


def _classify(exc: Exception, src: Target, dst: Target, ident: ArchiveId) -> tuple[bool, Exception]:
    """Whether a failed transfer is worth another try, and the error to raise if not."""
    if isinstance(exc, _Truncated):
        # A stream cut short (a connection reset mid-body): read it once more.
        return True, exc
    if isinstance(exc, CellvaultError):
        # A whole stream that does not match its sidecar is damage, not bad luck.
        return False, exc
    cause: BaseException = exc
    if isinstance(exc, _ReadFailed):
        if isinstance(exc.cause, CellvaultError):
            return False, exc.cause
        side, verb, hint, cause = src, "read", "is reachable; run the sync again", exc.cause
    else:
        side, verb, hint = dst, "store", "is reachable and writable, and the credentials"
    return side.is_transient(cause), TargetError(
        f"cannot {verb} archive {ident} ({error_text(cause)})",
        target=side.name,
        hint=f"check that {side.spec.display()} {hint}",
    )


def _retrying(transfer: Callable[[], None], src: Target, dst: Target, ident: ArchiveId) -> None:
    """Call *transfer*, again after a transient error (:data:`COPY_ATTEMPTS` times in all)."""
    for attempt in range(1, COPY_ATTEMPTS + 1):
        try:
            transfer()
            return
        except Exception as exc:
            transient, failed = _classify(exc, src, dst, ident)
            if not transient or attempt == COPY_ATTEMPTS:
                if failed is exc:
                    raise
                raise failed from None
        log.warning(
            "sync.retry", archive=str(ident), source=src.name, target=dst.name, attempt=attempt
        )
        time.sleep(min(5.0, 0.5 * 2**attempt))


def copy_archive(
    src: Target,
    dst: Target,
    sidecar: Sidecar,
    spool: Path,
    *,
    verify: bool,
    progress: Callable[[int], None] | None = None,
    before_commit: Callable[[], object] | None = None,
) -> None:
    """Copy one committed archive: data, manifest copy, then the sidecar that commits it.

    *before_commit* is called just before the sidecar is written (DR fencing);
    if it raises, the copy stays uncommitted.
    """
    # Spooled, not held: the manifest copy of a cell of millions of paths is tens of MiB.
    manifest = _fetch_manifest(src, sidecar, spool)
    try:
        _copy_committed(src, dst, sidecar, spool, manifest, verify, progress, before_commit)
    finally:
        with contextlib.suppress(OSError):
            manifest.unlink()


def _copy_committed(
    src: Target,
    dst: Target,
    sidecar: Sidecar,
    spool: Path,
    manifest: Path,
    verify: bool,
    progress: Callable[[int], None] | None,
    before_commit: Callable[[], object] | None,
) -> None:
    ident = sidecar.id
    if can_open(sidecar):  # sealed: copied as it is, without a key
        with open(manifest, "rb") as f:
            src.parse_manifest(sidecar, f)
    sidecar_raw = _read_small(src, src.sidecar_key(ident), "sidecar", ident)
    again = src.trusted(Sidecar.from_json(sidecar_raw, name=str(ident), cell=ident.cell))
    if again.canonical() != sidecar.canonical() or again.signature != sidecar.signature:
        raise ArchiveCorrupt(
            "its sidecar changed while it was being copied", archive=str(ident), target=src.name
        )
    _retrying(functools.partial(_transfer, src, dst, sidecar, spool, progress), src, dst, ident)
    with dst.guard(f"store archive {ident}"):
        dst.retrying(dst.put_file, manifest, dst.manifest_key(ident))
        dst.protect(sidecar, [_data_key(sidecar), dst.manifest_key(ident)])
    if verify:
        # Read back what arrived and check every member before it counts.
        with dst.open_archive(sidecar) as raw:
            verify_archive(raw, sidecar, dst.name)
    if before_commit is not None:
        before_commit()
    with dst.guard(f"commit archive {ident}"):
        dst.retrying(dst.put_bytes, dst.sidecar_key(ident), sidecar_raw)
        dst.protect(sidecar, [dst.sidecar_key(ident)])


def clear_spool(spool: Path) -> list[str]:
    """Remove what is in *spool* (a killed copy's files); return their paths."""
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


@attrs.define
class _CellCopy:
    """One cell's copy under its lease: what it has done so far, for the report."""

    src: Target
    dst: Target
    cell: str
    spool: Path
    verify: bool
    on_copied: OnCopied | None
    progress: Callable[[Sidecar, int], None] | None
    started: float
    #: Says why an archive must not be copied (``None``: copy it).
    select: Callable[[Sidecar], str | None] | None = None
    #: Called before each copy is committed on the destination (DR fencing).
    before_commit: Callable[[], object] | None = None
    stage: str = "debris"
    copied: list[str] = attrs.Factory(list)
    nbytes: int = 0
    #: Archives that could not be copied, and why.
    bad: dict[ArchiveId, str] = attrs.Factory(dict)

    def run(self, now: dt.datetime, policy: Any) -> CellSync:
        self.stage = "debris"
        debris = self.dst.clear_debris(self.cell) + clear_spool(self.spool)
        self.stage = "list"
        src_ids = self.src.archive_ids(self.cell)
        there = set(self.dst.archive_ids(self.cell))
        missing_ids = [i for i in src_ids if i not in there]
        missing = []
        for ident in missing_ids:
            try:
                missing.append(self.src.sidecar(ident))
            except ArchiveCorrupt as exc:  # a forged or unreadable sidecar fails alone
                self.bad[ident] = str(exc)
        ignored: list[str] = []
        if self.select is not None:
            reasons = {s.id: self.select(s) for s in missing}
            ignored = [f"{i}: {why}" for i, why in reasons.items() if why]
            missing = [s for s in missing if not reasons[s.id]]
        skipped: list[str] = []
        if missing and policy is not None:
            decisions = plan([*self.dst.archives(self.cell), *missing], policy, now)
            keep = {d.id for d in decisions if d.keep}
            skipped = [str(s.id) for s in missing if s.id not in keep]
            missing = [s for s in missing if s.id in keep]
        self.stage = "copy"
        self.copy_all(missing, there | {s.id for s in missing})
        hint = (
            " (take a full backup of the cell on the primary, or restore the damaged "
            "copy from another target; then sync again)"
        )
        return self.report(
            ok=not self.bad,
            present=len(src_ids) - len(missing_ids),
            skipped=tuple(skipped),
            ignored=tuple(ignored),
            debris=tuple(debris),
            stage="copy" if self.bad else None,
            error="; ".join(self.bad.values()) + hint if self.bad else None,
        )

    def copy_all(self, missing: list[Sidecar], have: set[ArchiveId]) -> None:
        """Copy *missing*, oldest first, each once its chain is whole on the destination.

        A damaged archive (or one whose chain is) fails alone: the archives
        that do not need it are still copied, so one bad copy on the object
        storage cannot keep a standby from the newer full backups.
        """
        for sidecar in sorted(missing, key=lambda s: s.id):
            gaps = [a for a in sidecar.meta.chain if a not in have or a in self.bad]
            if gaps:
                why = (
                    "could not be copied"
                    if gaps[0] in self.bad
                    else f"is on neither {self.src.name} nor {self.dst.name}"
                )
                self.bad[sidecar.id] = (
                    f"archive {sidecar.id}: its chain needs archive {gaps[0]}, which {why}"
                )
                continue
            try:
                self.copy_one(sidecar)
            except ArchiveCorrupt as exc:
                self.bad[sidecar.id] = str(exc)

    def copy_one(self, sidecar: Sidecar) -> None:
        t0 = time.monotonic()
        progress = functools.partial(self.progress, sidecar) if self.progress else None
        copy_archive(
            self.src,
            self.dst,
            sidecar,
            self.spool,
            verify=self.verify,
            progress=progress,
            before_commit=self.before_commit,
        )
        elapsed = time.monotonic() - t0
        self.copied.append(str(sidecar.id))
        self.nbytes += sidecar.size
        log.info(
            "archive.copied",
            archive=str(sidecar.id),
            source=self.src.name,
            target=self.dst.name,
            bytes=sidecar.size,
            seconds=round(elapsed, 3),
        )
        if self.on_copied is not None:
            self.on_copied(sidecar, sidecar.size, elapsed)

    def report(self, *, ok: bool, **fields: Any) -> CellSync:
        return CellSync(
            cell=self.cell,
            source=self.src.name,
            target=self.dst.name,
            ok=ok,
            copied=tuple(self.copied),
            bytes=self.nbytes,
            duration=time.monotonic() - self.started,
            **fields,
        )


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
    on_copied: OnCopied | None = None,
    progress: Callable[[Sidecar, int], None] | None = None,
    select: Callable[[Sidecar], str | None] | None = None,
    before_commit: Callable[[], object] | None = None,
) -> CellSync:
    """Make every archive of *cell* on *src* that *dst* should keep committed on *dst*.

    Under the cell's lease on *dst* (:class:`LockHeld` is turned into a
    report whose ``locked`` says who holds it): debris of interrupted runs is
    removed from *dst* and from *spool* (this cell's spool folder), then each
    missing archive is copied, oldest first, its chain before it. With a
    retention *policy* (:class:`~cellvault.retention.RetentionPolicy`),
    missing archives the destination would prune at once are not copied.
    *verify* reads each copy back completely before committing it. *select*
    says why a missing archive must not be copied (reported in ``ignored``);
    *before_commit* is called before each copy is committed.
    """
    copy = _CellCopy(
        src,
        dst,
        cell,
        spool,
        verify,
        on_copied,
        progress,
        time.monotonic(),
        select=select,
        before_commit=before_commit,
    )
    try:
        lease = Lease.acquire(dst, cell, f"{purpose} from {src.name}", lock_ttl)
    except LockHeld as exc:
        log.info("sync.locked", cell=cell, target=dst.name, holder=exc.holder)
        return copy.report(ok=True, locked=exc.message)
    except CellvaultError as exc:
        return copy.report(ok=False, stage="lock", error=str(exc))
    try:
        return copy.run(now, policy)
    except CellvaultError as exc:
        # Site reports it to the alert hooks (and logs it) as a failure of operation "sync".
        log.debug("sync.cell_failed", cell=cell, source=src.name, target=dst.name, error=str(exc))
        return copy.report(ok=False, stage=copy.stage, error=str(exc))
    finally:
        with contextlib.suppress(OSError):
            spool.rmdir()
        lease.release()
