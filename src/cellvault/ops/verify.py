"""Verify levels: ``quick``, ``read``, ``full`` and ``drill``, and the verify operation.

* **quick** reads no archive data: the sidecar is committed, the data and
  manifest objects exist, the data object has the size the sidecar records
  and, where the store reports a checksum of its own on a HEAD request (OSS's
  CRC-64, an S3 single-part ETag), that checksum matches the one recorded at
  backup time; the chain of an incremental is committed on the same target.
  It proves the stored object is the one that was written, not that every
  byte still reads back: that is ``full``.
* **read** reads every stored byte once and unpacks nothing to disk: the
  sha256 and size against the sidecar, the stream decompresses to its end
  (zstd's content checksum and gzip's CRC-32 prove the decompressed bytes are
  the ones that were compressed), ``meta.json`` is first and has
  ``backed_at``, the tar stream ends with its end-of-archive blocks, the
  manifest copy parses and names the archive, and the chain is committed. It is
  the manual's check after every backup ("the archive unpacks, ``meta.json``
  has ``backed_at``") at the cost of one decompression: the default after a
  backup (``BACKUP_VERIFY_LEVEL``).
* **full** reads every archive back and checks every member against the
  manifest (see :func:`cellvault.extract.verify_archive`), and the chain.
* **drill** restores the newest archive of a cell from one target into a
  scratch directory, compares the tree with the manifest, runs the
  ``cellvault_health_check`` hooks and measures how long it took (the RTO);
  see :mod:`cellvault.ops.drill`.

:func:`check_archive` runs one of the first three on one archive (the check
after a backup uses it too); :func:`verify` is the operation.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, cast

from ..archive import ArchiveId, Selector, Sidecar
from ..crypt import can_open, digest_only, require_all, scan_stored
from ..errors import ArchiveCorrupt, CellvaultError, ConfigError, TargetError
from ..extract import verify_archive
from ..integrity import DECOMPRESS_ERRORS, LEVELS, check_meta
from ..log import get_logger
from ..manifest import Manifest
from ..progress import CountingReader
from ..report import VerifyReport, VerifyResult
from ..run import Run
from ..state import StateFile, slot
from ..targets.base import Target
from .drill import drill
from .listing import cells_to_check
from .resources import Resources

__all__ = [
    "alert_ignored",
    "check_archive",
    "check_chain",
    "check_parents",
    "full_check",
    "quick_check",
    "read_check",
    "record_verify",
    "verify",
]

log = get_logger(__name__)


def verify(
    run: Run,
    res: Resources,
    cells: Sequence[str] | None,
    *,
    targets: Sequence[str] | None,
    select: str | Selector,
    all_archives: bool,
    level: str,
) -> VerifyReport:
    """The operation of :meth:`cellvault.Vault.verify` (see there), as *run*."""
    if level not in LEVELS:
        raise ConfigError(f"unknown verify level {level!r}", hint=f"use one of {', '.join(LEVELS)}")
    selector = select if isinstance(select, Selector) else Selector.parse(select)
    names = cells_to_check(run.config, res.targets, cells)
    tgts = res.chosen(targets)
    started = time.monotonic()
    log.info(
        "verify.started",
        run=run.id,
        verify_level=level,
        cells=names,
        targets=[t.name for t in tgts],
    )
    results: list[tuple[str, VerifyResult]] = []
    run.expect(cells=len(names) * len(tgts), unit="checks")
    for target in tgts:
        for cell in names:
            if level == "drill":
                results.append(
                    (cell, drill(run, target, cell, selector, res.dumpers.get(cell, ())))
                )
            else:
                found = verify_cell(run, target, cell, selector, level, all_archives=all_archives)
                results.extend((cell, r) for r in found)
            run.advance(f"{cell}@{target.name}", finished=True)
    record_verify(res.state, results)
    report = VerifyReport(
        results=tuple(r for _, r in results),
        level=level,
        run=run.id,
        duration=time.monotonic() - started,
    )
    log.info(
        "verify.finished",
        run=run.id,
        verify_level=level,
        ok=report.ok,
        duration=round(report.duration, 3),
    )
    return report


def verify_cell(
    run: Run, target: Target, cell: str, selector: Selector, level: str, *, all_archives: bool
) -> list[VerifyResult]:
    """Check the archives of *cell* on *target* that *selector* picks (the newest one, or all)."""
    try:
        sidecars = target.archives(cell)
    except TargetError as exc:
        run.fail("verify", str(exc), cell=cell, target=target.name)
        return [
            VerifyResult(
                archive=f"cell_{cell}",
                target=target.name,
                ok=False,
                level=level,
                error=str(exc),
            )
        ]
    alert_ignored(run, target, cell)
    committed = {s.id for s in sidecars}
    chosen = [s for s in sidecars if selector.matches(s.id)]
    if not all_archives:
        chosen = chosen[-1:]
    # A sidecar whose signature is refused fails the check of its archive.
    out = [
        VerifyResult(archive=str(i), target=target.name, ok=False, level=level, error=why)
        for i, why in sorted(target.refused(cell).items())
        if selector.matches(i) and (all_archives or not chosen or i > chosen[-1].id)
    ]
    late = ignored_results(target, cell, level, {r.archive for r in out})
    key = f"{cell}@{target.name}"
    if level != "quick":  # quick reads no data: its progress is in checks alone
        run.expect(bytes=sum(s.size for s in chosen), files=sum(s.files for s in chosen), cell=key)
    if level == "full":
        require_all(chosen)  # a sealed archive is read whole: refused at once without its key
    by_id = {s.id: s for s in sidecars}
    parents: dict[ArchiveId, str | None] = {}
    for sidecar in chosen:
        out.append(
            verify_result(run, target, sidecar, level, committed, (by_id, parents), progress=key)
        )
        if level != "quick":
            run.advance(key, files=sidecar.files, add=True)
    return out + late


def ignored_results(target: Target, cell: str, level: str, named: set[str]) -> list[VerifyResult]:
    """A failed result for each record of *cell* the listing of *target* refused, once each.

    The newest archive is still verified (these come after it), but a forged
    or damaged sidecar anywhere in the cell fails the verify (exit 1), as it
    fails ``status``: an older one included. *named* are the archives that
    already have a result.
    """
    out = []
    for _, key, error in target.distrusted():
        if not key.startswith(f"{cell}/"):
            continue
        stem = key.removeprefix(f"{cell}/").removesuffix(".json")
        archive = stem if ArchiveId.is_id(stem) else key
        if archive in named:
            continue
        named.add(archive)
        out.append(
            VerifyResult(
                archive=archive,
                target=target.name,
                ok=False,
                level=level,
                error=f"ignored {key}: {error}",
            )
        )
    return out


_ALERTED: set[tuple[str, str, str]] = set()


def alert_ignored(run: Run, target: Target, cell: str) -> None:
    """Alert, once per process, each object of *cell* on *target* that failed its checks.

    The object is ignored otherwise (see :mod:`cellvault.trust`); ``status``
    keeps naming it for as long as it is there.
    """
    for _, key, error in target.distrusted():
        if not key.startswith(f"{cell}/"):
            continue
        where = (target.spec.url, key, error)
        if where in _ALERTED:
            continue
        _ALERTED.add(where)
        run.fail(
            "check",
            f"ignored {key}: {error}",
            cell=cell,
            target=target.name,
        )


def verify_result(
    run: Run,
    target: Target,
    sidecar: Sidecar,
    level: str,
    committed: set[ArchiveId],
    chain: tuple[dict[ArchiveId, Sidecar], dict[ArchiveId, str | None]] | None = None,
    *,
    progress: str,
) -> VerifyResult:
    """Check one archive at *level*; a failure is alerted and in the result.

    With *chain* (the target's committed sidecars by id, and the outcome of
    the parents checked so far in this run), every archive the chain of an
    incremental depends on is checked too (:func:`check_parents`). The bytes
    read count in the run's progress under the key *progress*.
    """
    started = time.monotonic()
    ident = str(sidecar.id)

    def on_read(n: int) -> None:
        run.advance(progress, bytes=n, add=True)

    try:
        checks, members = check_archive(target, sidecar, level, committed, on_read=on_read)
        if chain is not None and sidecar.meta.chain:
            checks = (*checks, *check_parents(target, sidecar, level, *chain))
    except CellvaultError as exc:
        run.fail("verify", str(exc), cell=sidecar.id.cell, target=target.name, archive=ident)
        return VerifyResult(
            archive=ident,
            target=target.name,
            ok=False,
            level=level,
            error=str(exc),
            duration=time.monotonic() - started,
        )
    log.info(
        "verify.ok",
        run=run.id,
        verify_level=level,
        cell=sidecar.id.cell,
        archive=ident,
        target=target.name,
        members=members,
        checks=list(checks),
    )
    return VerifyResult(
        archive=ident,
        target=target.name,
        ok=True,
        level=level,
        members=members,
        checks=checks,
        duration=time.monotonic() - started,
    )


def check_archive(
    target: Target,
    sidecar: Sidecar,
    level: str,
    committed: set[ArchiveId],
    *,
    manifest: Manifest | None = None,
    on_read: Callable[[int], None] | None = None,
    manifest_copy_sha256: str | None = None,
) -> tuple[tuple[str, ...], int]:
    """Check a committed archive at *level* (``quick``, ``read`` or ``full``).

    *committed* are the archive ids committed on *target* (for the chain);
    *manifest_copy_sha256* and *manifest*, what a backup just wrote (see
    :func:`read_check`); *on_read* is told the bytes of the archive read.
    Returns what was compared and the members read (``full``); raises
    :class:`ArchiveCorrupt` naming the archive and target.
    """
    if level == "quick":
        return quick_check(target, sidecar, committed), 0
    if level == "read":
        checks = read_check(
            target,
            sidecar,
            committed,
            manifest_copy_sha256=manifest_copy_sha256,
            manifest=manifest,
            on_read=on_read,
        )
        return checks, 0
    return (), full_check(target, sidecar, committed, on_read=on_read)


def quick_check(target: Target, sidecar: Sidecar, committed: set[ArchiveId]) -> tuple[str, ...]:
    """Check a committed archive on *target* without reading its data.

    *committed* are the archive ids committed on the target (for the chain).
    Returns what was compared (``size``, and each checksum kind); raises
    :class:`ArchiveCorrupt` naming the archive and target otherwise.
    """
    ident = str(sidecar.id)
    key = f"{sidecar.id.cell}/{sidecar.data_name}"
    try:
        with target.guard(f"stat archive {ident}", missing_ok=True):
            found = target.retrying(target.stat, key)
    except FileNotFoundError:
        raise ArchiveCorrupt(
            "data is missing although the sidecar exists",
            archive=ident,
            target=target.name,
            hint="restore from another target; the next backup stores a new copy",
        ) from None
    if found.size != sidecar.size:
        raise ArchiveCorrupt(
            f"stored data is {found.size} bytes, the sidecar says {sidecar.size} "
            "(truncated or replaced)",
            archive=ident,
            target=target.name,
            hint="restore from another target; run 'cellvault verify --level full' to read it back",
        )
    checks = ["size"]
    for kind, value in sorted(found.checksums.items()):
        recorded = sidecar.checksums.get(kind)
        if recorded is None:
            continue
        if recorded.lower() != value.lower():
            raise ArchiveCorrupt(
                f"the store's {kind} of the data is {value}, the sidecar recorded {recorded} "
                "(the object was replaced or damaged)",
                archive=ident,
                target=target.name,
                hint="restore from another target; run 'cellvault verify --level full' to read it back",
            )
        checks.append(kind)
    try:
        with target.guard(f"stat manifest of {ident}", missing_ok=True):
            target.retrying(target.stat, target.manifest_key(sidecar.id))
    except FileNotFoundError:
        raise ArchiveCorrupt(
            "manifest copy is missing", archive=ident, target=target.name
        ) from None
    check_chain(target, sidecar, committed)
    return tuple(checks)


def read_check(
    target: Target,
    sidecar: Sidecar,
    committed: set[ArchiveId],
    *,
    manifest: Manifest | None = None,
    on_read: Callable[[int], None] | None = None,
    manifest_copy_sha256: str | None = None,
) -> tuple[str, ...]:
    """Read a committed archive on *target* once, to its end, without unpacking it.

    Checks that the stored bytes have the sidecar's size and sha256; that they
    decompress to the end (the codec's own checksum of the content, written
    by cellvault 0.1.0: zstd's XXH64, gzip's CRC-32); that ``meta.json``
    is the first member, names this archive and has ``backed_at``; that the
    tar stream ends with its end-of-archive blocks; that the manifest copy
    decompresses, parses and names this archive (and, with
    *manifest_copy_sha256*, the sha256 of the compressed copy a backup just
    wrote, is byte for byte that copy; then *manifest*, what it holds, need
    not be parsed again); and that the chain of an incremental is committed
    (*committed*). Returns what was compared; raises :class:`ArchiveCorrupt`
    naming the archive and target.
    """
    ident = str(sidecar.id)

    def corrupt(message: str, member: str | None = None) -> ArchiveCorrupt:
        return ArchiveCorrupt(
            message,
            archive=ident,
            member=member,
            target=target.name,
            hint="the stored copy is damaged; verify other targets and restore from a good one",
        )

    # Sealed, without an identity here: the stored bytes' size and sha256 only.
    keyless = not can_open(sidecar)
    with target.open_archive(sidecar) as raw, target.guard(f"read archive {ident}"):
        try:
            read = digest_only if keyless else functools.partial(scan_stored, sidecar)
            found = read(_counted(raw, on_read))
        except DECOMPRESS_ERRORS as exc:
            raise corrupt(f"data does not decompress ({exc})") from None
    if found.count != sidecar.size:
        raise corrupt(f"stored data is {found.count} bytes, the sidecar says {sidecar.size}")
    if found.sha256 != sidecar.sha256:
        raise corrupt("sha256 of the stored data differs from the sidecar")
    if keyless:
        return _keyless_rest(target, sidecar, committed, manifest_copy_sha256, corrupt)
    if not found.tar_ends:
        raise corrupt("the tar stream has no end-of-archive blocks (truncated)")
    check_meta(found.head, sidecar, corrupt)
    stored = (
        None if manifest_copy_sha256 is None else _manifest_copy_sha256(target, sidecar, corrupt)
    )
    if stored != manifest_copy_sha256:
        raise corrupt("the stored manifest copy differs from the one written")
    if manifest is None or manifest_copy_sha256 is None:
        manifest = target.manifest(sidecar)
    check_chain(target, sidecar, committed, manifest)
    return ("size", "sha256", "decompress", "meta.json", "manifest", "chain")


def _keyless_rest(
    target: Target,
    sidecar: Sidecar,
    committed: set[ArchiveId],
    manifest_copy_sha256: str | None,
    corrupt: Callable[[str], ArchiveCorrupt],
) -> tuple[str, ...]:
    """The read check of a sealed archive past its digest, without a key.

    The manifest copy is there and, with *manifest_copy_sha256* (a backup's
    check), is byte for byte the one written; the chain its meta names is
    committed.
    """
    stored = _manifest_copy_sha256(target, sidecar, corrupt)
    if manifest_copy_sha256 is not None and stored != manifest_copy_sha256:
        raise corrupt("the stored manifest copy differs from the one written")
    check_chain(target, sidecar, committed)
    return ("size", "sha256", "sealed", "chain")


def _manifest_copy_sha256(
    target: Target, sidecar: Sidecar, corrupt: Callable[[str], ArchiveCorrupt]
) -> str:
    """The sha256 of the stored manifest copy of *sidecar*, read a block at a time."""
    try:
        with target.guard(f"read manifest of {sidecar.id}", missing_ok=True):
            f = target.retrying(target.open_read, target.manifest_key(sidecar.id))
    except FileNotFoundError:
        raise corrupt("manifest copy is missing") from None
    with f, target.guard(f"read manifest of {sidecar.id}"):
        digest = hashlib.sha256()
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _counted(raw: IO[bytes], on_read: Callable[[int], None] | None) -> IO[bytes]:
    """*raw*, telling *on_read* the bytes read from it (the run's progress)."""
    return raw if on_read is None else cast(IO[bytes], CountingReader(raw, on_read))


def full_check(
    target: Target,
    sidecar: Sidecar,
    committed: set[ArchiveId],
    *,
    on_read: Callable[[int], None] | None = None,
) -> int:
    """Read a committed archive on *target* back, member by member; return the members read.

    Every member against the manifest, the sha256 against the sidecar,
    ``backed_at`` in ``meta.json`` (:func:`cellvault.extract.verify_archive`);
    the stored manifest copy against the archive's own; the chain committed.
    """
    with target.open_archive(sidecar) as raw:
        _, manifest, members = verify_archive(_counted(raw, on_read), sidecar, target.name)
    # Incrementals and restore planning trust the stored manifest copy: it
    # must say exactly what the archive's own manifest says.
    if not target.manifest(sidecar).same_as(manifest):
        raise ArchiveCorrupt(
            "the stored manifest copy differs from the archive's manifest.json",
            archive=str(sidecar.id),
            target=target.name,
            hint="take a new full backup; restore this archive from another target",
        )
    check_chain(target, sidecar, committed, manifest)
    return members


def check_parents(
    target: Target,
    sidecar: Sidecar,
    level: str,
    by_id: dict[ArchiveId, Sidecar],
    seen: dict[ArchiveId, str | None],
) -> tuple[str, ...]:
    """Check every archive the chain of *sidecar* depends on, as a chain.

    Each parent gets the quick check (committed, size, the store's own
    checksums); above ``quick``, its data is read once and its sha256
    compared with its sidecar's: a digest check, far cheaper than unpacking
    each. *seen* remembers each parent's outcome across the archives of one
    run. Raises :class:`ArchiveCorrupt` naming the broken link; returns
    ``("chain-digest",)`` or ``("chain-quick",)``.
    """
    for parent_id in sidecar.meta.chain:
        parent = by_id.get(parent_id)
        if parent is None:
            problem: str | None = "it is not committed (or its sidecar is unusable) on this target"
        else:
            if parent_id not in seen:
                seen[parent_id] = _parent_problem(target, parent, level, set(by_id))
            problem = seen[parent_id]
        if problem is not None:
            raise ArchiveCorrupt(
                f"its chain is broken: archive {parent_id}, which it depends on, is damaged "
                f"({problem})",
                archive=str(sidecar.id),
                target=target.name,
                hint="this archive cannot be restored from this target; restore from another "
                "target, and take a full backup (the next backup is a full one by itself)",
            )
    return ("chain-quick",) if level == "quick" else ("chain-digest",)


def _parent_problem(
    target: Target, parent: Sidecar, level: str, committed: set[ArchiveId]
) -> str | None:
    """What is wrong with one archive of a chain, or ``None``."""
    try:
        quick_check(target, parent, committed)
        if level != "quick":
            digest = hashlib.sha256()
            size = 0
            with target.open_archive(parent) as raw:
                for block in iter(lambda: raw.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
            if size != parent.size or digest.hexdigest() != parent.sha256:
                return f"its data does not match its sidecar's sha256 ({size} bytes read)"
    except ArchiveCorrupt as exc:
        return exc.detail
    return None


def check_chain(
    target: Target,
    sidecar: Sidecar,
    committed: set[ArchiveId],
    manifest: Manifest | None = None,
) -> None:
    """Every archive the chain of *sidecar* needs is in *committed*.

    The chain its meta names and, with *manifest*, every archive holding
    one of its files. Raises :class:`ArchiveCorrupt` naming the first missing.
    """
    needed = {str(a) for a in sidecar.meta.chain}
    if manifest is not None:
        needed |= manifest.holders()
    for holder in sorted(needed - {str(sidecar.id)}):
        if ArchiveId.parse(holder) not in committed:
            raise ArchiveCorrupt(
                f"its chain needs archive {holder}, which is not committed on this target",
                archive=str(sidecar.id),
                target=target.name,
                hint="restore from another target, or take a full backup",
            )


def record_verify(state: StateFile, results: Sequence[tuple[str, VerifyResult]]) -> None:
    """Remember the last result of each verify level (and drill) per cell and target."""
    checked = time.time()

    def change(data: dict[str, Any]) -> None:
        for cell, result in results:
            entry = slot(data, cell, result.target)
            record = {
                "ok": result.ok,
                "at": checked,
                "archive": result.archive if ArchiveId.is_id(result.archive) else None,
                "error": result.error,
                "duration": round(result.duration, 3),
            }
            if result.level == "drill":
                entry["drill"] = record | {
                    "rto": None if result.rto is None else round(result.rto, 3),
                    "files": result.files,
                    "bytes": result.bytes,
                }
            else:
                entry.setdefault("verify", {})[result.level] = record

    state.update(change)
