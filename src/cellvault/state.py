"""What cellvault remembers between runs, per cell and target, for ``status`` and metrics.

One small JSON file, ``<backup_dir>/.cellvault/state/state.json``: for each
cell and target, the last backup run (time, result, duration, bytes), the
last success, a failure counter, and the last result of each verify level
and of the last drill. Runs of several processes update it in turn under a
file lock; every write is atomic (temporary file, then rename). The file is
a convenience: losing it loses history, never a backup.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .layout import BackupDirLayout
from .log import get_logger
from .modes import private_dirs, private_opener

__all__ = ["STATE_VERSION", "StateFile", "slot"]

log = get_logger(__name__)

STATE_VERSION = 1
_local_lock = threading.Lock()


class StateFile:
    """The state file of a backup directory.

    The document is ``{"version": 1, "cells": {cell: {target: entry}}}``;
    an entry has ``backup`` (the last run), ``last_success``,
    ``failures_total``, ``verify`` (level -> last result) and ``drill``.
    """

    def __init__(self, backup_dir: Path) -> None:
        self.directory = BackupDirLayout(backup_dir).state
        self.path = self.directory / "state.json"

    def read(self) -> dict[str, Any]:
        """The document; an empty one when the file is missing or unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": STATE_VERSION, "cells": {}}
        except (OSError, ValueError) as exc:
            log.warning("state.unreadable", path=str(self.path), error=str(exc))
            return {"version": STATE_VERSION, "cells": {}}
        if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
            return {"version": STATE_VERSION, "cells": {}}
        return data

    def entry(self, cell: str, target: str) -> dict[str, Any]:
        """The entry of *cell* on *target* (empty when nothing was recorded)."""
        found = self.read()["cells"].get(cell, {}).get(target, {})
        return found if isinstance(found, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        private_dirs(self.directory)
        with _local_lock, open(self.directory / "state.lock", "a", opener=private_opener) as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Apply *change* to the document and write it back; return the new document.

        Never raises for an I/O problem: the state is history, not a backup.
        Returns ``None`` (after a logged warning) when it could not be written.
        """
        try:
            with self._locked():
                data = self.read()
                change(data)
                data["version"] = STATE_VERSION
                tmp = self.directory / f".state.json.{secrets.token_hex(4)}.tmp"
                try:
                    with open(tmp, "w", encoding="utf-8", opener=private_opener) as f:
                        f.write(json.dumps(data, indent=1, sort_keys=True))
                    os.replace(tmp, self.path)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                return data
        except OSError as exc:
            log.warning("state.unwritable", path=str(self.path), error=str(exc))
            return None


def slot(data: dict[str, Any], cell: str, target: str) -> dict[str, Any]:
    """The (created if needed) entry of *cell* on *target* inside a state document."""
    cells: dict[str, Any] = data.setdefault("cells", {})
    per_cell: dict[str, Any] = cells.setdefault(cell, {})
    entry: dict[str, Any] = per_cell.setdefault(target, {})
    return entry
