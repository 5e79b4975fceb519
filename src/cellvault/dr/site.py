"""The :class:`Site` façade: one side of a DR pair, every DR step as one method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DrError
from ..fence import Heartbeat, write_heartbeat
from ..targets.base import Target
from ..vault import Vault
from . import failback, failover, prepare, replicate, status
from .context import SiteContext
from .records import FailoverMarker, Holding, SiteRecord
from .reports import (
    FailbackReport,
    FailoverReport,
    PrepareReport,
    StatusReport,
    SyncReport,
    TargetCheck,
)
from .settings import DrSettings, host_site_id, validate_site_id
from .watch import Watcher, WatchSettings

__all__ = ["Site"]


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
        settings = settings or DrSettings.from_config(vault.config)
        local: Target = vault.targets[0]
        names = list(storage or settings.storage)
        if names:
            others = [vault.target(n) for n in dict.fromkeys(names)]
        else:
            others = list(vault.targets[1:])
        if any(t is local for t in others):
            raise ConfigError(
                f"target {local.name} is this site's own backup directory, not the object storage",
                hint="DR_TARGET names the object-storage targets, e.g. DR_TARGET=s3",
            )
        #: What the step functions of :mod:`cellvault.dr` work with.
        self.context = SiteContext(
            vault=vault,
            settings=settings,
            site_id=validate_site_id(site_id or settings.site_id or host_site_id()),
            local=local,
            storage=others,
        )
        # The vault's own writers (backup, prune) are fenced as this site.
        vault.fence = self.context.fence

    def __repr__(self) -> str:
        return f"<Site {self.site_id} local={self.local.name} storage={[t.name for t in self.storage]}>"

    @property
    def vault(self) -> Vault:
        return self.context.vault

    @property
    def settings(self) -> DrSettings:
        return self.context.settings

    @property
    def site_id(self) -> str:
        return self.context.site_id

    @property
    def local(self) -> Target:
        """The site's own backup directory (the vault's first target)."""
        return self.context.local

    @property
    def storage(self) -> list[Target]:
        """The object-storage targets of the pair."""
        return self.context.storage

    @property
    def state_dir(self) -> Path:
        """``<backup_dir>/.cellvault/dr``."""
        return self.context.layout.dr

    # -- markers and records ----------------------------------------------------

    @property
    def local_marker_path(self) -> Path:
        """``<backup_dir>/.cellvault/dr/failover.json``."""
        return self.context.markers.local_path

    def local_marker(self) -> FailoverMarker | None:
        """The marker as this site last wrote or saw it, or ``None``."""
        return self.context.markers.local()

    def remote_marker(self) -> tuple[FailoverMarker | None, str | None, list[str]]:
        """The marker on the object storage: (marker, target it was read from, errors).

        Every storage target is asked; the first that answers decides. When
        none answers, the errors say why.
        """
        return self.context.markers.remote()

    def marker(self) -> tuple[FailoverMarker | None, str | None]:
        """The failover marker in effect and where it was read (a target name or ``local``).

        The object storage decides when it can be read; this site's own copy
        only when it cannot (the object storage is down, or there is none).
        """
        return self.context.markers.current()

    def holdings(self, target: Target | None = None) -> dict[str, Holding]:
        """What *target* (default: this site's backup directory) holds, per cell."""
        return self.context.holdings(target)

    def site_records(self) -> list[SiteRecord]:
        """What every site recorded at its last DR step (each site's newest on the storage)."""
        return self.context.markers.records()

    # -- push and pull ------------------------------------------------------------

    def push(
        self,
        cells: Sequence[str] | None = None,
        *,
        source: str | None = None,
        to: Sequence[str] | None = None,
        verify: bool = False,
        include_safety: bool = False,
    ) -> SyncReport:
        """Copy what the object storage misses from this site (the seed's ``sync_backup_to_dr.sh``).

        From *source* (default: this site's backup directory) to *to* (default:
        the storage targets). Refused with :class:`DrError` while a failover
        marker names another site, and with :class:`~cellvault.errors.Fenced`
        while another site holds the current epoch (checked again before each
        archive is committed): this site's archives must not become the newest
        the active site sees. Pre-restore safety backups stay here unless
        *include_safety* (listed in each cell's ``ignored``).
        """
        return replicate.push(
            self.context, cells, source=source, to=to, verify=verify, include_safety=include_safety
        )

    def pull(
        self,
        cells: Sequence[str] | None = None,
        *,
        source: Sequence[str] | None = None,
        verify: bool = False,
        record: bool = True,
        include_safety: bool = False,
    ) -> SyncReport:
        """Bring what this site misses from the object storage (``DR_PULL_ONLY=1``).

        From *source* (default: the storage targets, in order: the first that
        holds an archive gives it) into this site's backup directory. Safe to
        run from cron every few minutes: a cell another run is copying is left
        to it (reported as ``locked``, which is not a failure). Left on the
        storage, and listed in each cell's ``ignored``: archives a fenced site
        wrote after the current epoch began, and other sites' pre-restore
        safety backups (unless *include_safety*).
        """
        return replicate.pull(
            self.context,
            cells,
            source=source,
            verify=verify,
            record=record,
            include_safety=include_safety,
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

    # -- prepare, failover, failback, status ------------------------------------------

    def check_targets(self) -> list[TargetCheck]:
        """Reach every target, and write, read back and delete a probe object on each."""
        return prepare.check_targets(self.context)

    def prepare(self, *, pull: bool = True) -> PrepareReport:
        """Set this site up as a standby (the seed's ``prepare_dr_site.sh``).

        Creates the backup directory and the parents of the cells' paths,
        checks every target (credentials, reachability, a probe object
        written, read and removed), pulls, and reports what the site holds.
        """
        return prepare.prepare(self.context, pull_first=pull)

    def failover(
        self,
        *,
        restore: str | None = None,
        skip_prebackup: bool = False,
        force: bool = False,
        pull: bool = True,
    ) -> FailoverReport:
        """Make this (standby) site the active one (the seed's ``drfailover.sh``).

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
        return failover.failover(
            self.context,
            restore=restore,
            skip_prebackup=skip_prebackup,
            force=force,
            pull_first=pull,
        )

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
        return failback.failback(
            self.context,
            final_backup=final_backup,
            restore=restore,
            skip_prebackup=skip_prebackup,
            force=force,
        )

    def status(self, cells: Sequence[str] | None = None) -> StatusReport:
        """Which site is active, what each target holds, and the replication lag per cell."""
        return status.status(self.context, cells)

    # -- automatic failover ---------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        """Write this site's heartbeat to the shared store (``cellvault dr heartbeat``).

        What ``dr watch`` on the standby reads: a primary whose heartbeat is
        fresh is never failed over. :class:`DrError` when no shared target
        took it.
        """
        self.context.need_storage("a heartbeat")
        now = self.context.now()
        errors = write_heartbeat(
            self.context.fence, now=now, source="dr heartbeat", host=self.vault.host
        )
        if len(errors) == len(self.storage):
            raise DrError("the heartbeat could not be written: " + "; ".join(errors))
        return Heartbeat(self.site_id, now, "dr heartbeat", self.vault.host)

    def watcher(self, settings: WatchSettings | None = None, **overrides: Any) -> Watcher:
        """The ``dr watch`` of this (standby) site; *settings* default to the ``DR_WATCH_*`` ones.

        ``site.watcher().step()`` is one round (``--once``), ``.run()`` the
        long-running watch; see :mod:`cellvault.dr.watch`.
        """
        self.context.need_storage("dr watch")
        settings = settings or WatchSettings.from_config(self.vault.config, **overrides)
        return Watcher(self.context, settings)
