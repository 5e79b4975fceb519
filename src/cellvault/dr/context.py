"""What every DR step of one site works with: the vault, the two sides, the markers.

A :class:`SiteContext` is built once by :class:`~cellvault.dr.Site` and
handed to the step functions (:mod:`~cellvault.dr.replicate`,
:mod:`~cellvault.dr.failover`, :mod:`~cellvault.dr.failback`, ...), which
use the vault only through its public API.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..archive import Selector, Sidecar
from ..errors import CellvaultError, ConfigError, TargetError
from ..fence import Epoch, Fence
from ..layout import BackupDirLayout
from ..log import get_logger
from ..plugins import call_each
from ..report import RestoreReport, VerifyReport, VerifyResult
from ..run import error_text
from ..targets.base import Target
from ..vault import Vault
from .holdings import cells_of, holdings
from .markers import MarkerStore
from .records import FailoverMarker, Holding, SiteRecord
from .reports import HookOutcome
from .settings import DrSettings

__all__ = [
    "SiteContext",
    "hooks_error",
    "restore_error",
    "restored_archives",
    "verify_error",
]

log = get_logger(__name__)


@attrs.frozen
class SiteContext:
    """One site of a DR pair: its id, its vault, its own target and the object storage."""

    vault: Vault
    settings: DrSettings
    site_id: str
    #: The site's own backup directory (the vault's first target).
    local: Target
    #: The object-storage targets of the pair.
    storage: list[Target]

    @property
    def layout(self) -> BackupDirLayout:
        return BackupDirLayout(self.vault.config.backup_dir)

    @property
    def fence(self) -> Fence:
        """This site's fencing: its id and the object storage the epochs live on."""
        return Fence(self.site_id, self.storage, dr=True)

    def take_epoch(self, reason: str, *, over: int | None = None) -> Epoch:
        """Claim the next DR epoch for this site (:meth:`cellvault.fence.Fence.take`).

        A site that holds the current epoch already keeps it (a failover run
        again after a failed restore). *over*: the epoch number seen when the
        step started; a claim by another site since then wins. :class:`DrError`
        when another site won.
        """
        self.need_storage("taking the DR epoch")
        return self.fence.take(reason, now=self.now(), host=self.vault.host, over=over)

    @property
    def markers(self) -> MarkerStore:
        return MarkerStore(self.storage, self.layout.dr)

    def now(self) -> dt.datetime:
        """The vault's clock, in UTC, to the second."""
        now = self.vault.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        return now.astimezone(dt.UTC).replace(microsecond=0)

    def need_storage(self, what: str) -> None:
        """:class:`ConfigError` when there is no object storage for *what*."""
        if not self.storage:
            raise ConfigError(
                f"{what} needs an object-storage target, and only {self.local.name} is configured",
                hint="add one, e.g. BACKUP_TARGETS=local,s3 with BACKUP_S3_BUCKET, on both sites",
            )

    def spool(self, dst: Target, cell: str) -> Path:
        """The spool folder of copies of *cell* to *dst*."""
        return self.layout.sync_spool / dst.name / cell

    def policy(self, target: Target) -> Any:
        """*target*'s retention policy, if the configuration has one."""
        retention_for = getattr(self.vault.config, "retention_for", None)
        return retention_for(target.name) if retention_for is not None else None

    def record(self, action: str) -> list[str]:
        """Write this site's record to the storage; return warnings (never fails a step)."""
        try:
            record = SiteRecord(
                site_id=self.site_id,
                host=self.vault.host,
                at=self.now(),
                action=action,
                cells=self.holdings(),
            )
        except CellvaultError as exc:
            return [f"cannot read this site's holdings for its site record: {exc}"]
        return self.markers.write_record(record)

    def holdings(self, target: Target | None = None) -> dict[str, Holding]:
        """What *target* (default: this site's backup directory) holds, per cell."""
        return holdings(target or self.local)

    def previous_site(self) -> str | None:
        """The other site that most recently pushed (or else did any DR step)."""
        pushers = [r for r in self.markers.records() if r.site_id != self.site_id]
        pushers.sort(key=lambda r: (r.action == "push", r.at))
        return pushers[-1].site_id if pushers else None

    def choose(self, cell: str, selector: Selector) -> Sidecar | None:
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

    def verify(self, chosen: Mapping[str, Sidecar]) -> VerifyReport:
        """Verify each chosen archive fully on this site's backup directory."""
        results: list[VerifyResult] = []
        for cell, sidecar in chosen.items():
            report = self.vault.verify([cell], targets=[self.local.name], select=str(sidecar.id))
            results.extend(report.results)
        return VerifyReport(results=tuple(results))

    def restore(
        self, chosen: Iterable[str], selector: Selector, *, skip_prebackup: bool
    ) -> RestoreReport | None:
        """Restore those of the *chosen* cells that are configured here, from this site.

        ``None`` when none of them is configured (nothing was restored).
        """
        cells = [c for c in chosen if c in self.configured()]
        if not cells:
            return None
        return self.vault.restore(
            selector, cells=cells, skip_prebackup=skip_prebackup, source=[self.local.name]
        )

    def configured(self) -> set[str]:
        """The cells the configuration names."""
        return {c.name for c in self.vault.config.cells}

    def cells_here(self) -> list[str]:
        """The configured cells, or else those with archives on this site."""
        configured = [c.name for c in self.vault.config.cells]
        return configured or cells_of(self.local)

    def storage_cells(self) -> list[str]:
        """The cells on the first storage target that can be listed."""
        for target in self.storage:
            with contextlib.suppress(TargetError):
                return cells_of(target)
        return []

    def failover_hooks(self, marker: FailoverMarker) -> list[HookOutcome]:
        """Call each ``cellvault_failover`` implementation with *marker*; report each."""
        out = []
        for outcome in call_each(self.vault.plugins, "cellvault_failover", marker=marker):
            if outcome.exception is None:
                out.append(HookOutcome(outcome.plugin, True))
                continue
            error = error_text(outcome.exception)
            log.error("dr.hook_failed", plugin=outcome.plugin, error=error)
            out.append(HookOutcome(outcome.plugin, False, error))
        return out

    def switch_traffic(self, marker: FailoverMarker) -> list[HookOutcome]:
        """Call each ``cellvault_switch_traffic`` implementation that is configured; report each."""
        out = []
        outcomes = call_each(
            self.vault.plugins,
            "cellvault_switch_traffic",
            site=marker.site_id,
            previous_site=marker.previous_site,
            event=marker.event,
            config=self.vault.config,
        )
        for outcome in outcomes:
            if outcome.exception is None:
                # pluggy drops a None result: an implementation not configured gives [].
                if outcome.result is not None and outcome.result != []:
                    log.info("dr.traffic_switched", plugin=outcome.plugin, done=outcome.result)
                    out.append(HookOutcome(outcome.plugin, True, detail=str(outcome.result)))
                continue
            error = error_text(outcome.exception)
            log.error("dr.traffic_switch_failed", plugin=outcome.plugin, error=error)
            out.append(HookOutcome(outcome.plugin, False, error))
        return out


def restored_archives(report: RestoreReport | None) -> dict[str, str]:
    """cell -> the archive *report* restored into it."""
    return {c.cell: c.archive or "" for c in report.cells} if report is not None else {}


def verify_error(report: VerifyReport) -> str:
    """What the failed results of *report* say, in one line."""
    return "; ".join(f"{r.archive}: {r.error}" for r in report.results if not r.ok)


def hooks_error(hooks: Sequence[HookOutcome], done: str, then: str) -> str | None:
    """The report's error when failover hooks failed after *done*; ``None`` when none did."""
    failed = [h for h in hooks if not h.ok]
    if not failed:
        return None
    return (
        f"{done}, but hook(s) failed: "
        + "; ".join(f"{h.plugin}: {h.error}" for h in failed)
        + f"; {then}"
    )


def restore_error(report: RestoreReport) -> str:
    """What a failed restore says, in one line."""
    if report.error:
        return report.error
    return "; ".join(f"cell {c.cell}: {c.stage}: {c.error}" for c in report.cells if not c.ok)
