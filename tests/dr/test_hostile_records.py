"""What DR reads from the shared target is checked like everything else read from a target.

Issue 18 (item 1): failover markers, hand-backs, site records, epochs and
heartbeats go through the validating parsers of :mod:`cellvault.trust`
(bounded size, a JSON object, plain site and cell names, archive ids of the
cell they are given for, whole non-negative counts). A record that fails is
reported once and otherwise ignored; nothing is read past the bound.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from cellvault import Cell, Config, TargetSpec, Vault
from cellvault.dr import DrError, FailoverMarker, Site
from cellvault.dr.records import SITES_FOLDER, SiteRecord
from cellvault.fence import Epoch, Heartbeat, read_heartbeat
from cellvault.targets.local import LocalTarget
from cellvault.trust import MAX_RECORD_BYTES

AT = "2026-12-01T10:00:00+00:00"
CRM = "cell_crm_20261201_100000"
BILLING = "cell_billing_20261201_100000"


def marker(**changes: Any) -> bytes:
    body: dict[str, Any] = {"site_id": "dr", "at": AT, "host": "h", "restored": {"crm": CRM}}
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "raw",
    [
        marker(site_id="../primary"),
        marker(site_id=["dr"]),
        marker(previous_site="a/b"),
        marker(restored={"crm": "../../etc/passwd"}),
        marker(restored={"crm": BILLING}),  # another cell's archive
        marker(restored={"../crm": CRM}),
        marker(verified=["crm"]),
        marker(event="delete-everything"),
        marker(format=-1),
        marker(format=float("nan")),
        marker(handback={"site_id": "dr", "at": AT, "archives": {"billing": CRM}}),
        marker(handback=["not", "an", "object"]),
        b"[1, 2, 3]",
        b"\xff\xfe not json",
        b" " * (MAX_RECORD_BYTES + 1),
    ],
)
def test_a_hostile_failover_marker_is_refused(raw: bytes) -> None:
    with pytest.raises(DrError, match="unusable"):
        FailoverMarker.from_json(raw)


def test_a_good_failover_marker_is_read() -> None:
    handback = {"site_id": "dr", "at": AT, "archives": {"crm": CRM}}
    got = FailoverMarker.from_json(marker(previous_site="primary", handback=handback))
    assert (got.site_id, got.previous_site, dict(got.restored)) == ("dr", "primary", {"crm": CRM})
    assert got.handback is not None and dict(got.handback.archives) == {"crm": CRM}


def record(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "site_id": "dr",
        "at": AT,
        "action": "pull",
        "cells": {"crm": {"count": 2, "bytes": 10, "newest": CRM, "newest_at": AT}},
    }
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (record(), "primary.json"),  # names another site than its own key
        (record(site_id="../../x"), None),
        (record(cells={"crm": {"count": -1}}), None),
        (record(cells={"crm": {"bytes": 1e300}}), None),
        (record(cells={"crm": {"newest": BILLING}}), None),
        (record(cells={"../crm": {}}), None),
        (record(cells={"crm": "many"}), None),
        (record(cells=[1]), None),
        (b"x" * (MAX_RECORD_BYTES + 1), None),
    ],
)
def test_a_hostile_site_record_is_refused(raw: bytes, name: str | None) -> None:
    with pytest.raises(DrError, match="site record"):
        SiteRecord.from_json(raw, name=name)


def test_epochs_and_heartbeats_are_bounded_and_named() -> None:
    epoch = {"epoch": 3, "site": "dr", "at": AT}
    assert (
        Epoch.from_json(json.dumps(epoch).encode(), name=".dr/epochs/0000000003.json").number == 3
    )
    padded = json.dumps(epoch).encode() + b" " * MAX_RECORD_BYTES
    with pytest.raises(DrError, match="over"):
        Epoch.from_json(padded, name=".dr/epochs/0000000003.json")
    with pytest.raises(DrError, match="not a plain name"):
        Heartbeat.from_json(json.dumps({"site": "../dr", "at": AT}).encode())


def shared_site(tmp_path: Path) -> tuple[Site, LocalTarget]:
    """A site whose object storage is a local directory (shared with the other site)."""
    (tmp_path / "cells" / "crm").mkdir(parents=True)
    shared = tmp_path / "shared"
    vault = Vault(
        Config(
            backup_dir=tmp_path / "backup",
            cells=[Cell("crm", [tmp_path / "cells" / "crm"])],
            targets=[
                TargetSpec("local", str(tmp_path / "backup")),
                TargetSpec("store", str(shared)),
            ],
        ),
        load_entry_points=False,
    )
    return Site(vault, "primary"), LocalTarget(TargetSpec("store", str(shared)))


def test_hostile_records_on_the_shared_target_are_reported_once_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site, store = shared_site(tmp_path)
    store.put_bytes(f"{SITES_FOLDER}/a-note.txt", b"not a record: passed over")
    store.put_bytes(f"{SITES_FOLDER}/dr.json", record())
    store.put_bytes(f"{SITES_FOLDER}/evil.json", record(site_id="dr"))  # claims to be dr
    store.put_bytes(f"{SITES_FOLDER}/big.json", b"{" + b" " * (2 * MAX_RECORD_BYTES))
    store.put_bytes(f"{SITES_FOLDER}/bad.json", record(site_id="bad", cells={"crm": {"count": -5}}))
    store.put_bytes(".dr/heartbeats/dr.json", json.dumps({"site": "primary", "at": AT}).encode())
    markers = site.context.markers
    before = {p: p.read_bytes() for p in (tmp_path / "shared").rglob("*") if p.is_file()}
    caplog.set_level(logging.WARNING, logger="cellvault")
    for _ in range(2):
        records = markers.records()
        assert [r.site_id for r in records] == ["dr"]
    unusable = {
        "bad": "archive ?: count -5 is not a whole number >= 0",
        "big": f"the site record is over {MAX_RECORD_BYTES} bytes",
        "evil": "it names site dr, not the one its name says",
    }
    said = {
        (r.msg["key"], r.msg["error"])
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "dr.record_unreadable"
    }
    assert said == {
        (f"{SITES_FOLDER}/{n}.json", f"the site record {n}.json is unusable ({why})")
        for n, why in unusable.items()
    }
    # The heartbeat of site dr that names site primary is not dr's heartbeat.
    beat, errors = read_heartbeat(site.context.storage, "dr")
    assert beat is None and any("names site primary" in e for e in errors)
    # Nothing on the shared target was changed or removed by reading it.
    assert {p: p.read_bytes() for p in (tmp_path / "shared").rglob("*") if p.is_file()} == before
    # Each bad record is reported once (a second listing adds no warning).
    distrusted = {key for _, key, _ in markers.storage[0].distrusted()}
    assert distrusted == {f"{SITES_FOLDER}/{n}.json" for n in ("evil", "big", "bad")}
    # dr status says which records it does not believe, once each.
    report = site.status()
    named = [w for w in report.warnings if "is not believed" in w]
    assert sorted(w.split(": ")[1].split(" is not")[0] for w in named) == sorted(distrusted)
    assert [r.site_id for r in report.sites] == ["dr"]


def test_a_failover_marker_far_over_the_bound_is_unusable_without_being_read_whole(
    tmp_path: Path,
) -> None:
    site, store = shared_site(tmp_path)
    store.put_bytes(".dr/failover.json", marker() + b" " * (3 * MAX_RECORD_BYTES))
    markers = site.context.markers
    with pytest.raises(DrError, match=f"over {MAX_RECORD_BYTES} bytes"):
        markers.remote()
