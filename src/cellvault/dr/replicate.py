"""Push and pull: copy what one side misses from the other, as one ``sync`` run.

The primary pushes its backups to the object storage (the seed's
``sync_backup_to_dr.sh``); the standby pulls them into its own backup
directory every few minutes (``DR_PULL_ONLY=1``). Each push or pull is a
:class:`~cellvault.run.Run` of operation ``sync``: its own run id and run log
(``<backup_dir>/logs/sync_<stamp>.log``), its events (``archive.copied``,
``sync.progress``) and its failed copies alerted as failures of ``sync``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs

from ..archive import Sidecar
from ..crypt import using
from ..errors import CellvaultError, ConfigError, DrError, Fenced, TargetError
from ..fence import Epoch, written_after_fence
from ..log import get_logger
from ..report import iso
from ..run import Run, open_run
from ..runlog import carry
from ..targets.base import Target
from .context import SiteContext
from .holdings import cells_of
from .reports import CellSync, SyncReport
from .sync import copy_cell

__all__ = ["copy_pairs", "pull", "push"]

log = get_logger(__name__)


@contextlib.contextmanager
def _sync_run(ctx: SiteContext, mode: str, pairs: list[tuple[Target, Target]]) -> Iterator[Run]:
    """The ``sync`` run of a push or a pull, its start and end in its run log."""
    vault = ctx.vault
    with (
        using(vault.keyring),  # sync --verify reads sealed archives through it
        open_run(
            "sync",
            config=vault.config,
            plugins=vault.plugins,
            host=vault.host,
            on_event=vault.on_event,
        ) as run,
    ):
        log.info(
            "sync.started",
            mode=mode,
            site=ctx.site_id,
            pairs=[f"{src.name} -> {dst.name}" for src, dst in pairs],
        )
        yield run


@attrs.frozen
class _Rules:
    """What a sync copies (*select* says why not) and checks before each commit."""

    select: Callable[[Sidecar], str | None] | None = None
    before_commit: Callable[[], object] | None = None


def _not_safety(include_safety: bool, sidecar: Sidecar) -> str | None:
    """Safety backups stay on the site that took them, unless asked (``--include-safety``)."""
    if sidecar.meta.reason == "pre-restore" and not include_safety:
        return "a pre-restore safety backup (stays on the site that took it; --include-safety)"
    return None


def _pullable(include_safety: bool, current: Epoch | None, sidecar: Sidecar) -> str | None:
    """Why a pull leaves *sidecar* on the storage: a safety backup, or a fenced site's late write."""
    meta = sidecar.meta
    if current is not None and written_after_fence(meta.epoch, sidecar.id.when, current):
        return (
            f"written by site {meta.site} under epoch {meta.epoch} after site {current.site} "
            f"took epoch {current.number} at {iso(current.at)}: a fenced site's write, ignored"
        )
    return _not_safety(include_safety, sidecar)


def _copy_one(
    ctx: SiteContext,
    run: Run,
    pair: tuple[Target, Target],
    cell: str,
    *,
    now: dt.datetime,
    mode: str,
    verify: bool,
    rules: _Rules,
) -> CellSync:
    src, dst = pair
    result = copy_cell(
        src,
        dst,
        cell,
        spool=ctx.spool(dst, cell),
        now=now,
        policy=ctx.policy(dst),
        verify=verify,
        lock_ttl=ctx.vault.config.lock_ttl,
        purpose=mode,
        on_copied=lambda s, n, secs: run.emit(
            "archive.copied",
            cell=s.id.cell,
            archive=str(s.id),
            target=dst.name,
            source=src.name,
            bytes=n,
            seconds=secs,
        ),
        progress=lambda s, n: _progress(run, s, dst.name, n),
        select=rules.select,
        before_commit=rules.before_commit,
    )
    if not result.ok:
        # The alert hooks hear of a failed copy as of a failed upload.
        run.fail(mode, result.error or "failed", cell=result.cell, target=result.target)
    return result


def _progress(run: Run, sidecar: Sidecar, target: str, done: int) -> None:
    """A copy's progress: its ``sync.progress`` event, and the run's meter (one unit an archive)."""
    ident = str(sidecar.id)
    run.emit(
        "sync.progress",
        cell=sidecar.id.cell,
        archive=ident,
        target=target,
        bytes=done,
        total=sidecar.size,
    )
    key = f"{ident}@{target}"
    meter = run.meter or run.expect(unit="archives")
    if key not in meter.expected:
        run.expect(cells=1, bytes=sidecar.size, files=sidecar.files, cell=key)
    run.advance(key, bytes=done, finished=done >= sidecar.size)


