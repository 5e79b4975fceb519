"""The webhook notifier against a real HTTP server on 127.0.0.1: every format, signing, faults."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cellvault import Config, ConfigError, Failure, Vault
from cellvault.log import configure_logging
from cellvault.notify import AlertSettings, alert_settings
from cellvault.notify.webhook import build_request, detect_format, send
from tests.servers.webhook import WebhookServer, closed_port, running

SECRET = "SECdingtalk0123456789abcdefsecret"
TOKEN = "tok3n0123456789abcdef"


def _failure_fields(text: str) -> None:
    """A human alert text names the stage, cell, target, run, host and the error."""
    for word in ("upload", "crm", "nas", "Permission denied"):
        assert word in text, (word, text)


def _one_alert(server: WebhookServer) -> Any:
    # An alert is posted before the run returns: what has arrived is all there is.
    got = server.wait_for(1)
    assert len(server.received) == 1, server.received
    return got[0]


def test_generic_json_carries_every_field(
    failing_vault: Callable[..., Vault], receiver: WebhookServer
) -> None:
    vault = failing_vault(BACKUP_ALERT_WEBHOOK=receiver.url(), BACKUP_ALERT_FORMAT="generic")
    report = vault.backup()
    assert not report.ok
    got = _one_alert(receiver)
    body = got.body
    assert body["source"] == "cellvault"
    assert body["status"] == "failed"
    assert body["operation"] == "backup"
    assert body["stage"] == "upload"
    assert body["cell"] == "crm"
    assert body["target"] == "nas"
    assert body["run"] == report.run
    assert body["host"] == vault.host
    assert body["archive"] == report.cells[0].archive
    assert "Permission denied" in body["error"]
    assert body["log"].endswith(".log") and Path(body["log"]).is_file()
    assert got.headers["Content-Type"] == "application/json"
    _failure_fields(body["text"])


def test_wecom_markdown(failing_vault: Callable[..., Vault], receiver: WebhookServer) -> None:
    vault = failing_vault(BACKUP_ALERT_WEBHOOK=receiver.url(), BACKUP_ALERT_FORMAT="wecom")
    vault.backup()
    body = _one_alert(receiver).body
    assert set(body) == {"msgtype", "markdown"}
    assert body["msgtype"] == "markdown"
    content = body["markdown"]["content"]
    assert content.startswith("### cellvault backup FAILED at stage upload")
    _failure_fields(content)


def test_dingtalk_signature_verifies_server_side(
    failing_vault: Callable[..., Vault], receiver: WebhookServer
) -> None:
    url = receiver.url(f"/robot/send?access_token={TOKEN}")
    vault = failing_vault(
        BACKUP_ALERT_WEBHOOK=url, BACKUP_ALERT_FORMAT="dingtalk", BACKUP_ALERT_SECRET=SECRET
    )
    vault.backup()
    got = _one_alert(receiver)
    assert got.path == "/robot/send"
    assert got.query["access_token"] == TOKEN
    # What DingTalk's server does: recompute the HMAC from the timestamp and the secret.
    stamp = got.query["timestamp"]
    assert abs(int(stamp) / 1000 - time.time()) < 3600
    expected = base64.b64encode(
        hmac.new(SECRET.encode(), f"{stamp}\n{SECRET}".encode(), hashlib.sha256).digest()
    ).decode()
    assert got.query["sign"] == expected
    body = got.body
    assert body["msgtype"] == "markdown"
    assert body["markdown"]["title"].startswith("cellvault backup FAILED")
    _failure_fields(body["markdown"]["text"])


def test_dingtalk_sign_is_url_encoded() -> None:
    settings = AlertSettings(
        webhook="https://oapi.dingtalk.com/robot/send?access_token=x", secret=SECRET
    )
    url, _ = build_request(settings, {"status": "failed"}, now=1_700_000_000.123)
    query = url.split("?", 1)[1]
    assert "timestamp=1700000000123" in query
    sign = query.split("sign=", 1)[1]
    # base64's '+', '/' and '=' must not reach DingTalk raw.
    assert not set(sign) & {"+", "/", "="}


def test_slack_text(failing_vault: Callable[..., Vault], receiver: WebhookServer) -> None:
    vault = failing_vault(BACKUP_ALERT_WEBHOOK=receiver.url(), BACKUP_ALERT_FORMAT="slack")
    vault.backup()
    body = _one_alert(receiver).body
    assert set(body) == {"text"}
    _failure_fields(body["text"])


@pytest.mark.parametrize("signed", [False, True])
def test_feishu_text_and_signature(
    failing_vault: Callable[..., Vault], receiver: WebhookServer, signed: bool
) -> None:
    extra = {"BACKUP_ALERT_SECRET": SECRET} if signed else {}
    vault = failing_vault(
        BACKUP_ALERT_WEBHOOK=receiver.url("/open-apis/bot/v2/hook/abc"),
        BACKUP_ALERT_FORMAT="lark",
        **extra,
    )
    vault.backup()
    body = _one_alert(receiver).body
    assert body["msg_type"] == "text"
    _failure_fields(body["content"]["text"])
    if signed:
        stamp = body["timestamp"]
        key = f"{stamp}\n{SECRET}".encode()
        assert (
            body["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
        )
    else:
        assert "sign" not in body


@pytest.mark.parametrize(
    ("url", "fmt"),
    [
        ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k", "wecom"),
        ("https://oapi.dingtalk.com/robot/send?access_token=t", "dingtalk"),
        ("https://hooks.slack.com/services/T0/B0/X", "slack"),
        ("https://open.feishu.cn/open-apis/bot/v2/hook/x", "feishu"),
        ("https://open.larksuite.com/open-apis/bot/v2/hook/x", "feishu"),
        ("https://alerts.example.com/hooks/backup", "generic"),
    ],
)
def test_format_detected_from_host(url: str, fmt: str) -> None:
    assert detect_format(url) == fmt


def test_bad_settings_fail_when_the_vault_is_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a webhook format"):
        Vault(Config(tmp_path, extra={"BACKUP_ALERT_FORMAT": "wechat"}), load_entry_points=False)
    with pytest.raises(ConfigError, match="unknown key"):
        alert_settings(Config(tmp_path, extra={"webhok": "https://x"}))
    with pytest.raises(ConfigError, match="http"):
        alert_settings(Config(tmp_path, extra={"BACKUP_ALERT_WEBHOOK": "hooks.example.com"}))
    toml = alert_settings(
        Config(tmp_path, extra={"webhook": "https://x.example/h", "timeout": 2, "on": "always"})
    )
    assert (toml.webhook, toml.timeout, toml.on) == ("https://x.example/h", 2.0, "always")


def _comparable(report: Any) -> Any:
    """A backup report without what differs between any two runs (ids, stamps, URLs)."""

    def same(text: str | None) -> str | None:
        return re.sub(r"_\d{8}_\d{6}|nas-\d+", "", text) if text else text

    return [
        (c.cell, c.ok, c.stage, [(t.target, t.ok, t.stage, same(t.error)) for t in c.targets])
        for c in report.cells
    ]


@pytest.mark.parametrize("fault", ["refused", "slow"])
def test_webhook_down_or_slow_changes_nothing_else(
    failing_vault: Callable[..., Vault], tmp_path: Path, fault: str
) -> None:
    baseline = failing_vault(BACKUP_ALERT_LOG=str(tmp_path / "baseline.log")).backup()
    with running(delay=3.0) as slow:
        url = (
            f"http://127.0.0.1:{closed_port()}/hook?key={TOKEN}"
            if fault == "refused"
            else slow.url(f"/hook?key={TOKEN}")
        )
        vault = failing_vault(BACKUP_ALERT_WEBHOOK=url, BACKUP_ALERT_TIMEOUT="0.3")
        started = time.monotonic()
        report = vault.backup()
        took = time.monotonic() - started
    assert _comparable(report) == _comparable(baseline)
    assert not report.ok
    # Retried briefly: three attempts of at most 0.3 s each, plus short pauses.
    assert took < 5, took
    if fault == "slow":
        # Retried, within three attempts and 3 x the timeout in all.
        assert 2 <= len(slow.received) <= 3
    lines = (tmp_path / "alerts.log").read_text().splitlines()
    assert len(lines) == 1
    alert = json.loads(lines[0])
    assert (alert["stage"], alert["target"], alert["run"]) == ("upload", "nas", report.run)


def test_a_failed_webhook_is_logged_without_its_token_or_secret(
    failing_vault: Callable[..., Vault], tmp_path: Path
) -> None:
    stream = io.StringIO()
    handler = configure_logging("json", logging.DEBUG, stream)
    try:
        url = f"http://127.0.0.1:{closed_port()}/robot/send?access_token={TOKEN}"
        vault = failing_vault(
            BACKUP_ALERT_WEBHOOK=url, BACKUP_ALERT_FORMAT="dingtalk", BACKUP_ALERT_SECRET=SECRET
        )
        report = vault.backup()
    finally:
        logging.getLogger("cellvault").removeHandler(handler)
        logging.getLogger("cellvault").setLevel(logging.NOTSET)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [e for e in events if e["event"] == "alert.webhook_failed"]
    assert len(failed) == 1
    assert failed[0]["webhook"].startswith("http://127.0.0.1:")
    assert "cannot connect" in failed[0]["error"]
    run_log = next((tmp_path / "backup" / "logs").glob("backup_*.log")).read_text()
    assert "alert.webhook_failed" in run_log
    for text in (stream.getvalue(), run_log, (tmp_path / "alerts.log").read_text()):
        assert TOKEN not in text
        assert SECRET not in text
    assert not report.ok


def test_refused_message_is_not_retried(
    failing_vault: Callable[..., Vault], receiver: WebhookServer
) -> None:
    receiver.reply = {"errcode": 310000, "errmsg": "sign not match"}
    vault = failing_vault(BACKUP_ALERT_WEBHOOK=receiver.url(), BACKUP_ALERT_FORMAT="dingtalk")
    assert not vault.backup().ok
    time.sleep(0.3)
    assert len(receiver.received) == 1


def test_server_error_is_retried_then_given_up(receiver: WebhookServer) -> None:
    receiver.status = 503
    settings = AlertSettings(webhook=receiver.url(), format="slack", timeout=1.0)
    assert send(settings, {"status": "failed", "stage": "pack"}) is False
    assert len(receiver.received) == 3
    # Recently down: the next alert gets one attempt only.
    assert send(settings, {"status": "failed", "stage": "pack"}) is False
    assert len(receiver.received) == 4


@pytest.mark.parametrize(("status", "attempts"), [(429, 3), (502, 3), (400, 1), (404, 1)])
def test_rate_limits_and_server_errors_are_retried_client_errors_not(
    receiver: WebhookServer, status: int, attempts: int
) -> None:
    receiver.status = status
    settings = AlertSettings(webhook=receiver.url(), format="slack", timeout=1.0)
    assert send(settings, {"status": "failed", "stage": "pack"}) is False
    assert len(receiver.received) == attempts


def test_success_notice_only_when_asked(tmp_path: Path, receiver: WebhookServer) -> None:
    from tests.helpers import SAMPLE, make_vault, write_tree

    cells = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    base = {"BACKUP_ALERT_WEBHOOK": receiver.url(), "BACKUP_ALERT_LOG": "off"}
    quiet = make_vault(tmp_path / "b1", {"crm": [cells]}, extra=base)
    assert quiet.backup().ok
    assert receiver.received == []
    chatty = make_vault(
        tmp_path / "b2", {"crm": [cells]}, extra={**base, "BACKUP_ALERT_ON": "always"}
    )
    report = chatty.backup()
    body = _one_alert(receiver).body
    assert (body["status"], body["operation"], body["run"]) == ("ok", "backup", report.run)
    assert body["cells"] == ["crm"]
    assert not (tmp_path / "deploy").exists()


def test_alert_failure_for_verify_names_the_operation() -> None:
    settings = AlertSettings(webhook="https://hooks.slack.com/services/T/B/X")
    failure = Failure(stage="verify", error="boom", cell="crm", target="s3", operation="verify")
    from cellvault.notify import alert_for

    _, body = build_request(settings, alert_for(failure))
    assert body["text"].startswith("cellvault verify FAILED at stage verify")
