"""Storing one packed archive to every target, and the check after a backup."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs

from ..archive import Sidecar
from ..errors import CellvaultError, Fenced, TargetError
from ..fence import Fence
from ..lock import Lease
from ..log import get_logger
from ..manifest import Manifest
from ..pack import PackResult
from ..report import TargetOutcome
from ..run import Run, error_text
from ..runlog import carry
from ..targets.base import Target
from .verify import check_archive

__all__ = ["check_stored", "store", "store_all"]

log = get_logger(__name__)


def store_all(
    run: Run,
    targets: Sequence[Target],
    result: PackResult,
    sidecar: Sidecar,
    *,
    fence: Fence | None = None,
    leases: Mapping[str, Lease] | None = None,
) -> list[TargetOutcome]:
    """Store the packed archive to every target at once; one outcome per target, in order.

    With *leases* (target name -> the cell's lease there), each commit first
    proves the lease is still this run's, and the sidecar records its token.
    """
    one = functools.partial(
        store, run, result=result, sidecar=sidecar, fence=fence, leases=leases or {}
    )
    with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="store") as pool:
        return list(pool.map(carry(one), targets))


def store(
    run: Run,
    target: Target,
    result: PackResult,
    sidecar: Sidecar,
    fence: Fence | None = None,
    leases: Mapping[str, Lease] | None = None,
) -> TargetOutcome:
    """Store the packed archive to *target*, then check it there (``verify_after_backup``).

    A failure is alerted and in the outcome; a copy that does not verify is
    uncommitted (its sidecar deleted), so it never counts. On a shared target
    (*fence*), the site proves it still holds the DR epoch just before the
    commit; fenced, the copy stays uncommitted (stage ``fence``).
    """
    started = time.monotonic()
    ident = str(sidecar.id)
    stage = "upload"
    guard = None
    if fence is not None and target.name in fence.names:
        guard = functools.partial(_still_active, fence, ident, target.name)
    lease = (leases or {}).get(target.name)
    if lease is not None:
        # The fencing token: a run whose lease was taken over commits nothing.
        sidecar = attrs.evolve(sidecar, lease=lease.token)
        guard = functools.partial(_still_held, lease, guard)
    # Signed last, over every field (the lease token included): cellvault.signing.
    sidecar = target.signing_keys.sign(sidecar)
    try:
        target.store(result.data_path, result.manifest_path, sidecar, before_commit=guard)
        log.info(
            "archive.stored", run=run.id, cell=sidecar.id.cell, archive=ident, target=target.name
        )
        run.emit("archive.stored", cell=sidecar.id.cell, archive=ident, target=target.name)
        verified = False
        if run.config.verify_after_backup:
            stage = "verify"
            check_stored(run, target, result, sidecar)
            verified = True
        return TargetOutcome(
            target=target.name,
            ok=True,
            bytes_stored=sidecar.size,
            duration=time.monotonic() - started,
            verified=verified,
        )
    except Exception as exc:
        error = error_text(exc)
        if isinstance(exc, Fenced):
            stage = "fence"
        if not isinstance(exc, CellvaultError):
            log.exception("store.crashed", target=target.name, archive=ident)
        if stage == "verify":
            # A copy that does not verify must not count: uncommit it.
            with contextlib.suppress(Exception):
                target.uncommit(sidecar)
        run.fail(stage, error, cell=sidecar.id.cell, target=target.name, archive=ident)
        return TargetOutcome(
            target=target.name,
            ok=False,
            stage=stage,
            error=error,
            duration=time.monotonic() - started,
        )


def _still_held(lease: Lease, then: Callable[[], object] | None) -> None:
    lease.check()
    if then is not None:
        then()


def _still_active(fence: Fence, archive: str, target: str) -> None:
    fence.check(f"committing archive {archive} to target {target}")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_stored(run: Run, target: Target, result: PackResult, sidecar: Sidecar) -> None:
    """Check the archive just stored on *target* at the configured ``verify_level``."""
    level = run.config.verify_level
    committed = set(target.archive_ids(sidecar.id.cell))
    # The manifest copy must be, byte for byte, the one this run wrote.
    copy = _sha256_of(result.manifest_path) if level == "read" else None
    for attempt in range(3):
        try:
            check_archive(
                target,
                sidecar,
                level,
                committed,
                manifest_copy_sha256=copy,
                manifest=Manifest.naming(str(sidecar.id), result.holders),
            )
            break
        except TargetError as exc:
            # The store failed a read mid-stream (a 503): that says nothing about the
            # copy; read it back again rather than uncommit a good archive.
            if attempt == 2:
                raise
            log.warning(
                "archive.reread", target=target.name, archive=str(sidecar.id), error=str(exc)
            )
    log.info(
        "archive.verified",
        run=run.id,
        cell=sidecar.id.cell,
        archive=str(sidecar.id),
        target=target.name,
        verify_level=level,
    )
    run.emit("archive.verified", cell=sidecar.id.cell, archive=str(sidecar.id), target=target.name)
