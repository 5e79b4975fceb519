"""The permission bits of what cellvault creates: 0600 files in 0700 directories.

Archives, sidecars, manifest copies, the spool, run logs, the alert log, the
state file and leases hold a cell's data or say where it is; whatever the
process umask, they are created readable by the backup user alone. The mode
is given when the file or directory is made (never a window where it is
wider) and, for directories, set again after ``mkdir``, which the umask
narrows (a umask can only take bits away, so a file opened ``0600`` is never
wider). Files that existed before (a BACKUP_DIR an operator made, an alert
log they share) keep the mode they have.

Restored cell data is not made here: it gets the modes its manifest records.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dirs", "private_opener"]

#: Files cellvault creates.
FILE_MODE = 0o600
#: Directories cellvault creates.
DIR_MODE = 0o700


def private_opener(path: str | os.PathLike[str], flags: int) -> int:
    """An ``opener`` for :func:`open`: a file it creates is mode 0600 (see :data:`FILE_MODE`)."""
    return os.open(path, flags, FILE_MODE)


def private_dirs(path: Path) -> None:
    """Create *path* and its missing parents, each mode 0700 whatever the umask.

    Directories that exist are left as they are. Safe against a concurrent
    creator (the other one's directory is kept).
    """
    missing: list[Path] = []
    here = path
    while not here.exists():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, DIR_MODE)
