"""Re-encrypting stored archives to the current recipients (``cellvault rekey``).

After a key rotation new archives are sealed to the new recipients by
themselves; ``rekey`` brings chosen older ones along, so that the old
identity can be retired. Each archive is decrypted and encrypted again as
one stream (:func:`cellvault.crypt.reseal`), never decompressed, into the
spool; then stored as a new object beside the old one (``<id>.k1.tar.zst.age``,
``.k2``, ...) with its manifest copy, and committed by its sidecar, which
names the new object, size, sha256 and recipients, exactly as a backup commits
an archive (:meth:`Target.store`). The old object is deleted last. An
archive stored in the clear is sealed the same way.

A rekey interrupted before the sidecar is written leaves the archive as it
was (the new object is debris of a committed archive, removed by the next
rekey of that archive); interrupted after, it left an old object the next
rekey removes too.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Sequence

import attrs

from ..archive import Selector, Sidecar
from ..crypt import Recipients, reseal, reseal_small, resealed_name
from ..errors import CellvaultError, ConfigError
from ..integrity import content_checksums
from ..lock import Lease
from ..log import get_logger
from ..report import Report
from ..run import Run
from ..targets.base import Target
from .listing import cells_to_check
from .resources import Resources

__all__ = ["RekeyReport", "RekeyResult", "rekey"]

log = get_logger(__name__)


@attrs.frozen
class RekeyResult:
    """One archive on one target: re-encrypted, already right, or why not."""

    archive: str
    target: str
    ok: bool
    #: ``rekeyed``, ``current`` (already sealed to exactly these recipients), ``locked``
    #: (under the target's object lock: nothing was written; run rekey again after
    #: the date in :attr:`error`) or ``failed``.
    outcome: str
    data: str | None = None
    recipients: tuple[str, ...] = ()
    error: str | None = None


@attrs.frozen
class RekeyReport(Report):
    """What :meth:`cellvault.Vault.rekey` did, archive by archive."""

    results: tuple[RekeyResult, ...]
    recipients: tuple[str, ...]
    run: str
    duration: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def rekey(
    run: Run,
    res: Resources,
    cells: Sequence[str] | None,
    *,
    targets: Sequence[str] | None,
    select: str | Selector,
    all_archives: bool,
) -> RekeyReport:
    """The operation of :meth:`cellvault.Vault.rekey` (see there), as *run*."""
    recipients = res.recipients
    if not recipients:
        raise ConfigError(
            "rekey needs the recipients to encrypt to",
            hint="set BACKUP_ENCRYPT_RECIPIENTS or BACKUP_ENCRYPT_RECIPIENTS_FILE",
        )
    selector = select if isinstance(select, Selector) else Selector.parse(select)
    started = time.monotonic()
    results: list[RekeyResult] = []
    tgts = res.chosen(targets)
    names = cells_to_check(run.config, tgts, cells)
    log.info("rekey.started", run=run.id, cells=names, recipients=list(recipients.fingerprints))
    for target in tgts:
        for cell in names:
            results += _rekey_cell(run, target, cell, selector, all_archives, recipients)
    report = RekeyReport(
        tuple(results), recipients.fingerprints, run.id, time.monotonic() - started
    )
    log.info("rekey.finished", run=run.id, ok=report.ok, archives=len(results))
    return report


def _rekey_cell(
    run: Run,
    target: Target,
    cell: str,
    selector: Selector,
    all_archives: bool,
    recipients: Recipients,
) -> list[RekeyResult]:
    """Rekey the chosen archives of *cell* on *target*, holding the cell's lease there."""
    try:
        lease = Lease.acquire(target, cell, f"rekey run {run.id}", run.config.lock_ttl)
    except CellvaultError as exc:
        run.fail("rekey", str(exc), cell=cell, target=target.name)
        return [RekeyResult(f"cell_{cell}", target.name, False, "failed", error=str(exc))]
    try:
        sidecars = target.archives(cell)
        chosen = [s for s in sidecars if selector.matches(s.id)]
        if not all_archives:
            chosen = chosen[-1:]
        return [_rekey_one(run, target, s, recipients, lease.token) for s in chosen]
    finally:
        lease.release()


