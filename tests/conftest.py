"""Shared fixtures. Tests never load whatever plugins happen to be installed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellvault.notify import webhook
from tests.servers.webhook import WebhookServer

# Entry points are loaded only by the tests that install one on purpose.
os.environ["CELLVAULT_LOAD_PLUGINS"] = ""

pytest_plugins = ["tests.servers.fixtures"]


@pytest.fixture
def cells_root(tmp_path: Path) -> Path:
    """A folder for the cells' live data."""
    root = tmp_path / "cells"
    root.mkdir()
    return root


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backup"


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each test in a scratch directory of its own.

    The alert log's default, as in the operations manual, is
    ``deploy/backup/backup_alerts.log`` relative to the current directory:
    a failing backup in a test must not write into the checkout.
    """
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep the seed's variables of the machine out of the tests."""
    for key in list(os.environ):
        if key.startswith(("BACKUP_", "RESTORE_", "DR_")) or key == "CELLVAULT_CONFIG":
            monkeypatch.delenv(key, raising=False)
    yield


@pytest.fixture(autouse=True)
def _fresh_webhook_state() -> Iterator[None]:
    """A webhook that failed in one test must not be 'recently down' in the next."""
    webhook._down_until.clear()
    yield
    webhook._down_until.clear()


@pytest.fixture
def receiver() -> Iterator[WebhookServer]:
    """A webhook receiver on 127.0.0.1 that records what it is sent."""
    server = WebhookServer().start()
    try:
        yield server
    finally:
        server.stop()
