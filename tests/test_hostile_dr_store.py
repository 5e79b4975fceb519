"""A hostile shared store: sync both ways, dr and doctor stay in their own area.

Issue 18 (item 1), beside ``test_hostile_store.py`` (list, status, verify,
prune, ``restore --into``): two sites share a store (a local directory as the
object storage). Hypothesis plants a forged sidecar in the store and a
hostile DR record (a site record, a failover marker, an epoch or a
heartbeat, well-formed or not, small or huge); then the standby pulls
(``sync --pull-only``) and restores in place, the primary pushes, both take ``dr status`` and the
standby runs ``doctor``. Whatever they answer, nothing outside their own
area changes: the victim file and folder beside them, the live cells of both
sites, billing's archives everywhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from cellvault import ArchiveId, Cell, CellvaultError, Config, TargetSpec, Vault
from cellvault.doctor import run_checks
from cellvault.dr import Site
from cellvault.trust import MAX_RECORD_BYTES

from .helpers import clock
from .test_hostile_store import _tree, hostile_sidecars

SITES = ("primary", "dr")


def vault(root: Path, site: str) -> Vault:
    cells = root / f"cells-{site}"
    return Vault(
        Config(
            backup_dir=root / f"backup-{site}",
            cells=[Cell(c, [cells / c]) for c in ("crm", "billing")],
            targets=[
                TargetSpec("local", str(root / f"backup-{site}")),
                TargetSpec("store", str(root / "store")),
            ],
        ),
        load_entry_points=False,
        clock=clock(dt.datetime(2025, 1, 1, 2, 0, tzinfo=dt.UTC)),
    )


def outside(root: Path) -> dict[str, Any]:
    """What no command here may change."""
    out: dict[str, Any] = {"top": sorted(p.name for p in root.iterdir())}
    out["victim"] = (root / "victim.txt").read_bytes()
    out["elsewhere"] = _tree(root / "elsewhere")
    out["cells-primary"] = _tree(root / "cells-primary")
    # The standby restores crm in place: only its billing must stay as it is.
    out["cells-dr/billing"] = _tree(root / "cells-dr" / "billing")
    out["cells-dr/top"] = sorted(p.name for p in (root / "cells-dr").iterdir())
    for where in ("backup-primary", "backup-dr", "store"):
        out[f"{where}/billing"] = _tree(root / where / "billing")
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-dr")
    for site in SITES:
        for cell in ("crm", "billing"):
            (root / f"cells-{site}" / cell).mkdir(parents=True)
    for cell in ("crm", "billing"):
        (root / "cells-primary" / cell / "data.txt").write_text(f"{cell} data\n")
    (root / "victim.txt").write_text("must survive\n")
    (root / "elsewhere" / "keep").mkdir(parents=True)
    (root / "elsewhere" / "keep" / "file").write_text("not yours\n")
    primary = Site(vault(root, "primary"), "primary")
    assert primary.vault.backup(kind="full", targets=["local"]).ok
    (root / "cells-primary" / "crm" / "data.txt").write_text("crm data, later\n")
    assert primary.vault.backup(kind="incremental", targets=["local"]).ok
    assert primary.push().ok
    assert Site(vault(root, "dr"), "dr").pull().ok
    return root


@pytest.fixture
def fresh(template: Path) -> Iterator[Any]:
    made: list[Path] = []

    def copy() -> Path:
        root = Path(tempfile.mkdtemp(prefix="hostile-dr-"))
        made.append(root)
        shutil.copytree(template, root, dirs_exist_ok=True, symlinks=True)
        return root

    yield copy
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


_TEXT = st.sampled_from(["dr", "primary", "../primary", "/etc/passwd", "", "crm", "a" * 300])
_VALUE = st.one_of(
    _TEXT,
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.sampled_from(["cell_crm_20250101_020000", "cell_billing_20250101_020000", "../../x"]),
)
_CELLS = st.dictionaries(
    st.sampled_from(["crm", "billing", "../crm", "/abs", "x" * 100]),
    st.one_of(_VALUE, st.dictionaries(st.sampled_from(["count", "bytes", "newest"]), _VALUE)),
    max_size=3,
)
_RECORD_KEYS = {
    ".dr/sites/{site}.json": ("site_id", "at", "action", "cells"),
    ".dr/failover.json": ("site_id", "at", "restored", "verified", "handback", "previous_site"),
    ".dr/epochs/0000000007.json": ("epoch", "site", "at"),
    ".dr/heartbeats/{site}.json": ("site", "at"),
}


@st.composite
def hostile_records(draw: st.DrawFn) -> tuple[str, bytes]:
    key = draw(st.sampled_from(sorted(_RECORD_KEYS))).format(site=draw(st.sampled_from(SITES)))
    shape = draw(st.sampled_from(["object", "huge", "garbage"]))
    if shape == "huge":
        return key, b'{"site_id": "dr",' + b" " * (MAX_RECORD_BYTES + 10) + b"}"
    if shape == "garbage":
        return key, draw(st.binary(max_size=64))
    fields = next(v for k, v in _RECORD_KEYS.items() if k.split("{")[0] in key)
    body = {f: draw(st.one_of(_VALUE, _CELLS)) for f in fields}
    body["at"] = draw(st.sampled_from(["2025-01-01T02:00:00+00:00", "9999-12-31", "x"]))
    return key, json.dumps(body).encode()


def plant(root: Path, forged: Any, planted: tuple[str, bytes]) -> None:
    """Put a forged sidecar of crm and a hostile DR record into the shared store."""
    store = root / "store"
    newest = sorted(
        ArchiveId.parse(p.name.removesuffix(".json"))
        for p in (store / "crm").glob("cell_*.json")
        if not p.name.endswith(".manifest.json")
    )[-1]
    billing = next((store / "billing").glob("cell_*.json")).name.removesuffix(".json")
    stem = str(ArchiveId("crm", newest.when + dt.timedelta(seconds=1)))

    def fill(value: Any) -> Any:
        return value.format(stem=stem, billing=billing) if isinstance(value, str) else value

    sidecar = json.loads((store / "crm" / f"{newest}.json").read_bytes())
    body = sidecar | {k: fill(v) for k, v in forged.items() if k != "stored_as"}
    (store / "crm" / f"{fill(forged['stored_as'])}.json").write_text(json.dumps(body))
    key, raw = planted
    (store / key).parent.mkdir(parents=True, exist_ok=True)
    (store / key).write_bytes(raw)


@settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(forged=hostile_sidecars(), planted=hostile_records())
def test_sync_dr_and_doctor_leave_their_area_whatever_the_shared_store_holds(
    fresh: Any, forged: Any, planted: tuple[str, bytes]
) -> None:
    root: Path = fresh()
    plant(root, forged, planted)
    before = outside(root)

    primary, standby = Site(vault(root, "primary"), "primary"), Site(vault(root, "dr"), "dr")
    for step in (
        standby.pull,
        lambda: standby.vault.restore("latest", cells=["crm"], skip_prebackup=True),
        primary.push,
        standby.status,
        primary.status,
        lambda: run_checks(standby.vault, probe=True, timeout=5),
    ):
        with contextlib.suppress(CellvaultError):  # a refusal is fine; leaving the area is not
            step()
    assert outside(root) == before
    # What the in-place restore wrote stays inside the cell, as plain files and folders.
    crm = root / "cells-dr" / "crm"
    assert all(p.resolve().is_relative_to(crm) for p in crm.rglob("*"))
    # The standby's copies are whole archives of crm (or billing's, untouched above).
    for path in (root / "backup-dr" / "crm").glob("cell_*"):
        assert path.name.startswith("cell_crm_") and path.is_file() and not path.is_symlink()


def test_a_dr_record_failing_validation_is_logged_as_a_dr_record(
    fresh: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 18: a site record or an epoch that fails validation has its own event name."""
    root: Path = fresh()
    (root / "store" / ".dr" / "sites").mkdir(parents=True, exist_ok=True)
    (root / "store" / ".dr" / "sites" / "dr.json").write_bytes(b"{not json")
    (root / "store" / ".dr" / "epochs").mkdir(parents=True, exist_ok=True)
    (root / "store" / ".dr" / "epochs" / "0000000007.json").write_text('{"epoch": "seven"}')
    caplog.set_level(logging.WARNING)
    primary = Site(vault(root, "primary"), "primary")
    with contextlib.suppress(CellvaultError):
        primary.status()
    with contextlib.suppress(CellvaultError):
        primary.push()
    logged = [r.getMessage() for r in caplog.records]
    for key in (".dr/sites/dr.json", ".dr/epochs/0000000007.json"):
        named = [m for m in logged if key in m]
        assert named and all("dr.record_unreadable" in m for m in named), (key, logged)
    assert not any("sidecar.unreadable" in m for m in logged), logged


