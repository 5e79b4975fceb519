"""Shared fixtures. Tests never load whatever plugins happen to be installed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellvault.notify import webhook
from tests.servers.webhook import WebhookServer
from tests.system_tools import require

# Entry points are loaded only by the tests that install one on purpose.
os.environ["CELLVAULT_LOAD_PLUGINS"] = ""

pytest_plugins = ["tests.servers.fixtures", "tests.skip_policy", "cellvault.testing"]

REPO = Path(__file__).resolve().parents[1]
_BEFORE = pytest.StashKey[set[str] | None]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tools(*programs): the test runs these programs; skipped with the install command "
        "when one is missing (failed under CI=true)",
    )


def _untracked() -> set[str] | None:
    """The checkout's untracked files that git does not ignore; ``None`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line[3:] for line in out.splitlines() if line.startswith("??")}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = _untracked()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite leaves nothing in the checkout: a file a test wrote there fails the run."""
    before = session.config.stash.get(_BEFORE, None)
    after = _untracked() if before is not None else None
    if before is None or after is None or not after - before:
        return
    left = ", ".join(sorted(after - before))
    session.config.get_terminal_writer().line(
        f"ERROR: the tests left files in the checkout: {left}", red=True
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("tools"):
        require(*marker.args)


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


@pytest.fixture(params=["here", "apart"])
def manifest_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where a manifest's entries are parsed: in the reading process, or a forked child.

    A manifest of ``PARSE_APART`` characters or more has them parsed apart;
    here, every manifest does.
    """
    if request.param == "apart":
        monkeypatch.setattr("cellvault.manifest.PARSE_APART", 0)
    return str(request.param)
