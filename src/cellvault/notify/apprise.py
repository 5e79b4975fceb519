"""More alert channels without more code: any apprise URL in ``BACKUP_ALERT_URLS``.

`apprise <https://github.com/caronc/apprise>`_ speaks to e-mail
(``mailtos://``), PagerDuty (``pagerduty://``), Opsgenie (``opsgenie://``),
Telegram (``tgram://``), Microsoft Teams, Discord, ntfy, a plain JSON or form
POST (``json://``, ``form://``) and a hundred more, each one a URL. Give them,
separated by spaces, in ``BACKUP_ALERT_URLS`` (TOML: ``urls`` of
``[alerts]``, a string or a list): every failure is sent to each, beside the
built-in webhook and the alert log. It needs the ``apprise`` extra
(``pip install 'cellvault[apprise]'``); without it, a configuration that
names URLs is a configuration error.

URLs carry credentials: they are never logged. What reaches a log is the
URL as apprise shows it with ``privacy=True`` (secrets masked), and apprise's
own messages are captured and passed on with every secret of the URLs
masked. A channel that cannot be reached is logged and never changes the
run's result.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..log import get_logger, redact_text
from . import alert_for, alert_settings, alert_text, summary_for

if TYPE_CHECKING:
    from ..config import Config
    from ..report import Failure

__all__ = ["available", "check_urls", "display", "send"]

log = get_logger(__name__)
# apprise's logger is shared by the process: one send at a time changes it.
_logging_lock = threading.Lock()


def available() -> bool:
    """Tell whether apprise is installed."""
    return importlib.util.find_spec("apprise") is not None


def display(url: str) -> str:
    """*url* with its credentials and tokens masked, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{'/***' if parts.path.strip('/') else ''}"


def _secrets(urls: Sequence[str]) -> list[str]:
    """The parts of *urls* that may be credentials: user info, path segments, query values."""
    out: list[str] = []
    for url in urls:
        parts = urlsplit(url)
        out += [p for p in (parts.username, parts.password) if p]
        out += [seg for seg in parts.path.split("/") if len(seg) >= 4]
        out += [kv.partition("=")[2] for kv in parts.query.split("&") if "=" in kv]
        if parts.scheme and "://" in url:
            out.append(url.partition("://")[2])
    return sorted({s for s in out if s}, key=len, reverse=True)


def _scrub(text: str, urls: Sequence[str]) -> str:
    text = redact_text(text)
    for secret in _secrets(urls):
        text = text.replace(secret, "***")
    return text[:500]


def check_urls(urls: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless apprise is installed and knows every URL of *urls*."""
    if not urls:
        return
    if not available():
        raise ConfigError(
            "BACKUP_ALERT_URLS needs apprise, which is not installed",
            hint="pip install 'cellvault[apprise]', or unset BACKUP_ALERT_URLS",
        )
    import apprise

    for url in urls:
        with _captured(urls, None):
            known = apprise.Apprise().add(url)
        if not known:
            raise ConfigError(
                f"BACKUP_ALERT_URLS: apprise does not understand {display(url)}",
                hint="check the URL's scheme and fields against apprise's list of services",
            )


@contextmanager
def _captured(urls: Sequence[str], run: Any) -> Iterator[None]:
    """apprise's log messages during the block, passed on scrubbed (never propagated raw).

    apprise logs the URLs it loads at debug level, with path tokens (Slack's,
    Telegram's) in clear: none of its records may reach the host's handlers.
    """
    import apprise

    logger = logging.getLogger("apprise")
    with _logging_lock:
        propagate, logger.propagate = logger.propagate, False
        try:
            with apprise.LogCapture(level=logging.WARNING) as output:  # type: ignore[no-untyped-call,unused-ignore]
                yield
        finally:
            logger.propagate = propagate
    for line in output.getvalue().splitlines():
        if line.strip():
            log.warning("alert.apprise_message", message=_scrub(line, urls), run=run)


def send(urls: Sequence[str], alert: Mapping[str, Any]) -> bool:
    """Send *alert* to every apprise URL of *urls*; tell whether all took it. Never raises."""
    if not urls or not available():
        return False
    import apprise

    text = alert_text(alert)
    title, _, body = text.partition("\n")
    failed = alert.get("status") == "failed"
    run = alert.get("run")
    try:
        with _captured(urls, run):
            client = apprise.Apprise()
            for url in urls:
                client.add(url)
            ok = bool(
                client.notify(
                    title=title,
                    body=body or title,
                    notify_type=apprise.NotifyType.FAILURE if failed else apprise.NotifyType.INFO,
                )
            )
    except Exception as exc:  # noqa: BLE001 - an alert channel never changes a run's result
        log.warning(
            "alert.apprise_failed", error=_scrub(f"{type(exc).__name__}: {exc}", urls), run=run
        )
        return False
    services = [display(u) for u in urls]
    if ok:
        log.info("alert.apprise_sent", services=services, run=run)
    else:
        log.warning(
            "alert.apprise_failed",
            services=services,
            run=run,
            hint="the run's result is unchanged; the alert log still has the alert",
        )
    return ok


@hookimpl
def cellvault_backup_failed(failure: Failure, config: Config) -> None:
    """Send the failure to every URL of ``BACKUP_ALERT_URLS``."""
    settings = alert_settings(config)
    if settings.urls:
        send(settings.urls, alert_for(failure))


@hookimpl
def cellvault_run_finished(operation: str, report: Any, config: Config) -> None:
    """With ``BACKUP_ALERT_ON=always``, send a notice that the run finished."""
    settings = alert_settings(config)
    if settings.urls and settings.on == "always" and getattr(report, "ok", True):
        send(settings.urls, summary_for(operation, report))
