"""Alerts: the built-in notifiers and the settings and alert text they share.

Three built-in plugins implement the ``cellvault_backup_failed`` hook (and
``cellvault_run_finished`` for success notices):

* :mod:`cellvault.notify.webhook` POSTs to ``BACKUP_ALERT_WEBHOOK`` in the
  format of the chat tool behind it (generic JSON, WeCom, DingTalk, Slack,
  Feishu/Lark);
* :mod:`cellvault.notify.alertlog` appends a JSON line to ``BACKUP_ALERT_LOG``
  (see :func:`alert_log_path` for where it is by default: the manual's
  ``deploy/backup/backup_alerts.log`` beside ``deploy/scripts/backup_config.env``,
  else ``<BACKUP_DIR>/logs/backup_alerts.log``; never the current directory);
* :mod:`cellvault.notify.apprise` sends to every apprise URL of
  ``BACKUP_ALERT_URLS`` (e-mail, PagerDuty, Opsgenie, Telegram, ...), with the
  ``apprise`` extra installed.

Settings come from the environment (``BACKUP_ALERT_*``) or the TOML file's
``[alerts]`` table; both land in :attr:`cellvault.Config.extra`.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ..config import Config
from ..errors import ConfigError
from ..layout import BackupDirLayout
from ..report import Failure
from ..runlog import active_log

__all__ = [
    "DEFAULT_ALERT_LOG",
    "FORMATS",
    "AlertSettings",
    "alert_for",
    "alert_log_path",
    "alert_settings",
    "alert_text",
    "summary_for",
]

#: The manual's alert log, relative to the platform's checkout (whose
#: ``deploy/scripts/`` holds ``backup_config.env``).
DEFAULT_ALERT_LOG = "deploy/backup/backup_alerts.log"
#: The alert log's file name.
ALERT_LOG_NAME = "backup_alerts.log"
#: Webhook formats; ``auto`` picks one from the URL's host.
FORMATS: tuple[str, ...] = ("auto", "generic", "wecom", "dingtalk", "slack", "feishu")
_WHEN = ("failure", "always")

# TOML [alerts] key -> environment variable.
_KEYS = {
    "webhook": "BACKUP_ALERT_WEBHOOK",
    "format": "BACKUP_ALERT_FORMAT",
    "secret": "BACKUP_ALERT_SECRET",
    "log": "BACKUP_ALERT_LOG",
    "timeout": "BACKUP_ALERT_TIMEOUT",
    "on": "BACKUP_ALERT_ON",
    "urls": "BACKUP_ALERT_URLS",
}
_OFF = {"", "off", "none", "no", "0"}


@attrs.frozen
class AlertSettings:
    """Where and how alerts are sent."""

    #: The webhook URL, or ``None`` for no webhook.
    webhook: str | None = None
    #: One of :data:`FORMATS`.
    format: str = "auto"
    #: DingTalk's or Feishu's signing secret.
    secret: str | None = attrs.field(default=None, repr=False)
    #: The alert log, or ``None`` when switched off (:func:`alert_settings`
    #: gives an absolute path, see :func:`alert_log_path`).
    log: Path | None = Path(DEFAULT_ALERT_LOG)
    #: Seconds to wait for the webhook, per attempt.
    timeout: float = 5.0
    #: ``failure`` (alerts only) or ``always`` (also a notice when a run succeeds).
    on: str = "failure"
    #: apprise URLs (``BACKUP_ALERT_URLS``), each one more channel; they hold
    #: credentials, so they are left out of the repr (see :mod:`cellvault.notify.apprise`).
    urls: tuple[str, ...] = attrs.field(default=(), repr=False)


def alert_log_path(config: Config, value: str | None = None) -> Path:
    """Where the alert log of *config* is, for a ``BACKUP_ALERT_LOG`` of *value*.

    An absolute *value* is taken as it is. Otherwise the folder of the file
    the configuration was read from (``--env-file`` or ``--config``,
    :attr:`cellvault.Config.source`) is the base: a relative *value* is
    relative to it, and the default is ``../backup/backup_alerts.log`` from
    there, the manual's layout (``deploy/scripts/backup_config.env`` ->
    ``deploy/backup/backup_alerts.log``). Without such a file the base is
    ``BACKUP_DIR``, and the default is ``<BACKUP_DIR>/logs/backup_alerts.log``,
    beside the run logs. The current directory is never used.
    """
    if value:
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        base = config.source.parent if config.source is not None else config.backup_dir
        return Path(os.path.normpath(base / path))
    if config.source is not None:
        return config.source.parent.parent / "backup" / ALERT_LOG_NAME
    return BackupDirLayout(config.backup_dir).logs / ALERT_LOG_NAME


def alert_settings(config: Config) -> AlertSettings:
    """The alert settings of *config* (``BACKUP_ALERT_*`` or ``[alerts]``).

    Raises :class:`ConfigError` for an unknown format, a malformed timeout or
    an unknown key of the ``[alerts]`` table.
    """
    raw: dict[str, str] = {}
    extra: Mapping[str, Any] = config.extra  # TOML values may be numbers or booleans
    for key, value in extra.items():
        name = _KEYS.get(key, key)
        if key.isupper() and not name.startswith("BACKUP_ALERT"):
            continue  # another plugin's setting, from the environment
        if not name.startswith("BACKUP_ALERT"):
            # Lower-case keys come from the TOML file's [alerts] table: a typo.
            raise ConfigError(
                f"[alerts]: unknown key {key!r}", hint=f"known keys: {', '.join(sorted(_KEYS))}"
            )
        if isinstance(value, bool):
            raw[name] = str(int(value))
        elif isinstance(value, list | tuple):  # TOML: urls = ["...", "..."]
            raw[name] = " ".join(str(v) for v in value)
        else:
            raw[name] = str(value).strip()
    webhook = raw.get("BACKUP_ALERT_WEBHOOK") or None
    fmt = (raw.get("BACKUP_ALERT_FORMAT") or "auto").lower()
    if fmt == "lark":
        fmt = "feishu"
    if fmt not in FORMATS:
        raise ConfigError(
            f"BACKUP_ALERT_FORMAT={fmt!r} is not a webhook format",
            hint=f"use one of {', '.join(FORMATS)}",
        )
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise ConfigError(
            "BACKUP_ALERT_WEBHOOK is not an http(s) URL", hint="give the full https:// address"
        )
    log_value = raw.get("BACKUP_ALERT_LOG")
    off = log_value is not None and log_value.lower() in _OFF
    log = None if off else alert_log_path(config, log_value)
    try:
        timeout = float(raw.get("BACKUP_ALERT_TIMEOUT") or 5.0)
    except ValueError:
        raise ConfigError(
            f"BACKUP_ALERT_TIMEOUT={raw['BACKUP_ALERT_TIMEOUT']!r} is not a number of seconds"
        ) from None
    if timeout <= 0:
        raise ConfigError("BACKUP_ALERT_TIMEOUT must be more than 0 seconds")
    on = (raw.get("BACKUP_ALERT_ON") or "failure").lower()
    if on not in _WHEN:
        raise ConfigError(f"BACKUP_ALERT_ON={on!r} is neither failure nor always")
    urls = tuple(raw.get("BACKUP_ALERT_URLS", "").split())
    if urls:
        from .apprise import check_urls  # apprise is optional: imported only when used

        check_urls(urls)
    return AlertSettings(
        webhook=webhook,
        format=fmt,
        secret=raw.get("BACKUP_ALERT_SECRET") or None,
        log=log,
        timeout=timeout,
        on=on,
        urls=urls,
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def alert_for(failure: Failure) -> dict[str, Any]:
    """The alert of one failure, as the alert log and the generic webhook carry it."""
    log = active_log(failure.run)
    return {
        "time": _now(),
        "status": "failed",
        "operation": failure.operation,
        "stage": failure.stage,
        "cell": failure.cell,
        "target": failure.target,
        "archive": failure.archive,
        "run": failure.run,
        "host": failure.host or socket.gethostname(),
        "error": failure.error,
        "log": str(log) if log is not None else None,
    }


def summary_for(operation: str, report: Any) -> dict[str, Any]:
    """The notice of a finished run (for ``BACKUP_ALERT_ON=always``)."""
    ok = bool(getattr(report, "ok", True))
    run = getattr(report, "run", None)
    cells = sorted(
        {
            str(getattr(item, "cell", None) or getattr(item, "archive", ""))
            for item in (getattr(report, "cells", None) or getattr(report, "results", None) or ())
        }
    )
    log = active_log(run)
    return {
        "time": _now(),
        "status": "ok" if ok else "failed",
        "operation": operation,
        "stage": None,
        "cell": None,
        "target": None,
        "archive": None,
        "run": run,
        "host": socket.gethostname(),
        "error": None,
        "cells": cells,
        "duration": round(float(getattr(report, "duration", 0.0) or 0.0), 3),
        "log": str(log) if log is not None else None,
    }


def alert_text(alert: Mapping[str, Any], *, markdown: bool = False) -> str:
    """A short human text of *alert* (Markdown for WeCom and DingTalk)."""
    failed = alert.get("status") == "failed"
    op = alert.get("operation") or "backup"
    if alert.get("stage"):
        title = f"cellvault {op} FAILED at stage {alert['stage']}"
    else:
        title = f"cellvault {op} {'FAILED' if failed else 'ok'}"
    rows = [
        ("host", alert.get("host")),
        ("cell", alert.get("cell")),
        ("target", alert.get("target")),
        ("archive", alert.get("archive")),
        ("cells", ", ".join(alert.get("cells") or ()) or None),
        ("run", alert.get("run")),
        ("duration", f"{alert['duration']}s" if alert.get("duration") is not None else None),
        ("error", alert.get("error")),
        ("log", alert.get("log")),
        ("time", alert.get("time")),
    ]
    if markdown:
        lines = [f"### {title}"]
        lines += [f"> **{k}**: {v}" for k, v in rows if v]
        return "\n".join(lines)
    return "\n".join([title, *(f"{k}: {v}" for k, v in rows if v)])
