"""Every kind of Linux path through S3 and a failover: what the fidelity matrix checks locally.

A cell holding one case per kind (``tests/test_fidelity.py``'s) is backed up
on a primary site to its own folder and to S3; it is restored from S3 alone
(``--into``), and a standby site pulls it and takes over with ``dr
failover`` after the primary is gone. Each restored tree is compared with
the source by lstat, attributes, link targets, hard-link identity,
allocated blocks and content, with no option set.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

from cellvault import TargetSpec
from tests.servers.fixtures import S3Bucket
from tests.test_fidelity import AS_ROOT, CASES, describe, find

from .test_dr import make_site, s3_spec


def _every_kind(cell: Path) -> None:
    cell.mkdir(parents=True)
    for case in CASES:
        if (case.needs_root and not AS_ROOT) or any(find(t) is None for t in case.tools):
            continue
        case.make(cell)
    os.utime(cell, ns=(0, 1_600_000_000_123_456_789))


def test_every_kind_comes_back_from_s3_and_through_a_failover(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage: TargetSpec = s3_spec(s3_bucket)
    primary_dir, standby_dir = tmp_path / "site-primary", tmp_path / "site-dr"
    start = dt.datetime(2025, 1, 1, 2, tzinfo=dt.UTC)
    primary = make_site(primary_dir, "primary", storage, cells=("crm",), start=start)
    _every_kind(primary_dir / "cells" / "crm")
    want = describe(primary_dir / "cells" / "crm")
    backup = primary.vault.backup()
    assert backup.ok, backup.cells[0].error

    # From S3 alone, into another folder.
    report = primary.vault.restore(into=tmp_path / "from-s3", source=["s3"])
    assert report.ok, report.cells[0].error
    assert describe(tmp_path / "from-s3" / "crm" / "crm") == want

    # The standby pulls it; the primary is gone; the standby takes over.
    standby = make_site(
        standby_dir, "dr", storage, cells=("crm",), start=start + dt.timedelta(days=1)
    )
    prepared = standby.prepare()
    assert prepared.ok, prepared
    shutil.rmtree(primary_dir)
    failover = standby.failover(restore="latest")
    assert failover.ok, failover
    assert failover.verify is not None and failover.verify.ok
    assert describe(standby_dir / "cells" / "crm") == want
