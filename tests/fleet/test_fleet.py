"""The fleet against the real brokers: three worker processes posing as three hosts.

Each "host" is a ``cellvault fleet worker`` process with its own
configuration (its own cells, its own backup directory) and a shared NAS
folder as the shared target; the coordinator is this test process, through
the library's :class:`cellvault.fleet.Fleet`. Redis (6379) and RabbitMQ
(5672) run on every machine of this project; a broker that is not there
skips the test with the reason, and fails it under ``CI=true``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import write_tree
from tests.servers.fixtures import require_modules, unavailable

# Database 12: the Redis dumper's tests take 9, 10, 11 and 15 (tests/dumpers/conftest.py),
# the kill tests 4 to 7; a broker there would be emptied under a run of them beside it.
REDIS = "redis://127.0.0.1:6379/12"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
CELLS_PER_HOST = 20


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> str:
    require_modules("celery", "redis", install="pip install 'cellvault[fleet]'")
    port = 6379 if request.param == "redis" else 5672
    if not _reachable(port):
        unavailable(f"no {request.param} broker on 127.0.0.1:{port} (see the environment notes)")
    return REDIS if request.param == "redis" else AMQP


class Host:
    """One fleet host: its cells, its env file, its worker process."""

    def __init__(self, base: Path, name: str, cells: list[str], broker: str, shared: Path) -> None:
        self.name = name
        self.cells = cells
        self.root = base / name
        self.root.mkdir(parents=True)
        for cell in cells:
            write_tree(self.root / "cells" / cell, {"data.txt": f"{cell} on {name}\n" * 50})
        self.env = self.root / "backup_config.env"
        self.env.write_text(
            "\n".join(
                [
                    f"BACKUP_DIR={self.root / 'backup'}",
                    f"BACKUP_CELLS={' '.join(cells)}",
                    f"BACKUP_CELLS_ROOT={self.root / 'cells'}",
                    "BACKUP_TARGETS=local,nas",
                    f"BACKUP_NAS_PATH={shared}",
                    "BACKUP_ALERT_LOG=off",
                    f"BACKUP_HOOKS_DIR={self.root / 'hooks'}",
                    f"CELLVAULT_BROKER_URL={broker}",
                    f"CELLVAULT_FLEET_HOST={name}",
                    f"CELLVAULT_FLEET_POOL=pool-{name.rsplit('-', 1)[-1]}",
                    "",
                ]
            )
        )
        (self.root / "hooks").mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        log = open(self.root / "worker.log", "ab")  # noqa: SIM115 - the process keeps it
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cellvault", "--env-file", str(self.env), "fleet", "worker",
             "--concurrency", "2", *extra],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def fleet_hosts(tmp_path: Path, broker: str) -> Iterator[list[Host]]:
    """Three hosts with twenty cells each, sharing a NAS folder; their workers stopped after."""
    tag = uuid.uuid4().hex[:6]
    shared = tmp_path / "nas"
    shared.mkdir()
    hosts = [
        Host(
            tmp_path,
            f"node{n}-{tag}",
            [f"c{n}{i:02d}-{tag}" for i in range(CELLS_PER_HOST)],
            broker,
            shared,
        )
        for n in range(1, 4)
    ]
    try:
        yield hosts
    finally:
        for host in hosts:
            host.kill()


def coordinator(tmp_path: Path, broker: str, hosts: list[Host]) -> object:
    from cellvault import Vault
    from cellvault.config import load_env
    from cellvault.fleet import Fleet

    cells = [c for h in hosts for c in h.cells]
    env = {
        "BACKUP_DIR": str(tmp_path / "coordinator"),
        "BACKUP_CELLS": " ".join(cells),
        "BACKUP_CELLS_ROOT": str(tmp_path / "coordinator" / "cells"),
        "BACKUP_TARGETS": "local,nas",
        "BACKUP_NAS_PATH": str(tmp_path / "nas"),
        "BACKUP_ALERT_LOG": "off",
        "CELLVAULT_BROKER_URL": broker,
        # The hosts' pool, named after their tag: other tests' pools never take its tasks.
        "CELLVAULT_FLEET_POOL": f"pool-{hosts[0].name.rsplit('-', 1)[-1]}",
    }
    return Fleet(Vault(load_env(env), load_entry_points=False))


def wait_live(fleet: object, names: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = fleet.hosts(timeout=1.0)  # type: ignore[attr-defined]
        if names <= set(found.live):
            return
        time.sleep(0.5)
    raise AssertionError(f"workers {sorted(names)} did not answer within {timeout} s")


def everything_of(hosts: list[Host]) -> list[str]:
    return [c for h in hosts for c in h.cells]


def archives_on(shared: Path, cell: str) -> list[str]:
    return sorted(p.name for p in (shared / cell).glob("*.json") if ".manifest" not in p.name)


def test_sixty_cells_on_three_hosts_back_up_through_the_broker(
    tmp_path: Path, broker: str, fleet_hosts: list[Host]
) -> None:
    for host in fleet_hosts:
        host.start()
    fleet = coordinator(tmp_path, broker, fleet_hosts)
    wait_live(fleet, {h.name for h in fleet_hosts})
    found = fleet.hosts()  # type: ignore[attr-defined]
    assert found.unowned == () and dict(found.contested) == {}
    mine = {h.name for h in fleet_hosts}  # other tests' workers may share the broker
    assert {h: set(cs) for h, cs in found.hosts.items() if h in mine} == {
        h.name: set(h.cells) for h in fleet_hosts
    }

    # Only this test's cells: other suites' workers may be live on the same broker.
    mine_cells = [c for h in fleet_hosts for c in h.cells]
    report = fleet.backup(mine_cells, kind="full", timeout=300)  # type: ignore[attr-defined]
    assert report.ok, [r for r in report.results if not r.ok]
    assert len(report.results) == 3 * CELLS_PER_HOST
    # Each cell was backed up by the host that owns it.
    owner = {c: h.name for h in fleet_hosts for c in h.cells}
    assert all(r.host == owner[r.cell] for r in report.results)
    assert report.hosts == {h.name: CELLS_PER_HOST for h in fleet_hosts}

    # The status comes from the shared target alone: true with every worker down.
    for host in fleet_hosts:
        host.stop()
    status = fleet.status()  # type: ignore[attr-defined]
    nas = {c.cell: next(t for t in c.targets if t.target == "nas") for c in status.cells}
    assert set(nas) == set(owner)
    assert all(t.ok and t.newest for t in nas.values()), [t for t in nas.values() if not t.ok]
    assert all(len(archives_on(tmp_path / "nas", c)) == 1 for c in owner)


# A Redis broker hands an unacknowledged task on after its visibility timeout (12 h by
# default, longer than any backup); RabbitMQ does so as soon as the worker's connection
# drops: the kill is tested with RabbitMQ.
@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_a_worker_killed_mid_backup_loses_and_duplicates_nothing(
    tmp_path: Path, broker: str, fleet_hosts: list[Host]
) -> None:
    victim = fleet_hosts[0]
    started = victim.root / "started"
    for cell in victim.cells[:3]:
        hook = victim.root / "hooks" / f"before_backup_{cell}.sh"
        # The first delivery of these cells' tasks stalls, so the worker is killed mid-task.
        hook.write_text(f"#!/bin/sh\ntouch {started}\n[ -e {started}.again ] || sleep 30\n")
        hook.chmod(0o755)
    for host in fleet_hosts:
        host.start()
    fleet = coordinator(tmp_path, broker, fleet_hosts)
    wait_live(fleet, {h.name for h in fleet_hosts})

    import threading

    outcome: dict[str, object] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            report=fleet.backup(everything_of(fleet_hosts), kind="full", timeout=300)
        )  # type: ignore[attr-defined]
    )
    runner.start()
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), "the stalled task never started"
    victim.kill()
    (victim.root / "started.again").touch()
    victim.start()
    runner.join(timeout=300)
    report = outcome["report"]
    assert report.ok, [r for r in report.results if not r.ok]  # type: ignore[attr-defined]
    for host in fleet_hosts:
        for cell in host.cells:
            assert len(archives_on(tmp_path / "nas", cell)) == 1, cell
            assert len(archives_on(host.root / "backup", cell)) == 1, cell
            leftovers = [
                p.name
                for p in (tmp_path / "nas" / cell).iterdir()
                if not p.name.startswith("cell_") and p.name != ".locks"
            ]
            assert leftovers == [], leftovers


def test_a_cell_nobody_owns_is_reported_not_guessed(
    tmp_path: Path, broker: str, fleet_hosts: list[Host]
) -> None:
    fleet_hosts[0].start()
    fleet = coordinator(tmp_path, broker, fleet_hosts[:1])
    from cellvault.fleet import Fleet

    assert isinstance(fleet, Fleet)
    # The coordinator expects a cell no worker announces.
    extra = Fleet(
        type(fleet.vault)(
            type(fleet.vault.config)(
                backup_dir=fleet.vault.config.backup_dir,
                cells=[
                    *fleet.vault.config.cells,
                    type(fleet.vault.config.cells[0])("orphan", ["/srv/orphan"]),
                ],
                targets=fleet.vault.config.targets,
                fleet=fleet.vault.config.fleet,
            ),
            load_entry_points=False,
        )
    )
    wait_live(extra, {fleet_hosts[0].name})
    found = extra.hosts()
    assert found.unowned == ("orphan",)
    assert found.warnings() == ["cell orphan is owned by no host: nobody backs it up"]
    report = extra.backup(["orphan", fleet_hosts[0].cells[0]], timeout=120)
    assert not report.ok
    assert report.unowned == ("orphan: no owner",)
    assert [r.cell for r in report.results] == [fleet_hosts[0].cells[0]]
    assert report.results[0].ok


def test_an_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    require_modules("celery", install="pip install 'cellvault[fleet]'")
    from cellvault import Vault
    from cellvault.config import load_env
    from cellvault.errors import FleetError
    from cellvault.fleet import Fleet

    env = {
        "BACKUP_DIR": str(tmp_path / "b"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(tmp_path / "cells"),
        "CELLVAULT_BROKER_URL": "amqp://guest:s3cret@127.0.0.1:1//",
    }
    fleet = Fleet(Vault(load_env(env), load_entry_points=False))
    fleet.app.conf.broker_connection_timeout = 1
    fleet.app.conf.broker_connection_max_retries = 0
    with pytest.raises(FleetError, match="cannot be reached") as err:
        fleet.hosts(timeout=0.5)
    assert "s3cret" not in str(err.value)


def test_a_platform_restore_spreads_over_the_standby_pool(
    tmp_path: Path, broker: str, fleet_hosts: list[Host]
) -> None:
    for host in fleet_hosts:
        host.start()
    fleet = coordinator(tmp_path, broker, fleet_hosts)
    wait_live(fleet, {h.name for h in fleet_hosts})
    assert fleet.backup(everything_of(fleet_hosts), kind="full", timeout=300).ok  # type: ignore[attr-defined]
    for host in fleet_hosts:
        host.stop()
    # The standby: every cell in its configuration, none of their data yet; two pool workers.
    everything = [c for h in fleet_hosts for c in h.cells]
    pool = [
        Host(tmp_path, f"standby{n}-{fleet_hosts[0].name[-6:]}", [], broker, tmp_path / "nas")
        for n in (1, 2)
    ]
    for worker in pool:
        worker.env.write_text(
            worker.env.read_text()
            .replace("BACKUP_CELLS=\n", f"BACKUP_CELLS={' '.join(everything)}\n")
            .replace(
                f"BACKUP_CELLS_ROOT={worker.root / 'cells'}",
                f"BACKUP_CELLS_ROOT={tmp_path / 'standby'}",
            )
        )
        worker.start("--pool")
    try:
        wait_live(fleet, {w.name for w in pool})
        found = fleet.hosts()  # type: ignore[attr-defined]
        assert {w.name for w in pool} <= set(found.pool)
        # A pool host can also pull a cell's archives into its own backup directory.
        from cellvault.fleet.app import PULL_TASK
        from cellvault.fleet.settings import host_queue

        pulled = fleet.app.send_task(  # type: ignore[attr-defined]
            PULL_TASK, args=(everything[0],), queue=host_queue(pool[0].name)
        ).get(timeout=120)
        assert pulled["ok"] and pulled["host"] == pool[0].name, pulled
        assert archives_on(pool[0].root / "backup", everything[0])
        report = fleet.restore("latest", cells=everything, skip_prebackup=True, timeout=300)  # type: ignore[attr-defined]
        assert report.ok, [r for r in report.results if not r.ok]
        assert sorted(r.cell for r in report.results) == sorted(everything)
        assert set(report.hosts) <= {w.name for w in pool}
        assert report.duration > 0  # the platform's RTO
        for host in fleet_hosts:
            for cell in host.cells:
                assert (tmp_path / "standby" / cell / "data.txt").read_text() == (
                    host.root / "cells" / cell / "data.txt"
                ).read_text()
    finally:
        for worker in pool:
            worker.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a free port, so that it can be stopped mid-run."""

    def __init__(self, folder: Path) -> None:
        import shutil

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server is missing; apt-get install redis-server")
        self.port = _free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _reachable(self.port):
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_broker_that_goes_away_mid_run_is_a_clear_error_and_a_rerun_completes(
    tmp_path: Path, broker: str
) -> None:
    from cellvault.errors import FleetError

    private = PrivateRedis(tmp_path)
    private.start()
    tag = uuid.uuid4().hex[:6]
    host = Host(
        tmp_path,
        f"solo-{tag}",
        [f"s{i:02d}-{tag}" for i in range(6)],
        private.url,
        tmp_path / "nas",
    )
    (tmp_path / "nas").mkdir()
    for cell in host.cells[2:]:
        hook = host.root / "hooks" / f"before_backup_{cell}.sh"
        hook.write_text("#!/bin/sh\nsleep 2\n")
        hook.chmod(0o755)
    try:
        host.start()
        fleet = coordinator(tmp_path, private.url, [host])
        wait_live(fleet, {host.name})
        import threading

        outcome: dict[str, BaseException | object] = {}

        def run() -> None:
            try:
                outcome["report"] = fleet.backup(host.cells, kind="full", timeout=120)  # type: ignore[attr-defined]
            except BaseException as exc:
                outcome["error"] = exc

        runner = threading.Thread(target=run)
        runner.start()
        time.sleep(1.5)
        private.stop()
        runner.join(timeout=120)
        assert not runner.is_alive(), "the coordinator hung when the broker went away"
        error = outcome.get("error")
        assert isinstance(error, FleetError), outcome
        assert "cannot be reached" in str(error) and "again" in str(error.hint)
        # The broker comes back; the worker reconnects; running the backup again completes.
        private.start()
        wait_live(fleet, {host.name})
        report = fleet.backup(host.cells, kind="full", timeout=120)  # type: ignore[attr-defined]
        assert report.ok, [r for r in report.results if not r.ok]
        for cell in host.cells:
            assert archives_on(tmp_path / "nas", cell), cell
    finally:
        host.kill()
        private.stop()
