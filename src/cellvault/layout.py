"""The layout of a backup directory (``BACKUP_DIR``) outside the targets' archives.

One place names every path cellvault keeps for itself beside the archives of
the local target, so no module spells them on its own::

    <backup_dir>/logs/<operation>_<stamp>.log     run logs (the seed's backup_*.log)
    <backup_dir>/.cellvault/state/state.json      what status and metrics remember
    <backup_dir>/.cellvault/spool/<run>/          archives being built, per run
    <backup_dir>/.cellvault/spool/sync/           DR copies being transferred
    <backup_dir>/.cellvault/drill/<run>-...       a drill's scratch restore
    <backup_dir>/.cellvault/health/<run>-<cell>   links a health check is given
    <backup_dir>/.cellvault/dr/failover.json      this site's copy of the failover marker
    <backup_dir>/.cellvault/manifests/<cell>/     the newest manifests of encrypted archives

``logs`` is a reserved cell name for this reason (:data:`RESERVED_NAMES`).
"""

from __future__ import annotations

from pathlib import Path

import attrs

__all__ = ["LOGS", "PRIVATE", "RESERVED_NAMES", "BackupDirLayout"]

#: The run logs' folder, directly under the backup directory (the seed's place).
LOGS = "logs"
#: cellvault's own folder under the backup directory.
PRIVATE = ".cellvault"
#: Names a cell may not have: they are folders of the backup directory.
RESERVED_NAMES = frozenset({LOGS})


@attrs.frozen
class BackupDirLayout:
    """The paths of one backup directory; computing one touches no disk."""

    root: Path = attrs.field(converter=Path)

    @property
    def logs(self) -> Path:
        """Run logs: ``<root>/logs``."""
        return self.root / LOGS

    @property
    def private(self) -> Path:
        """``<root>/.cellvault``."""
        return self.root / PRIVATE

    @property
    def state(self) -> Path:
        """The state file's folder: ``<root>/.cellvault/state``."""
        return self.private / "state"

    @property
    def spool(self) -> Path:
        """Archives being built and copies in transfer: ``<root>/.cellvault/spool``."""
        return self.private / "spool"

    def run_spool(self, run: str) -> Path:
        """The spool folder of backup run *run*."""
        return self.spool / run

    @property
    def sync_spool(self) -> Path:
        """DR copies in transfer: ``<root>/.cellvault/spool/sync``."""
        return self.spool / "sync"

    def manifests(self, cell: str) -> Path:
        """The plain manifest copies of *cell*'s newest encrypted archives (incrementals' parents)."""
        return self.private / "manifests" / cell

    def drill(self, run: str, target: str, cell: str) -> Path:
        """The scratch folder of a drill of *cell* from *target*."""
        return self.private / "drill" / f"{run}-{target}-{cell}"

    def health(self, run: str, cell: str) -> Path:
        """The folder of links a health check of *cell* is given."""
        return self.private / "health" / f"{run}-{cell}"

    @property
    def dr(self) -> Path:
        """Disaster-recovery state of this site: ``<root>/.cellvault/dr``."""
        return self.private / "dr"
