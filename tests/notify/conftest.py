"""Fixtures of the alert tests: a vault with one failing target (the webhook receiver is in tests/conftest.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cellvault import TargetSpec, Vault, hookimpl
from tests.helpers import SAMPLE, MemTarget, make_vault, write_tree

_urls = itertools.count()


class DeniedTarget(MemTarget):
    """A ``denied://`` target: locks work, storing archive data is refused."""

    def put_file(self, local: Path, key: str) -> None:
        raise PermissionError(13, "Permission denied", key)


class DeniedPlugin:
    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> MemTarget | None:
        return DeniedTarget(spec) if spec.scheme == "denied" else None


@pytest.fixture
def failing_vault(tmp_path: Path) -> Callable[..., Vault]:
    """A vault whose ``crm`` backup succeeds on ``local`` and fails to upload to ``nas``."""

    def make(**extra: Any) -> Vault:
        cells = write_tree(tmp_path / "cells" / "crm", SAMPLE)
        targets = [
            TargetSpec("local", str(tmp_path / "backup")),
            TargetSpec("nas", f"denied://nas-{next(_urls)}"),
        ]
        return make_vault(
            tmp_path / "backup",
            {"crm": [cells]},
            targets=targets,
            plugins=[DeniedPlugin()],
            extra={"BACKUP_ALERT_LOG": str(tmp_path / "alerts.log"), **extra},
        )

    return make
