"""``cellvault dr watch`` against a simulated primary: a health server and heartbeats in moto's S3.

The primary is a site that backs up, pushes and writes heartbeats; its
gateway is :class:`~tests.servers.health.HealthServer`. Both sites read one
clock the test moves, so "N probes over T seconds" is exact.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from cellvault import Cell, Config, TargetSpec, Vault, hookimpl
from cellvault.dr import Site, WatchSettings
from cellvault.errors import ConfigError
from cellvault.fence import read_epoch
from tests.dr.test_dr import CELLS, s3_spec, seed_cells, site_env, trees, utc, wait_for
from tests.servers.fixtures import S3Bucket
from tests.servers.health import HealthServer
from tests.servers.webhook import closed_port


@attrs.define
class Now:
    """The one clock both sites read; the test moves it."""

    at: dt.datetime = attrs.Factory(lambda: utc(2025, 3, 1, 8))

    def __call__(self) -> dt.datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += dt.timedelta(seconds=seconds)


@attrs.define(eq=False)
class Traffic:
    """A ``cellvault_switch_traffic`` implementation that records its calls."""

    calls: list[tuple[str, str | None, str]] = attrs.Factory(list)

    @hookimpl
    def cellvault_switch_traffic(
        self, site: str, previous_site: str | None, event: str, config: Config
    ) -> str:
        self.calls.append((site, previous_site, event))
        return f"test switch -> {site}"


class Killed(BaseException):
    """What a kill -9 does to a failover in-process: nothing after it runs."""


@attrs.define(eq=False)
class KillAfterRestore:
    armed: bool = True

    @hookimpl
    def cellvault_after_restore(self, report: Any) -> None:
        if self.armed:
            self.armed = False
            raise Killed


def site(base: Path, site_id: str, bucket: S3Bucket, now: Now, *plugins: object) -> Site:
    backup = base / "backup"
    vault = Vault(
        Config(
            backup_dir=backup,
            cells=[Cell(c, [base / "cells" / c]) for c in CELLS],
            targets=[TargetSpec("local", str(backup)), s3_spec(bucket)],
        ),
        load_entry_points=False,
        plugins=plugins,
        clock=now,
    )
    return Site(vault, site_id)


@attrs.define
class Pair:
    now: Now
    primary: Site
    standby: Site
    health: HealthServer
    traffic: Traffic
    base: Path

    def watcher(self, **kwargs: Any) -> Any:
        settings = WatchSettings(
            primary="primary",
            urls=(self.health.url,),
            probes=3,
            window=120,
            interval=60,
            heartbeat_age=300,
            timeout=2,
            **kwargs,
        )
        return self.standby.watcher(settings)

    def step(self, watcher: Any, seconds: float = 60, **kwargs: Any) -> Any:
        self.now.advance(seconds)
        return watcher.step(**kwargs)


@pytest.fixture
def pair(tmp_path: Path, s3_bucket: S3Bucket) -> Iterator[Pair]:
    now = Now()
    traffic = Traffic()
    primary = site(tmp_path / "primary", "primary", s3_bucket, now)
    standby = site(tmp_path / "standby", "dr", s3_bucket, now, traffic)
    seed_cells(tmp_path / "primary")
    assert primary.vault.backup(kind="full").ok  # scheduled: it writes a heartbeat too
    assert standby.prepare().ok
    health = HealthServer().start()
    yield Pair(now, primary, standby, health, traffic, tmp_path)
    health.stop()


def test_a_killed_primary_is_failed_over_within_the_window_and_traffic_switched_once(
    pair: Pair,
) -> None:
    watcher = pair.watcher()
    assert pair.step(watcher).action == "alive"
    # The primary dies: its gateway is gone, it writes no more heartbeats.
    pair.health.stop()
    pair.now.advance(300)  # its last heartbeat goes stale
    decisions = [pair.step(watcher) for _ in range(2)]
    assert [d.action for d in decisions] == ["suspect", "suspect"]
    assert "2 probe(s) over 60s" in decisions[-1].reason
    assert pair.traffic.calls == [] and pair.standby.marker()[0] is None
    # The third probe: 3 probes over 120 s, the window is full.
    done = pair.step(watcher)
    assert done.action == "failover" and done.ok, done
    assert "3 probes over 120s" in done.reason
    assert done.probes[0].down and "ConnectionError" in str(done.probes[0].health)
    assert done.failover is not None and done.failover.epoch == 1
    assert pair.traffic.calls == [("dr", "primary", "failover")]
    assert [h.detail for h in done.traffic] == ["test switch -> dr"]
    epoch = read_epoch(pair.standby.storage)[0]
    assert epoch is not None and epoch.site == "dr"
    assert trees(pair.base / "standby") == trees(pair.base / "primary")
    # Never twice: the next rounds see this site active and do nothing.
    assert pair.step(watcher).action == "active"
    assert pair.traffic.calls == [("dr", "primary", "failover")]


def test_flapping_health_never_fails_over(pair: Pair) -> None:
    watcher = pair.watcher()
    pair.now.advance(600)  # heartbeats stale: only the health URL speaks
    actions = []
    for n in range(12):
        pair.health.status = 503 if n % 3 else 200  # down twice, up once, ...
        actions.append(pair.step(watcher).action)
    assert "failover" not in actions and set(actions) == {"alive", "suspect"}
    assert pair.traffic.calls == [] and read_epoch(pair.standby.storage)[0] is None


def test_a_partition_with_fresh_heartbeats_never_fails_over(pair: Pair) -> None:
    watcher = pair.watcher()
    pair.health.stop()  # the standby cannot reach the primary's gateway...
    decisions = []
    for _ in range(10):
        pair.primary.heartbeat()  # ...but the primary is alive and writes to the store
        decisions.append(pair.step(watcher))
    assert {d.action for d in decisions} == {"alive"}
    assert "its heartbeat is fresh" in decisions[-1].reason
    assert not decisions[-1].probes[0].health_up
    assert pair.traffic.calls == [] and read_epoch(pair.standby.storage)[0] is None


def test_dry_run_says_what_it_would_do_and_changes_nothing(pair: Pair) -> None:
    watcher = pair.watcher()
    pair.health.stop()
    pair.now.advance(600)
    for _ in range(3):
        decision = pair.step(watcher, dry_run=True)
    assert decision.action == "suspect"  # a dry run keeps no history
    state = watcher.state_path
    assert not state.exists()
    for _ in range(2):
        pair.step(watcher)
    decision = pair.step(watcher, dry_run=True)
    assert decision.action == "would-fail-over"
    assert pair.traffic.calls == [] and pair.standby.marker()[0] is None


def test_a_failover_killed_mid_way_is_finished_or_rolled_back_on_restart(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    now = Now()
    traffic, killer = Traffic(), KillAfterRestore()
    primary = site(tmp_path / "primary", "primary", s3_bucket, now)
    standby = site(tmp_path / "standby", "dr", s3_bucket, now, traffic, killer)
    seed_cells(tmp_path / "primary")
    assert primary.vault.backup(kind="full").ok and standby.prepare().ok
    gone = f"http://127.0.0.1:{closed_port()}/healthz"
    settings = WatchSettings("primary", (gone,), probes=2, window=60, timeout=2)
    watcher = standby.watcher(settings)
    now.advance(600)
    assert watcher.step().action == "suspect"
    now.advance(60)
    with pytest.raises(Killed):
        watcher.step()
    intent = json.loads(watcher.state_path.read_text())["intent"]
    assert intent["stage"] == "failing-over"
    # Killed after the epoch was taken (the primary is fenced) and before the marker.
    epoch = read_epoch(standby.storage)[0]
    assert epoch is not None and epoch.site == "dr" and standby.marker()[0] is None

    # Restarted while the primary is back: rolled back, the epoch handed back, nothing switched.
    primary.heartbeat()
    back = watcher.step()
    assert back.action == "rolled-back", back
    assert traffic.calls == [] and standby.marker()[0] is None
    assert "intent" not in json.loads(watcher.state_path.read_text())
    epoch = read_epoch(standby.storage)[0]
    assert epoch is not None and (epoch.number, epoch.site, epoch.reason) == (
        2,
        "primary",
        "rollback",
    )
    assert primary.vault.backup(kind="incremental").ok  # the primary writes again

    # Killed again, restarted with the primary still gone: the failover is finished.
    killer.armed = True
    now.advance(600)
    assert watcher.step().action == "suspect"
    now.advance(60)
    with pytest.raises(Killed):
        watcher.step()
    now.advance(60)
    resumed = watcher.step()
    assert resumed.action == "resumed" and resumed.ok, resumed
    assert traffic.calls == [("dr", "primary", "failover")]
    epoch = read_epoch(standby.storage)[0]
    marker = standby.marker()[0]
    assert epoch is not None and marker is not None and epoch.site == marker.site_id == "dr"


def test_kill_9_of_dr_watch_mid_switch_then_restart_finishes_the_switch_once(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    primary_dir, standby_dir = tmp_path / "primary", tmp_path / "standby"
    seed_cells(primary_dir)
    calls = tmp_path / "switch-calls.txt"
    hang = tmp_path / "switch-hang.sh"
    hang.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/started"\nexec sleep 600\n')
    record = tmp_path / "switch-record.sh"
    record.write_text(f'#!/bin/sh\necho "$@ from $CELLVAULT_SWITCH_PREVIOUS_SITE" >> "{calls}"\n')
    for script in (hang, record):
        script.chmod(0o755)
    cells = {"BACKUP_CELLS": " ".join(CELLS)}
    penv = {**os.environ, **site_env(primary_dir, s3_bucket, "primary"), **cells}
    url = f"http://127.0.0.1:{closed_port()}/healthz"
    watch_env = {
        "DR_PULL_ONLY": "1",
        "DR_WATCH_PRIMARY": "primary",
        "DR_WATCH_URLS": url,  # closed: the primary's gateway is gone
        "DR_WATCH_PROBES": "2",
        "DR_WATCH_WINDOW": "1",
        "DR_WATCH_HEARTBEAT_AGE": "1",
    }
    senv = {**os.environ, **site_env(standby_dir, s3_bucket, "dr", **watch_env), **cells}
    cv = [sys.executable, "-m", "cellvault"]

    def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cv, *args], env=env, capture_output=True, text=True, timeout=300)

    assert run(penv, "backup").returncode == 0
    assert run(senv, "dr", "prepare").returncode == 0
    time.sleep(1.1)  # the heartbeat of the primary's backup is older than 1 s
    first = run(senv, "dr", "watch", "--once")
    assert first.returncode == 0 and "watch: suspect" in first.stdout, first.stdout + first.stderr
    time.sleep(1.1)  # the second probe is a second after the first: the window is full
    proc = subprocess.Popen(
        [*cv, "dr", "watch", "--once"],
        env={**senv, "DR_SWITCH_COMMAND": str(hang)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: (tmp_path / "started").exists(), 300, "the traffic switch to start")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert (tmp_path / "started").read_text().split() == ["dr", "failover"]
    state = json.loads((standby_dir / "backup" / ".cellvault" / "dr" / "watch.json").read_text())
    assert state["intent"]["stage"] == "switching"

    again = run({**senv, "DR_SWITCH_COMMAND": str(record)}, "dr", "watch", "--once")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "watch: resumed" in again.stdout
    assert "ok   traffic switch cellvault.traffic.command" in again.stdout
    assert calls.read_text().splitlines() == ["dr failover from primary"]
    assert trees(standby_dir) == trees(primary_dir)
    last = run({**senv, "DR_SWITCH_COMMAND": str(record)}, "dr", "watch", "--once")
    assert last.returncode == 0 and "watch: active" in last.stdout
    assert calls.read_text().splitlines() == ["dr failover from primary"]
    status = json.loads(run(senv, "dr", "status", "--json").stdout)
    assert status["active"] == "dr"


def test_watch_settings_need_a_primary_and_health_urls(pair: Pair) -> None:
    config = pair.standby.vault.config
    with pytest.raises(ConfigError, match="DR_WATCH_PRIMARY"):
        WatchSettings.from_config(config)
    with pytest.raises(ConfigError, match="DR_WATCH_URLS"):
        WatchSettings.from_config(config, primary="primary")
    with pytest.raises(ConfigError, match="not an http"):
        WatchSettings.from_config(config, primary="primary", urls=("ftp://x/",))
    made = WatchSettings.from_config(config, primary="primary", urls=("http://gw/healthz",))
    assert (made.probes, made.window, made.interval) == (3, 180.0, 30.0)


def test_dr_heartbeat_and_watch_on_the_command_line(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    from click.testing import CliRunner

    from cellvault.cli import cli

    runner = CliRunner()
    cells = {"BACKUP_CELLS": " ".join(CELLS)}
    penv = {**site_env(tmp_path / "primary", s3_bucket, "primary"), **cells}
    gone = f"http://127.0.0.1:{closed_port()}/healthz"
    senv = {
        **site_env(tmp_path / "standby", s3_bucket, "dr", DR_PULL_ONLY="1"),
        **cells,
        "DR_WATCH_PRIMARY": "primary",
        "DR_WATCH_URLS": gone,
    }
    beat = runner.invoke(cli, ["dr", "heartbeat"], env=penv)
    assert beat.exit_code == 0 and "heartbeat of site primary written at" in beat.output
    watched = runner.invoke(cli, ["dr", "watch", "--once", "--dry-run"], env=senv)
    assert watched.exit_code == 0, watched.output + watched.stderr
    assert "watch: alive: the primary is alive: its heartbeat is fresh" in watched.output
    assert "probe " in watched.output and "ConnectionError" in watched.output
    as_json = runner.invoke(cli, ["--json", "dr", "watch", "--once", "--dry-run"], env=senv)
    assert json.loads(as_json.output)["action"] == "alive"
    missing = runner.invoke(cli, ["dr", "watch", "--once"], env={**senv, "DR_WATCH_URLS": ""})
    assert missing.exit_code == 2 and "DR_WATCH_URLS" in missing.stderr
    assert "Traceback" not in missing.output + missing.stderr