def _rekey_one(
    run: Run, target: Target, sidecar: Sidecar, recipients: Recipients, token: str
) -> RekeyResult:
    ident = str(sidecar.id)
    if sidecar.encryption == recipients.fingerprints:
        return RekeyResult(
            ident, target.name, True, "current", sidecar.data_name, recipients.fingerprints
        )
    until = target.locked_until(sidecar)
    if until is not None:
        # Rewriting would fail half-way on a store that refuses to change it (or, on a
        # versioned bucket, keep the old ciphertext anyway): check before writing.
        why = (
            f"archive {ident} on target {target.name} is under object lock until "
            f"{until:%Y-%m-%d %H:%M} UTC; its objects cannot be rewritten before then, so it "
            "stays sealed to its old recipients: keep the old identity until that date, then "
            "run rekey again"
        )
        run.fail("rekey", why, cell=sidecar.id.cell, target=target.name, archive=ident)
        return RekeyResult(ident, target.name, False, "locked", sidecar.data_name, error=why)
    spool = run.layout.run_spool(run.id)
    spool.mkdir(parents=True, exist_ok=True)
    name = resealed_name(sidecar.data_name)
    data, manifest = spool / name, spool / f"{ident}.manifest.json.zst.age"
    try:
        _clear_stale(target, sidecar)
        # A lock whose date has passed may still hold (the local immutable attribute).
        target.unlock_expired(sidecar)
        with target.open_archive(sidecar) as raw, target.guard(f"read archive {ident}"):
            size, sha256 = reseal(raw, sidecar, data, recipients)
        with target.guard(f"read manifest of {ident}"):
            stored = target.retrying(target.read_bytes, target.manifest_key(sidecar.id))
        manifest.write_bytes(reseal_small(stored, sidecar, recipients))
        new = attrs.evolve(
            sidecar,
            data_name=name,
            size=size,
            sha256=sha256,
            checksums=content_checksums(data, set(target.stat_checksums)),
            encryption=recipients.fingerprints,
            lease=token,
            manifest_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest(),
        )
        # Signed again (cellvault.signing): the old signature covered the old bytes.
        target.store(data, manifest, target.signing_keys.sign(new))
        if sidecar.data_name != name:
            with target.guard(f"delete the old data of {ident}"):
                target.retrying(target.delete, f"{sidecar.id.cell}/{sidecar.data_name}")
    except CellvaultError as exc:
        run.fail("rekey", str(exc), cell=sidecar.id.cell, target=target.name, archive=ident)
        return RekeyResult(ident, target.name, False, "failed", sidecar.data_name, error=str(exc))
    finally:
        for path in (data, manifest):
            with contextlib.suppress(OSError):
                path.unlink()
    log.info("archive.rekeyed", archive=ident, target=target.name, data_name=name)
    run.emit("archive.rekeyed", cell=sidecar.id.cell, archive=ident, target=target.name)
    return RekeyResult(ident, target.name, True, "rekeyed", name, recipients.fingerprints)


def _clear_stale(target: Target, sidecar: Sidecar) -> None:
    """Delete the data objects of *sidecar*'s archive that its sidecar does not name.

    What an interrupted rekey left: a new object never committed, or an old
    one not yet deleted. Only called with the cell's lease held.
    """
    ident = str(sidecar.id)
    keep = {sidecar.data_name, f"{ident}.json", f"{ident}.manifest.json.zst"}
    with target.guard(f"list archives of cell {sidecar.id.cell}"):
        entries = target.retrying(target.list, sidecar.id.cell)
    for entry in entries:
        name = entry.name
        if entry.is_dir or name in keep or not name.startswith(ident + "."):
            continue
        if name.endswith((".tar.zst", ".tar.gz", ".age")):
            with target.guard(f"delete {name}"):
                target.retrying(target.delete, f"{sidecar.id.cell}/{name}")
            log.info("rekey.stale_removed", target=target.name, key=f"{sidecar.id.cell}/{name}")