def copy_pairs(
    ctx: SiteContext,
    run: Run,
    pairs: Iterable[tuple[Target, Target]],
    cells: Sequence[str] | None,
    *,
    mode: str,
    verify: bool,
    rules: _Rules | None = None,
) -> list[CellSync]:
    """Copy *cells* (default: every cell of each source) for each (source, destination) pair."""
    rules = rules or _Rules()
    now = ctx.now()
    out: list[CellSync] = []
    for src, dst in pairs:
        if cells:
            names = list(dict.fromkeys(cells))
        else:
            try:
                names = cells_of(src)
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

        def one(cell: str, pair: tuple[Target, Target] = (src, dst)) -> CellSync:
            return _copy_one(ctx, run, pair, cell, now=now, mode=mode, verify=verify, rules=rules)

        with ThreadPoolExecutor(
            max_workers=ctx.vault.config.jobs, thread_name_prefix="sync"
        ) as pool:
            out.extend(pool.map(carry(one), names))
    return out


def push(
    ctx: SiteContext,
    cells: Sequence[str] | None = None,
    *,
    source: str | None = None,
    to: Sequence[str] | None = None,
    verify: bool = False,
    include_safety: bool = False,
) -> SyncReport:
    """See :meth:`cellvault.dr.Site.push`."""
    started = time.monotonic()
    src = ctx.vault.target(source) if source else ctx.local
    dsts = [ctx.vault.target(n) for n in to] if to else list(ctx.storage)
    if not dsts:
        ctx.need_storage("a push")
    if any(d is src for d in dsts):
        raise ConfigError(f"cannot push target {src.name} to itself")
    marker, where = ctx.markers.current()
    if marker is not None and marker.site_id != ctx.site_id:
        raise DrError(
            f"site {marker.site_id} is active since {iso(marker.at)} (failover marker on "
            f"{where}); this site ({ctx.site_id}) must not push its archives until failback",
            hint=f"on site {marker.site_id} run 'cellvault dr failback' first, then here; "
            "if this site IS the one serving, set DR_SITE_ID to its id",
        )
    pairs = [(src, d) for d in dsts]
    with _sync_run(ctx, "push", pairs) as run:
        try:
            ctx.fence.check("push")
        except Fenced as exc:
            run.fail("fence", str(exc))
            raise
        rules = _Rules(
            select=functools.partial(_not_safety, include_safety),
            before_commit=functools.partial(ctx.fence.check, "committing a pushed archive"),
        )
        results = copy_pairs(ctx, run, pairs, cells, mode="push", verify=verify, rules=rules)
        warnings = ctx.record("push")
        return _report(ctx, "push", results, warnings, started)


def pull(
    ctx: SiteContext,
    cells: Sequence[str] | None = None,
    *,
    source: Sequence[str] | None = None,
    verify: bool = False,
    record: bool = True,
    include_safety: bool = False,
) -> SyncReport:
    """See :meth:`cellvault.dr.Site.pull`."""
    started = time.monotonic()
    srcs = [ctx.vault.target(n) for n in source] if source else list(ctx.storage)
    if not srcs:
        ctx.need_storage("a pull")
    if any(s is ctx.local for s in srcs):
        raise ConfigError(f"cannot pull target {ctx.local.name} into itself")
    pairs = [(s, ctx.local) for s in srcs]
    current = ctx.fence.current()
    with _sync_run(ctx, "pull", pairs) as run:
        rules = _Rules(select=functools.partial(_pullable, include_safety, current))
        results = copy_pairs(ctx, run, pairs, cells, mode="pull", verify=verify, rules=rules)
        for c in results:
            for line in c.ignored:
                log.warning("sync.ignored", cell=c.cell, source=c.source, archive=line)
        warnings = _after_pull(ctx) if record else []
        return _report(ctx, "pull", results, warnings, started)


def _report(
    ctx: SiteContext, mode: str, results: list[CellSync], warnings: list[str], started: float
) -> SyncReport:
    report = SyncReport(
        mode=mode,
        site=ctx.site_id,
        cells=tuple(results),
        duration=time.monotonic() - started,
        warnings=tuple(warnings),
    )
    log.info(
        "sync.finished",
        mode=mode,
        ok=report.ok,
        copied=len(report.copied),
        bytes=report.bytes,
        duration=round(report.duration, 3),
    )
    return report


def _after_pull(ctx: SiteContext) -> list[str]:
    """Retire a marker the other site's failback ended, and record what this site holds."""
    warnings: list[str] = []
    with contextlib.suppress(CellvaultError):
        ended = ctx.markers.reconcile()
        if ended is not None:
            log.info("dr.marker_cleared", site=ctx.site_id, was_active=ended.site_id)
            warnings.append(
                f"the failover to site {ended.site_id} of {iso(ended.at)} has ended (the object "
                "storage no longer holds its marker): this site's copy was moved to its history"
            )
    return warnings + ctx.record("pull")
