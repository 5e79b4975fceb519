"""cellvault: backup, restore and disaster recovery for the cells of a PaaS platform.

>>> import cellvault
>>> vault = cellvault.Vault.from_env()          # the seed's BACKUP_* variables
>>> report = vault.backup(kind="incremental")   # doctest: +SKIP
>>> report.ok                                    # doctest: +SKIP
True
"""

from __future__ import annotations

import logging

from ._version import __version__
from .archive import ArchiveId, ArchiveMeta, Kind, Selector, Sidecar
from .cell import Cell
from .config import Config, load_env, load_toml
from .crypt import Keyring, Recipients
from .errors import (
    ArchiveCorrupt,
    ArchiveNotFound,
    BackupError,
    CellvaultError,
    ConfigError,
    Fenced,
    KeyMissing,
    LockHeld,
    RestoreError,
    TargetError,
    UnsafeArchive,
)
from .events import Event
from .hookspecs import hookimpl
from .manifest import Entry, Manifest
from .ops.browse import DiffEntry, DiffReport, Found, Point, TreeEntry
from .ops.partial import PathRestoreReport
from .ops.rekey import RekeyReport, RekeyResult
from .report import (
    BackupReport,
    CellReport,
    CellRestore,
    Failure,
    RestoreReport,
    TargetOutcome,
    VerifyReport,
    VerifyResult,
)
from .targets import FsspecTarget, LocalTarget, ObjectInfo, ObjectStat, Target, TargetSpec
from .vault import ArchiveInfo, Level, Names, Vault

# A library leaves output to its host: nothing is printed unless it configures logging.
logging.getLogger("cellvault").addHandler(logging.NullHandler())

__all__ = [
    "ArchiveCorrupt",
    "ArchiveId",
    "ArchiveInfo",
    "ArchiveMeta",
    "ArchiveNotFound",
    "BackupError",
    "BackupReport",
    "Cell",
    "CellReport",
    "CellRestore",
    "CellvaultError",
    "Config",
    "ConfigError",
    "DiffEntry",
    "DiffReport",
    "Entry",
    "Event",
    "Failure",
    "Fenced",
    "Found",
    "FsspecTarget",
    "KeyMissing",
    "Keyring",
    "Kind",
    "Level",
    "LocalTarget",
    "LockHeld",
    "Manifest",
    "Names",
    "ObjectInfo",
    "ObjectStat",
    "PathRestoreReport",
    "Point",
    "Recipients",
    "RekeyReport",
    "RekeyResult",
    "RestoreError",
    "RestoreReport",
    "Selector",
    "Sidecar",
    "Target",
    "TargetError",
    "TargetOutcome",
    "TargetSpec",
    "TreeEntry",
    "UnsafeArchive",
    "Vault",
    "VerifyReport",
    "VerifyResult",
    "__version__",
    "hookimpl",
    "load_env",
    "load_toml",
]
