"""Hook scripts (restore_hook_<cell>.sh and siblings) and the health-check hook."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

from cellvault import ArchiveMeta, Cell, hookimpl
from cellvault.config import load_env
from tests.dumpers.conftest import Alerts, vault_for
from tests.helpers import clock, snapshot, write_tree

PY = sys.executable

#: A hook script that records its arguments and environment, then runs $HOOK_BODY.
RECORDER = f"""#!/bin/sh
{PY} - "$@" <<'EOF'
import json, os, sys
keys = [k for k in os.environ if k.startswith(("CELLVAULT_", "RESTORE_"))]
record = {{"argv": sys.argv[1:], "env": {{k: os.environ[k] for k in keys}}}}
staging = os.environ.get("CELLVAULT_STAGING")
if staging:
    record["staged"] = sorted(os.listdir(staging))
    record["live"] = open(os.path.join(os.environ["CELLVAULT_PATHS"], "config.yaml")).read()
dumps = os.environ.get("CELLVAULT_DUMPS")
if dumps and os.path.isdir(dumps):
    record["dumps"] = sorted(os.listdir(dumps))
root = os.environ.get("CELLVAULT_ROOT")
if root:
    record["root"] = open(os.path.join(root, "crm", "config.yaml")).read()
with open(os.path.join(os.environ["HOOK_LOG"], os.environ["CELLVAULT_HOOK"] + ".json"), "w") as f:
    json.dump(record, f)
EOF
"""


def hook(folder: Path, name: str, body: str = RECORDER, *, executable: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body)
    path.chmod(0o755 if executable else 0o644)
    return path


def records(log: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {p.stem: json.loads(p.read_text()) for p in log.glob("*.json")}


def test_every_script_runs_with_its_variables(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    hooks, log = tmp_path / "hooks", tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv("HOOK_LOG", str(log))
    for name in (
        "before_backup_crm.sh",
        "after_backup_crm.sh",
        "restore_hook_crm.sh",
        "health_check_crm.sh",
    ):
        hook(hooks, name)
    dumper = {"type": "command", "name": "db", "command": ["echo", "x"], "autoload": False}
    vault = vault_for(tmp_path, [dumper], hooks_dir=hooks, clock=clock())
    report = vault.backup()
    assert report.ok, report.cells[0].error
    archive = report.cells[0].archive
    got = records(log)
    assert got["before_backup"]["env"]["CELLVAULT_ARCHIVE"] == archive
    assert got["after_backup"]["env"]["CELLVAULT_OK"] == "1"
    crm = tmp_path / "cells" / "crm"
    assert got["before_backup"]["env"]["CELLVAULT_PATHS"] == str(crm)

    (crm / "config.yaml").write_text("live, before the restore\n")
    report = vault.restore("latest", skip_prebackup=True)
    assert report.ok, report.cells[0].error
    restore = records(log)["restore"]
    env = restore["env"]
    assert env["CELLVAULT_CELL"] == env["RESTORE_CELL"] == "crm"
    assert env["CELLVAULT_ARCHIVE"] == archive
    assert env["RESTORE_DATE"] == archive.removeprefix("cell_crm_")
    assert restore["argv"] == [env["CELLVAULT_STAGING"], archive]
    # Before the swap: the staged tree is there, the live data is still the old one.
    assert "crm" in restore["staged"]
    assert restore["live"] == "live, before the restore\n"
    assert restore["dumps"] == ["db"]
    assert not Path(env["CELLVAULT_STAGING"]).exists()
    # The health check runs after the swap and sees the restored data.
    assert records(log)["health_check"]["root"] == "db: crm\n"


def test_a_failing_or_hanging_restore_hook_leaves_live_data(tmp_path: Path, alerts: Alerts) -> None:
    hooks = tmp_path / "hooks"
    vault = vault_for(tmp_path, [], restore_hooks_dir=hooks, hook_timeout=1, plugins=[alerts])
    assert vault.backup().ok
    crm = tmp_path / "cells" / "crm"
    (crm / "config.yaml").write_text("precious\n")
    live = snapshot(crm)

    hook(hooks, "restore_hook_crm.sh", "#!/bin/sh\necho 'cannot import crm.orders' >&2\nexit 4\n")
    report = vault.restore("latest", skip_prebackup=True)
    assert not report.ok
    (cell,) = report.cells
    assert cell.stage == "hook"
    assert "restore_hook_crm.sh: failed with exit code 4: cannot import crm.orders" in (
        cell.error or ""
    )
    assert snapshot(crm) == live

    hook(hooks, "restore_hook_crm.sh", "#!/bin/sh\nsleep 300\n")
    started = time.monotonic()
    report = vault.restore("latest", skip_prebackup=True)
    assert time.monotonic() - started < 30
    assert not report.ok and "timed out after 1 s" in (report.cells[0].error or "")
    assert snapshot(crm) == live
    assert [f.stage for f in alerts.failures if f.operation == "restore"] == ["restore"] * 2
    assert not [p for p in crm.parent.iterdir() if p.name.startswith(".cellvault")]


def test_a_script_without_the_executable_bit_runs_with_sh(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    marker = tmp_path / "ran"
    hook(hooks, "restore_hook_crm.sh", f"touch {marker}\n", executable=False)
    vault = vault_for(tmp_path, [], restore_hooks_dir=hooks)
    assert vault.backup().ok
    assert vault.restore("latest", skip_prebackup=True).ok
    assert marker.exists()
    assert not os.stat(hooks / "restore_hook_crm.sh").st_mode & stat.S_IXUSR


def test_before_backup_failure_fails_the_cell_and_after_backup_still_runs(
    tmp_path: Path, alerts: Alerts
) -> None:
    hooks = tmp_path / "hooks"
    resumed = tmp_path / "resumed"
    hook(hooks, "before_backup_crm.sh", "#!/bin/sh\necho 'writers did not pause' >&2\nexit 2\n")
    hook(
        hooks,
        "after_backup_crm.sh",
        f'#!/bin/sh\necho "$CELLVAULT_OK $CELLVAULT_ERROR" > {resumed}\n',
    )
    billing = write_tree(tmp_path / "cells" / "billing", {"a": "b"})
    vault = vault_for(
        tmp_path, [], cells=[Cell("billing", [billing])], hooks_dir=hooks, plugins=[alerts]
    )
    report = vault.backup()
    by_cell = {c.cell: c for c in report.cells}
    assert by_cell["billing"].ok
    assert by_cell["crm"].stage == "hook" and "writers did not pause" in (
        by_cell["crm"].error or ""
    )
    assert resumed.read_text().startswith("0 cell crm: hook")
    assert [f.stage for f in alerts.failures] == ["hook"]


def test_after_backup_runs_when_the_dump_fails_and_before_the_upload(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    resumed = tmp_path / "resumed"
    hook(hooks, "after_backup_crm.sh", f'#!/bin/sh\necho "$CELLVAULT_OK" >> {resumed}\n')
    dumper = {"type": "command", "name": "db", "command": ["false"]}
    vault = vault_for(tmp_path, [dumper], hooks_dir=hooks)
    report = vault.backup()
    assert not report.ok and report.cells[0].stage == "dump"
    assert resumed.read_text() == "0\n"


class Health:
    """A health-check plugin: records what it saw, fails when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[tuple[str, str, str]] = []

    @hookimpl
    def cellvault_health_check(self, cell: Cell, meta: ArchiveMeta, root: Path) -> None:
        self.seen.append((cell.name, str(meta.id), (root / "crm" / "config.yaml").read_text()))
        if self.fail:
            raise RuntimeError("crm answers 503")


