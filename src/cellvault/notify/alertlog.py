"""The alert log: one JSON line per alert in ``BACKUP_ALERT_LOG``.

The default follows the manual's layout: ``deploy/backup/backup_alerts.log``
beside the ``deploy/scripts/backup_config.env`` (or TOML file) in use, else
``<BACKUP_DIR>/logs/backup_alerts.log`` (:func:`cellvault.notify.alert_log_path`);
never the current directory. A relative ``BACKUP_ALERT_LOG`` is taken from
the configuration file's folder (else from ``BACKUP_DIR``); ``off`` writes
none. Each line is the alert as
:func:`cellvault.notify.alert_for` builds it: time, status, operation,
stage, cell, target, archive, run, host, error and the run's log file. Lines
are appended under a lock, so processes running at once never interleave
them; a log that cannot be written is reported in the run's log and never
changes the run's result.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Config
from ..hookspecs import hookimpl
from ..log import get_logger, redact
from ..modes import FILE_MODE, private_dirs
from ..report import Failure
from . import alert_for, alert_settings, summary_for

__all__ = ["append"]

log = get_logger(__name__)
_lock = threading.Lock()


def append(path: Path, alert: Mapping[str, Any]) -> bool:
    """Append *alert* as one JSON line to *path*; tell whether it was written. Never raises."""
    line = json.dumps(redact(dict(alert)), ensure_ascii=False, sort_keys=True) + "\n"
    try:
        private_dirs(path.parent)
        with _lock:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, line.encode())
            finally:
                os.close(fd)
    except OSError as exc:
        log.warning(
            "alert.log_failed",
            path=str(path),
            error=f"{type(exc).__name__}: {exc.strerror or exc}",
            run=alert.get("run"),
        )
        return False
    return True


@hookimpl
def cellvault_backup_failed(failure: Failure, config: Config) -> None:
    """Append the failure to the alert log."""
    settings = alert_settings(config)
    if settings.log is not None:
        append(settings.log, alert_for(failure))


@hookimpl
def cellvault_run_finished(operation: str, report: Any, config: Config) -> None:
    """With ``BACKUP_ALERT_ON=always``, log a successful run too."""
    settings = alert_settings(config)
    if settings.log is not None and settings.on == "always" and getattr(report, "ok", True):
        append(settings.log, summary_for(operation, report))
