"""A run killed (SIGKILL) while it takes a lease over never blocks the cell, on any target kind.

Issue 18 (item 8, the kill injections of item 4). A child process takes over a
stale lease with every store call slowed, and is killed at a random moment:
before its claim, holding a claim, between deleting the stale lease and
creating its own, or holding the lease. The next run then gets the lease (a
claim left behind is taken over once older than the lease's ttl; a lease of
a dead process on this host is stale at once), and it alone holds it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cellvault import LockHeld, TargetSpec
from cellvault.lock import Lease
from cellvault.targets.base import Target
from cellvault.targets.local import LocalTarget
from cellvault.targets.oss import OssTarget
from cellvault.targets.rsync import RsyncTarget
from cellvault.targets.s3 import S3Target
from tests.servers.fixtures import RsyncModule
from tests.targets.helpers import oss_spec, s3_spec
from tests.targets.test_lease_race import KEY, stale_lease

ROUNDS = 3
_CLASSES = {"s3": S3Target, "oss": OssTarget, "rsync": RsyncTarget, "local": LocalTarget}

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from cellvault import TargetSpec
    from cellvault.lock import Lease
    from cellvault.targets.{module} import {cls}

    spec = json.loads(sys.argv[1])
    target = {cls}(TargetSpec(spec["name"], spec["url"], spec["options"]))
    for name in ("read_bytes", "read_bounded", "read_tagged", "create_exclusive",
                 "replace_if", "delete", "put_bytes"):
        def slow(*a, _f=getattr(target, name), **k):
            time.sleep(0.08)
            return _f(*a, **k)
        setattr(target, name, slow)
    print("start", flush=True)
    lease = Lease.acquire(target, "crm", "killed run", ttl=1)
    print("acquired", flush=True)
    time.sleep(600)
    """
)


@pytest.fixture(params=sorted(_CLASSES))
def spec_of(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, TargetSpec]:
    kind = request.param
    if kind == "s3":
        return kind, s3_spec(request.getfixturevalue("s3_bucket"))
    if kind == "oss":
        return kind, oss_spec(request.getfixturevalue("oss_bucket"))
    if kind == "rsync":
        module: RsyncModule = request.getfixturevalue("rsync_module")
        return kind, TargetSpec("nas", module.url_for("nas"))
    return kind, TargetSpec("local", str(tmp_path / "backup"))


def acquire_after_kill(make: Callable[[], Target]) -> Lease:
    """The next run: tries for a while (a claim left behind is fresh for one ttl)."""
    for _ in range(40):
        try:
            return Lease.acquire(make(), "crm", "next run", ttl=1)
        except LockHeld:
            time.sleep(0.25)
    pytest.fail("the cell stayed locked after the run taking it was killed")


def test_a_run_killed_mid_takeover_never_blocks_the_cell(
    spec_of: tuple[str, TargetSpec], tmp_path: Path
) -> None:
    kind, spec = spec_of
    cls = _CLASSES[kind]

    def make() -> Target:
        return cls(spec)

    script = tmp_path / "child.py"
    script.write_text(CHILD.format(module=cls.__module__.rsplit(".", 1)[1], cls=cls.__name__))
    plain = make()
    rng = random.Random(18)
    for round_ in range(ROUNDS):
        plain.put_bytes(KEY, stale_lease(round_))
        child = subprocess.Popen(
            [
                sys.executable,
                str(script),
                json.dumps({"name": spec.name, "url": spec.url, "options": dict(spec.options)}),
            ],
            stdout=subprocess.PIPE,
            env=os.environ,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"start"
        time.sleep(rng.uniform(0.0, 0.8))  # somewhere in the takeover, or after it
        child.send_signal(signal.SIGKILL)
        child.wait()
        lease = acquire_after_kill(make)
        assert json.loads(plain.read_bytes(KEY))["token"] == lease.token, f"round {round_}"
        with pytest.raises(LockHeld):
            Lease.acquire(make(), "crm", "a second run", ttl=60)
        lease.release()
        with pytest.raises(FileNotFoundError):
            plain.read_bytes(KEY)
