"""The apprise notifier: any apprise URL in BACKUP_ALERT_URLS, secrets never in logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from cellvault import ConfigError, Vault, load_env, load_toml
from cellvault.notify import alert_settings
from cellvault.notify import apprise as notifier
from tests.servers.fixtures import require_modules
from tests.servers.webhook import WebhookServer, closed_port

PASSWORD = "s3cr3t-pass-word"


@pytest.fixture(autouse=True)
def _apprise() -> None:
    require_modules("apprise", install="'cellvault[apprise]'")


def _url(receiver: WebhookServer, scheme: str = "json") -> str:
    return f"{scheme}://robot:{PASSWORD}@127.0.0.1:{receiver.port}/hook"


def test_each_failure_reaches_every_url(
    failing_vault: Callable[..., Vault], receiver: WebhookServer, tmp_path: Path
) -> None:
    urls = f"{_url(receiver)} {_url(receiver, 'form')}"
    report = failing_vault(BACKUP_ALERT_URLS=urls).backup()
    assert not report.ok
    assert len(receiver.received) == 2
    # apprise may send to both at once: tell them apart by their body.
    (as_json,) = [r for r in receiver.received if isinstance(r.body, dict)]
    (as_form,) = [r for r in receiver.received if not isinstance(r.body, dict)]
    assert as_json.path == as_form.path == "/hook"
    assert as_json.headers["Authorization"].startswith("Basic ")
    assert as_json.body["title"] == "cellvault backup FAILED at stage upload"
    assert "target: nas" in as_json.body["message"]
    assert as_json.body["type"] == "failure"
    # The alert log has the failure too: apprise is one more channel.
    assert json.loads((tmp_path / "alerts.log").read_text())["target"] == "nas"
    assert "upload" in str(as_form.body)


def test_secrets_never_reach_a_log(
    failing_vault: Callable[..., Vault], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    down = f"json://robot:{PASSWORD}@127.0.0.1:{closed_port()}/hook/{PASSWORD}"
    vault = failing_vault(BACKUP_ALERT_URLS=down)
    report = vault.backup()
    assert not report.ok  # the same result as without the channel
    assert "alert.apprise_failed" in caplog.text
    assert "json://127.0.0.1/***" in caplog.text
    run_logs = "".join(p.read_text() for p in (tmp_path / "backup" / "logs").glob("*.log"))
    for text in (caplog.text, run_logs, (tmp_path / "alerts.log").read_text()):
        assert PASSWORD not in text
    assert PASSWORD not in repr(alert_settings(vault.config))


def test_success_notices_with_always(
    failing_vault: Callable[..., Vault], receiver: WebhookServer, tmp_path: Path
) -> None:
    vault = failing_vault(BACKUP_ALERT_URLS=_url(receiver), BACKUP_ALERT_ON="always")
    assert vault.backup(targets=["local"]).ok
    (notice,) = receiver.received
    assert notice.body["title"] == "cellvault backup ok"
    assert notice.body["type"] == "info"


def test_urls_from_toml_as_a_list(tmp_path: Path, receiver: WebhookServer) -> None:
    toml = tmp_path / "cellvault.toml"
    toml.write_text(
        f'backup_dir = "{tmp_path / "backup"}"\n[alerts]\n'
        f'urls = ["{_url(receiver)}", "{_url(receiver, "form")}"]\n'
    )
    assert alert_settings(load_toml(toml)).urls == (_url(receiver), _url(receiver, "form"))


def test_an_unknown_scheme_is_a_configuration_error(tmp_path: Path) -> None:
    env = {"BACKUP_DIR": str(tmp_path), "BACKUP_ALERT_URLS": f"nosuch://x:{PASSWORD}@host/"}
    with pytest.raises(ConfigError) as err:
        Vault(load_env(env), load_entry_points=False)
    assert "nosuch://host" in err.value.message
    assert PASSWORD not in err.value.message


def test_without_apprise_urls_are_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notifier, "available", lambda: False)
    env = {"BACKUP_DIR": str(tmp_path), "BACKUP_ALERT_URLS": "json://127.0.0.1/x"}
    with pytest.raises(ConfigError, match="needs apprise") as err:
        alert_settings(load_env(env))
    assert "cellvault[apprise]" in (err.value.hint or "")