def test_health_check_after_the_swap(tmp_path: Path, alerts: Alerts) -> None:
    health = Health()
    vault = vault_for(tmp_path, [], plugins=[health, alerts], clock=clock())
    report = vault.backup()
    assert report.ok
    crm = tmp_path / "cells" / "crm"
    (crm / "config.yaml").write_text("changed\n")
    assert vault.restore("latest", skip_prebackup=True).ok
    assert health.seen == [("crm", report.cells[0].archive, "db: crm\n")]
    assert not (tmp_path / "backup" / ".cellvault" / "health").exists()

    health.fail = True
    (crm / "config.yaml").write_text("changed again\n")
    restored = vault.restore("latest", skip_prebackup=True)
    assert not restored.ok
    (cell,) = restored.cells
    assert cell.stage == "health" and "crm answers 503" in (cell.error or "")
    # The restored data stays in place; the failure is alerted.
    assert (crm / "config.yaml").read_text() == "db: crm\n"
    assert [f.stage for f in alerts.failures] == ["health"]


def test_hook_settings_from_the_environment(tmp_path: Path) -> None:
    config = load_env(
        {
            "BACKUP_DIR": str(tmp_path / "b"),
            "BACKUP_HOOKS_DIR": "/etc/paas/hooks",
            "RESTORE_HOOKS_DIR": "/etc/paas/restore",
            "BACKUP_HOOK_TIMEOUT": "90",
        }
    )
    assert config.hooks_dir == Path("/etc/paas/hooks")
    assert config.restore_hooks_dir == Path("/etc/paas/restore")
    assert config.hook_timeout == 90
