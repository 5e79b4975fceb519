"""The command dumper staged: restore_command loads into a staging location, swap commands swap it.

The "store" is a file the commands move about; a second root whose swap fails
makes the restore put the store back (unswap), a kill between the store's
swap and the files' is finished by the next run (swapped_command says where
it is), and a half configuration is refused.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cellvault import Cell, ConfigError
from tests.helpers import make_vault, times_clock, utc, write_tree
from tests.ops.test_restore_atomic import BreakSecondRoot

TIMES = [utc(2025, 1, 1, 2), utc(2025, 1, 2, 2)]
REPO = Path(__file__).resolve().parents[2]


def staged_dumper(store: Path) -> dict[str, Any]:
    sh = ["sh", "-c"]
    return {
        "type": "command",
        "name": "store",
        "command": ["cat", "live"],
        "cwd": str(store),
        "staging": "live.new",
        "restore_command": [*sh, 'cat > "$CELLVAULT_STAGING"'],
        "swap_command": [*sh, 'mv live live.old && mv "$CELLVAULT_STAGING" live'],
        "unswap_command": [*sh, 'mv live "$CELLVAULT_STAGING" && mv live.old live'],
        "discard_command": [*sh, 'rm -f "$CELLVAULT_STAGING"'],
        "commit_command": ["rm", "-f", "live.old"],
        "swapped_command": ["test", "-e", "live.old"],
    }


def setup(tmp_path: Path) -> tuple[list[Cell], Path, Path]:
    app = write_tree(tmp_path / "srv" / "app", {"config.yaml": "v: 1\n"})
    data = write_tree(tmp_path / "var" / "data", {"ledger.csv": "1\n"})
    store = write_tree(tmp_path / "store", {"live": "backed up\n"})
    cells = [Cell("crm", [app, data], dumpers=[staged_dumper(store)])]
    vault = make_vault(tmp_path / "backup", cells, clock=times_clock(list(TIMES)))
    assert vault.backup().ok
    (store / "live").write_text("live\n")
    write_tree(app, {"config.yaml": "v: live\n"})
    return cells, store, app


def test_staged_command_is_swapped_in_or_put_back(tmp_path: Path) -> None:
    cells, store, app = setup(tmp_path)
    broken = make_vault(
        tmp_path / "backup",
        cells,
        plugins=[BreakSecondRoot()],
        clock=times_clock([utc(2025, 2, 1)]),
    )
    report = broken.restore("latest", cells=["crm"], skip_prebackup=True)
    assert not report.ok
    assert (store / "live").read_text() == "live\n"
    assert sorted(p.name for p in store.iterdir()) == ["live"]  # staging discarded
    assert report.cells[0].parts["dump:store"].startswith("swapped in, then rolled back")

    vault = make_vault(tmp_path / "backup", cells, clock=times_clock([utc(2025, 2, 2)]))
    report = vault.restore("latest", cells=["crm"], skip_prebackup=True)
    assert report.ok, report.to_dict()
    assert report.cells[0].parts["dump:store"] == "swapped in: live.new (for cell crm)"
    assert (store / "live").read_text() == "backed up\n"
    assert (app / "config.yaml").read_text() == "v: 1\n"
    assert sorted(p.name for p in store.iterdir()) == ["live"]  # the old state committed away
    # With staging, the safety backup is not forced to say the restore cannot be undone.
    assert report.cells[0].parts["safety backup"] == "skipped (RESTORE_SKIP_PREBACKUP=1)"


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cellvault import Cell
    from tests.helpers import make_vault, times_clock, utc
    from tests.dumpers.test_command_staging import staged_dumper

    backup, app, data, store = sys.argv[1:5]

    def on_event(event):
        if event.name == "restore.dump_swapped":
            os.kill(os.getpid(), signal.SIGKILL)

    cells = [Cell("crm", [Path(app), Path(data)], dumpers=[staged_dumper(Path(store))])]
    vault = make_vault(Path(backup), cells, on_event=on_event, clock=times_clock([utc(2025, 3, 1)]))
    vault.restore("latest", cells=["crm"])
    sys.exit(3)  # not killed
    """
)


def test_staged_command_killed_after_its_swap_is_finished_by_the_next_run(tmp_path: Path) -> None:
    cells, store, app = setup(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    roots = [str(p) for p in cells[0].roots.values()]
    argv = [sys.executable, "-c", KILLER, str(tmp_path / "backup"), *roots, str(store)]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert (store / "live").read_text() == "backed up\n"  # the store swapped, the files not
    assert (app / "config.yaml").read_text() == "v: live\n"
    events: list[Any] = []
    after = make_vault(
        tmp_path / "backup", cells, on_event=events.append, clock=times_clock([utc(2025, 4, 1)])
    )
    assert after.backup().ok
    (rec,) = [e.data for e in events if e.name == "restore.recovered"]
    assert rec["action"] == "finished", rec
    assert (app / "config.yaml").read_text() == "v: 1\n"
    assert (store / "live").read_text() == "backed up\n"
    assert sorted(p.name for p in store.iterdir()) == ["live"]  # the safety backup holds the old


@pytest.mark.parametrize("missing", ["swap_command", "unswap_command", "staging"])
def test_half_a_staging_configuration_is_refused(tmp_path: Path, missing: str) -> None:
    dumper = staged_dumper(tmp_path)
    del dumper[missing]
    with pytest.raises(ConfigError, match="staging needs staging, swap_command and unswap_command"):
        make_vault(tmp_path / "backup", [Cell("crm", [tmp_path], dumpers=[dumper])])


def test_the_journal_names_each_staged_load_for_the_next_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    cells, _store, _ = setup(tmp_path)
    seen: list[dict[str, Any]] = []

    def on_event(event: Any) -> None:
        if event.name == "restore.dump_swapped":
            (journal,) = tmp_path.rglob(".cellvault-journal-crm.json")
            seen.append(json.loads(journal.read_text()))

    vault = make_vault(
        tmp_path / "backup", cells, on_event=on_event, clock=times_clock([utc(2025, 2, 2)])
    )
    assert vault.restore("latest", cells=["crm"], skip_prebackup=True).ok
    (journal,) = seen
    # What a next run rebuilds the staged load from (Dumper.resume): the dumper by name.
    assert journal["staged"] == ["store"]
    assert journal["sides"] == [
        {"dumper": "store", "what": "live.new (for cell crm)", "side": "live.new", "cell": "crm"}
    ]
    staged = [
        (r.msg["event"], r.msg.get("dumper"), isinstance(r.msg.get("duration"), float))
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") in ("dump.staged", "dump.loaded")
    ]
    assert staged == [
        ("dump.staged", "store", True)
    ]  # loaded into its staging location, not the live store
