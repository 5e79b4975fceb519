"""The webhook notifier: POST each alert to ``BACKUP_ALERT_WEBHOOK``.

Formats (``BACKUP_ALERT_FORMAT``, or picked from the URL's host):

* ``generic``: the alert itself as a JSON object;
* ``wecom`` (WeCom / 企业微信 group robot): ``{"msgtype": "markdown", ...}``;
* ``dingtalk`` (钉钉 robot): ``{"msgtype": "markdown", ...}``; with
  ``BACKUP_ALERT_SECRET`` the URL gets DingTalk's ``timestamp`` and ``sign``;
* ``slack`` (incoming webhook): ``{"text": ...}``;
* ``feishu`` (Feishu / Lark custom bot): ``{"msg_type": "text", ...}``;
  with ``BACKUP_ALERT_SECRET`` the body carries ``timestamp`` and ``sign``.

A webhook that is down or slow never changes a run's result: each attempt
waits ``BACKUP_ALERT_TIMEOUT`` seconds at most, connection errors, timeouts
and 5xx/429 answers are retried twice, quickly, and then the failure is
logged. After a failed delivery the same URL gets a single attempt for a
minute, so a dead webhook cannot stretch a run with many failures. The URL's
path and query (which carry the robot's token) and the secret never appear
in a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import tenacity

from ..config import Config
from ..errors import WebhookError
from ..hookspecs import hookimpl
from ..log import get_logger, redact_text
from ..report import Failure
from . import AlertSettings, alert_for, alert_settings, alert_text, summary_for

__all__ = [
    "WebhookError",
    "build_request",
    "detect_format",
    "dingtalk_sign",
    "display_url",
    "feishu_sign",
    "post",
    "send",
]

log = get_logger(__name__)

#: How many attempts a delivery gets when the webhook seems healthy.
ATTEMPTS = 3
#: After a failed delivery, seconds during which the URL gets one attempt only.
BACKOFF_WINDOW = 60.0

_down_until: dict[str, float] = {}
_down_lock = threading.Lock()


def detect_format(url: str) -> str:
    """The webhook format of *url*'s host (``generic`` when unknown)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "qyapi.weixin.qq.com":
        return "wecom"
    if host.endswith("dingtalk.com"):
        return "dingtalk"
    if host == "hooks.slack.com":
        return "slack"
    if host.endswith(("feishu.cn", "larksuite.com", "larkoffice.com")):
        return "feishu"
    return "generic"


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's signature: base64(HMAC-SHA256(secret, "<timestamp>\\n<secret>"))."""
    message = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu's signature: base64(HMAC-SHA256(key="<timestamp>\\n<secret>", message=b""))."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def build_request(
    settings: AlertSettings, alert: Mapping[str, Any], *, now: float | None = None
) -> tuple[str, dict[str, Any]]:
    """The URL and JSON body to POST for *alert*, in the configured format."""
    assert settings.webhook is not None
    url = settings.webhook
    fmt = settings.format if settings.format != "auto" else detect_format(url)
    now = time.time() if now is None else now
    text = alert_text(alert)
    body: dict[str, Any]
    if fmt == "wecom":
        body = {"msgtype": "markdown", "markdown": {"content": alert_text(alert, markdown=True)}}
    elif fmt == "dingtalk":
        title = text.splitlines()[0]
        body = {
            "msgtype": "markdown",
            "markdown": {"title": title, "text": alert_text(alert, markdown=True)},
        }
        if settings.secret:
            stamp = int(now * 1000)
            query = urlencode({"timestamp": stamp, "sign": dingtalk_sign(settings.secret, stamp)})
            url = f"{url}{'&' if '?' in url else '?'}{query}"
    elif fmt == "slack":
        body = {"text": text}
    elif fmt == "feishu":
        body = {"msg_type": "text", "content": {"text": text}}
        if settings.secret:
            stamp = int(now)
            body = {"timestamp": str(stamp), "sign": feishu_sign(settings.secret, stamp), **body}
    else:
        body = {"source": "cellvault", "text": text, **alert}
    return url, body