def outside_dr(root: Path) -> dict[str, Any]:
    """What verify, failover and failback may not change (they restore both sites' cells)."""
    out: dict[str, Any] = {"top": sorted(p.name for p in root.iterdir())}
    out["victim"] = (root / "victim.txt").read_bytes()
    out["elsewhere"] = _tree(root / "elsewhere")
    for where in ("backup-primary", "backup-dr", "store"):
        out[f"{where}/billing"] = _tree(root / where / "billing")
    return out


@settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "10")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(forged=hostile_sidecars(), planted=hostile_records())
def test_verify_failover_and_failback_leave_their_area_whatever_the_shared_store_holds(
    fresh: Any, forged: Any, planted: tuple[str, bytes]
) -> None:
    """Issue 18: ``verify --level full``, ``dr failover`` (restoring), then ``dr failback``
    (the hand-back on the standby, the takeover on the primary) against a hostile store."""
    root: Path = fresh()
    plant(root, forged, planted)
    before = outside_dr(root)
    # billing's one archive holds the primary's billing: a restore may put it back, nothing else.
    billing = {site: _tree(root / f"cells-{site}" / "billing") for site in SITES}
    archived = billing["primary"]

    primary, standby = Site(vault(root, "primary"), "primary"), Site(vault(root, "dr"), "dr")
    for step in (
        lambda: standby.vault.verify(level="full"),
        lambda: primary.vault.verify(level="full", targets=["store"]),
        lambda: standby.failover(restore="latest", skip_prebackup=True),
        lambda: standby.failback(final_backup=None),
        lambda: primary.failback(skip_prebackup=True),
    ):
        with contextlib.suppress(CellvaultError):  # a refusal is fine; leaving the area is not
            step()
    assert outside_dr(root) == before
    for site in SITES:
        cells = root / f"cells-{site}"
        assert sorted(p.name for p in cells.iterdir()) == ["billing", "crm"]
        for cell in ("crm", "billing"):
            # What a restore wrote stays inside its cell, as plain files and folders.
            assert all(p.resolve().is_relative_to(cells / cell) for p in (cells / cell).rglob("*"))
        assert _tree(cells / "billing") in (billing[site], archived)
        # Each site's copies are whole archives of their own cell.
        for cell in ("crm", "billing"):
            for path in (root / f"backup-{site}" / cell).glob("cell_*"):
                assert path.name.startswith(f"cell_{cell}_") and path.is_file()
                assert not path.is_symlink()
