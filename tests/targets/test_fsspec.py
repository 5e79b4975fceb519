"""Any fsspec URL is a target (memory://)."""

from __future__ import annotations

import os
from pathlib import Path

from cellvault import TargetSpec
from tests.ops.test_incremental import snapshot
from tests.targets.helpers import make_cell, vault_for


def test_any_fsspec_url_is_a_target(tmp_path: Path) -> None:
    live = make_cell(tmp_path)
    vault = vault_for(
        tmp_path, live, TargetSpec("mem", "memory://cellvault-test-" + os.urandom(4).hex())
    )
    assert type(vault.target("mem")).__name__ == "FsspecTarget"
    assert vault.backup().ok
    out = tmp_path / "out"
    assert vault.restore("latest", into=out, source=["mem"]).ok
    assert snapshot(out / "crm" / "crm") == snapshot(live)