def display_url(url: str) -> str:
    """The URL without path or query: what a log line may show."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def _scrub(text: str, settings: AlertSettings) -> str:
    """*text* without the webhook's path, query or secret."""
    text = redact_text(text)
    assert settings.webhook is not None
    parts = urlsplit(settings.webhook)
    for secret in (settings.secret, parts.query, parts.path if len(parts.path) > 1 else None):
        if secret:
            text = text.replace(secret, "***")
    return text[:300]


def post(url: str, body: Mapping[str, Any], settings: AlertSettings) -> None:
    """Post *body* to *url* once; raise :class:`WebhookError` unless the robot accepted it."""
    try:
        answer = requests.post(
            url,
            json=body,
            timeout=(min(settings.timeout, 3.0), settings.timeout),
            headers={"User-Agent": "cellvault"},
        )
    except requests.Timeout:
        raise WebhookError(f"no answer within {settings.timeout:g}s", transient=True) from None
    except requests.ConnectionError as exc:
        cause = type(exc.__context__ or exc).__name__
        raise WebhookError(f"cannot connect ({cause})", transient=True) from None
    except requests.RequestException as exc:
        raise WebhookError(f"request failed ({type(exc).__name__})", transient=False) from None
    if answer.status_code >= 400:
        raise WebhookError(
            f"HTTP {answer.status_code}: {_scrub(answer.text, settings)}",
            transient=answer.status_code >= 500 or answer.status_code == 429,
        )
    # WeCom, DingTalk and Feishu answer 200 with an error code in the body.
    try:
        reply = answer.json()
    except ValueError:
        return
    if isinstance(reply, dict):
        code = reply.get("errcode", reply.get("code", reply.get("StatusCode", 0)))
        if code not in (0, None, "0"):
            message = reply.get("errmsg") or reply.get("msg") or reply.get("StatusMessage") or ""
            raise WebhookError(
                f"the webhook refused the message: code {code} {_scrub(str(message), settings)}",
                transient=False,
            )


def send(settings: AlertSettings, alert: Mapping[str, Any]) -> bool:
    """POST *alert* to the webhook; tell whether it was delivered. Never raises."""
    if settings.webhook is None:
        return False
    url, body = build_request(settings, alert)
    with _down_lock:
        healthy = _down_until.get(settings.webhook, 0.0) <= time.monotonic()
    attempts = ATTEMPTS if healthy else 1
    fmt = settings.format if settings.format != "auto" else detect_format(settings.webhook)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "alert.webhook_retry",
            webhook=display_url(settings.webhook or ""),
            attempt=state.attempt_number,
            error=str(exc),
            run=alert.get("run"),
        )

    retryer = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, WebhookError) and e.transient),
        stop=tenacity.stop_after_attempt(attempts)
        | tenacity.stop_after_delay(3 * settings.timeout),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=1.0, jitter=0.2),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        retryer(post, url, body, settings)
    except WebhookError as exc:
        with _down_lock:
            _down_until[settings.webhook] = time.monotonic() + BACKOFF_WINDOW
        log.warning(
            "alert.webhook_failed",
            webhook=display_url(settings.webhook),
            format=fmt,
            error=str(exc),
            run=alert.get("run"),
            hint="the run's result is unchanged; the alert log still has the alert",
        )
        return False
    with _down_lock:
        _down_until.pop(settings.webhook, None)
    log.info(
        "alert.webhook_sent",
        webhook=display_url(settings.webhook),
        format=fmt,
        run=alert.get("run"),
    )
    return True


@hookimpl
def cellvault_backup_failed(failure: Failure, config: Config) -> None:
    """POST the failure to the configured webhook, if there is one."""
    settings = alert_settings(config)
    if settings.webhook:
        send(settings, alert_for(failure))


@hookimpl
def cellvault_run_finished(operation: str, report: Any, config: Config) -> None:
    """With ``BACKUP_ALERT_ON=always``, POST a notice that the run finished."""
    settings = alert_settings(config)
    # A failed run has alerted each failure already.
    if settings.webhook and settings.on == "always" and getattr(report, "ok", True):
        send(settings, summary_for(operation, report))
