"""``cellvault dr watch``: fail the standby over, by itself, when the primary is gone (manual §5.5).

On the standby, each probe asks two witnesses whether the primary lives:

* its **health URLs** (its gateway, its control plane: ``DR_WATCH_URLS``),
  up when any answers 2xx or 3xx;
* its **heartbeat** in the shared store (``.dr/heartbeats/<primary>.json``,
  written by its scheduled backups and by ``cellvault dr heartbeat``), fresh
  when younger than ``DR_WATCH_HEARTBEAT_AGE`` seconds.

The primary is *down* in a probe only when both say so. A failover starts
only after ``DR_WATCH_PROBES`` probes in a row found it down, the first of
them at least ``DR_WATCH_WINDOW`` seconds ago: one probe that finds it
alive starts the count again (flapping never fails over), and a primary that
still writes heartbeats is never failed over, whatever the network between
the sites says (a partition). Every decision is logged (``dr.watch``) with
the probes that led to it.

A failover is recorded before it starts, in ``<backup_dir>/.cellvault/dr/
watch.json`` (with the probe history, so that ``--once`` from cron counts
across runs): a watch killed mid-failover and started again finishes it
(the primary still gone) or rolls it back (the primary's heartbeat is fresh
again: the epoch goes back to the primary if this site had taken it, no
traffic was switched). The failover itself is the ordinary one (pull,
verify, restore, the epoch, the marker), then the traffic switch
(``cellvault_switch_traffic``), then an alert. Only one site can take the
epoch, so two standbys watching the same primary cannot both become active.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import requests

from ..config import Config
from ..errors import ConfigError, DrError
from ..fence import claim_epoch, read_epoch, read_heartbeat
from ..log import get_logger, redact_text
from ..modes import private_dirs, private_opener
from ..report import Report, iso
from ..run import open_run
from .context import SiteContext
from .failover import failover
from .reports import FailoverReport, HookOutcome

__all__ = ["Probe", "WatchDecision", "WatchSettings", "Watcher"]

log = get_logger(__name__)

#: Probes kept in the state file (enough for any window the settings allow).
_HISTORY = 200


@attrs.frozen
class WatchSettings:
    """What ``dr watch`` watches and when it acts (the ``DR_WATCH_*`` variables)."""

    primary: str
    urls: tuple[str, ...]
    probes: int = 3
    window: float = 180.0
    interval: float = 30.0
    heartbeat_age: float = 300.0
    #: Seconds each health URL gets to answer.
    timeout: float = 5.0
    #: What the failover restores (``latest``, a date, an id; ``None``: nothing).
    restore: str | None = "latest"

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> WatchSettings:
        """The settings of *config*; *overrides* (not ``None``) win (the command line's options)."""
        values: dict[str, Any] = {
            "primary": config.dr_watch_primary,
            "urls": tuple(config.dr_watch_urls),
            "probes": config.dr_watch_probes,
            "window": config.dr_watch_window,
            "interval": config.dr_watch_interval,
            "heartbeat_age": config.dr_watch_heartbeat_age,
        }
        values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
        if not values["primary"]:
            raise ConfigError(
                "dr watch needs the site id of the primary it watches",
                hint="set DR_WATCH_PRIMARY (or --primary)",
            )
        if not values["urls"]:
            raise ConfigError(
                "dr watch needs at least one health URL of the primary: it fails over only "
                "when its health and its heartbeat both say it is gone",
                hint="set DR_WATCH_URLS (or --url, repeatable)",
            )
        bad = [u for u in values["urls"] if not str(u).startswith(("http://", "https://"))]
        if bad:
            raise ConfigError(f"DR_WATCH_URLS: {redact_text(bad[0])} is not an http(s) URL")
        return cls(**values)


@attrs.frozen
class Probe(Report):
    """One look at the primary: its health URLs and its heartbeat."""

    at: dt.datetime
    #: Each health URL (credentials masked) -> ``ok`` or why not.
    health: Mapping[str, str]
    heartbeat_at: dt.datetime | None
    heartbeat_fresh: bool
    heartbeat_error: str | None = None

    @property
    def health_up(self) -> bool:
        return any(v == "ok" for v in self.health.values())

    @property
    def down(self) -> bool:
        """Both witnesses say the primary is gone."""
        return not self.health_up and not self.heartbeat_fresh

    def summary(self) -> str:
        beat = f"heartbeat {iso(self.heartbeat_at)}" if self.heartbeat_at else "no heartbeat"
        health = "; ".join(f"{u}: {v}" for u, v in self.health.items())
        return (
            f"{iso(self.at)} {'DOWN' if self.down else 'up'}: {health}; "
            f"{beat} ({'fresh' if self.heartbeat_fresh else 'stale'})"
        )


@attrs.frozen
class WatchDecision(Report):
    """What one round of ``dr watch`` decided, why, and on which probes.

    *action*: ``alive`` (the primary answers or writes heartbeats),
    ``suspect`` (down, but not for long enough yet), ``failover`` (done),
    ``failover-failed``, ``would-fail-over`` (``--dry-run``), ``active``
    (this site already is the active one: nothing to watch), ``resumed``,
    ``rolled-back`` (a failover a killed watch had started).
    """

    action: str
    reason: str
    probes: tuple[Probe, ...] = ()
    failover: FailoverReport | None = None
    traffic: tuple[HookOutcome, ...] = ()

    @property
    def ok(self) -> bool:
        return self.action != "failover-failed" and all(h.ok for h in self.traffic)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w", encoding="utf-8", opener=private_opener) as f:
        json.dump(data, f, sort_keys=True, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@attrs.define
class Watcher:
    """The watch of one standby site over its primary (:meth:`step` is one round)."""

    ctx: SiteContext
    settings: WatchSettings
    sleep: Callable[[float], None] = time.sleep
    get: Callable[..., Any] = requests.get

    @property
    def state_path(self) -> Path:
        """``<backup_dir>/.cellvault/dr/watch.json``: the probe history and a failover under way."""
        return self.ctx.layout.dr / "watch.json"

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"history": []}
        except (OSError, ValueError) as exc:
            raise DrError(
                f"the watch state {self.state_path} is unreadable ({exc})",
                hint="look at it; remove it to start counting probes again",
            ) from None
        return data if isinstance(data, dict) else {"history": []}

    # -- probes ---------------------------------------------------------------------

    def probe(self) -> Probe:
        """Ask the health URLs and read the primary's heartbeat."""
        health: dict[str, str] = {}
        for url in self.settings.urls:
            shown = redact_text(url)
            try:
                answer = self.get(url, timeout=self.settings.timeout, allow_redirects=False)
                status = int(answer.status_code)
                health[shown] = "ok" if status < 400 else f"HTTP {status}"
            except requests.RequestException as exc:
                health[shown] = type(exc).__name__
        now = self.ctx.now()
        beat, errors = read_heartbeat(self.ctx.storage, self.settings.primary)
        fresh = beat is not None and (now - beat.at).total_seconds() < self.settings.heartbeat_age
        return Probe(
            at=now,
            health=health,
            heartbeat_at=beat.at if beat else None,
            heartbeat_fresh=fresh,
            heartbeat_error="; ".join(errors) or None,
        )

    def _streak(self, history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The trailing probes that all found the primary down (a gap longer than the window breaks it)."""
        streak: list[Mapping[str, Any]] = []
        for entry in reversed(history):
            if not entry["down"]:
                break
            if (
                streak
                and (_when(streak[-1]["at"]) - _when(entry["at"])).total_seconds()
                > self.settings.window + self.settings.interval
            ):
                break
            streak.append(entry)
        return streak[::-1]

    # -- one round ------------------------------------------------------------------

    def step(self, *, dry_run: bool = False) -> WatchDecision:
        """Probe once, decide, and fail over when the primary is gone for the whole window."""
        state = self._state()
        if state.get("intent"):
            return self._resume(state, dry_run=dry_run)
        active = self._active_site()
        if active == self.ctx.site_id:
            return self._log(WatchDecision("active", f"this site ({active}) is the active one"))
        probe = self.probe()
        history = [*state.get("history", []), {"at": iso(probe.at), "down": probe.down}]
        state["history"] = history[-_HISTORY:]
        streak = self._streak(history)
        span = (probe.at - _when(streak[0]["at"])).total_seconds() if streak else 0.0
        if not probe.down:
            decision = WatchDecision("alive", _alive_reason(probe), (probe,))
        elif len(streak) < self.settings.probes or span < self.settings.window:
            decision = WatchDecision(
                "suspect",
                f"the primary {self.settings.primary} looks gone in {len(streak)} probe(s) over "
                f"{span:.0f}s; failing over takes {self.settings.probes} over "
                f"{self.settings.window:g}s",
                (probe,),
            )
        elif active is not None and active != self.settings.primary:
            decision = WatchDecision(
                "alive", f"site {active} holds the current epoch, not the primary", (probe,)
            )
        elif dry_run:
            decision = WatchDecision(
                "would-fail-over", _gone_reason(self.settings, streak, span), (probe,)
            )
        else:
            _write_json(self.state_path, state)
            return self._fail_over(state, probe, _gone_reason(self.settings, streak, span))
        if not dry_run:
            _write_json(self.state_path, state)
        return self._log(decision)

    def _active_site(self) -> str | None:
        """The site holding the current epoch, else the one the failover marker names."""
        epoch = read_epoch(self.ctx.storage)[0] if self.ctx.storage else None
        if epoch is not None:
            return epoch.site
        marker = self.ctx.markers.current()[0]
        return marker.site_id if marker else None

    def _fail_over(self, state: dict[str, Any], probe: Probe, reason: str) -> WatchDecision:
        state["intent"] = {"stage": "failing-over", "at": iso(probe.at), "reason": reason}
        _write_json(self.state_path, state)
        log.warning("dr.watch", action="failing-over", reason=reason, probe=probe.summary())
        return self._finish(state, reason, (probe,))

    def _finish(
        self, state: dict[str, Any], reason: str, probes: tuple[Probe, ...]
    ) -> WatchDecision:
        """The failover (unless its marker is written already), then the traffic switch."""
        marker = self.ctx.markers.current()[0]
        report: FailoverReport | None = None
        if marker is None or marker.site_id != self.ctx.site_id:
            report = failover(
                self.ctx,
                restore=self.settings.restore,
                switch=False,
                previous_site=self.settings.primary,
            )
            if not report.ok or report.marker is None:
                del state["intent"]
                _write_json(self.state_path, state)
                decision = WatchDecision(
                    "failover-failed",
                    f"{reason}; the failover failed: {report.error}",
                    probes,
                    report,
                )
                self._alert(decision)
                return self._log(decision)
            marker = report.marker
        state["intent"]["stage"] = "switching"
        _write_json(self.state_path, state)
        traffic = tuple(self.ctx.switch_traffic(marker))
        del state["intent"]
        state["history"] = []
        _write_json(self.state_path, state)
        decision = WatchDecision("failover", reason, probes, report, traffic)
        self._alert(decision)
        return self._log(decision)

    def _resume(self, state: dict[str, Any], *, dry_run: bool) -> WatchDecision:
        """A failover a killed watch had started: finish it, or roll it back if the primary lives."""
        intent = state["intent"]
        reason = f"resuming the failover started at {intent.get('at')} ({intent.get('reason')})"
        marker = self.ctx.markers.current()[0]
        ours = marker is not None and marker.site_id == self.ctx.site_id
        probe = self.probe()
        if dry_run:
            return self._log(WatchDecision("would-resume", reason, (probe,)))
        if ours or probe.down:
            decision = self._finish(state, reason, (probe,))
            return attrs.evolve(decision, action="resumed") if decision.ok else decision
        # The primary is back and no marker names this site: give it back its epoch.
        epoch = read_epoch(self.ctx.storage)[0]
        if epoch is not None and epoch.site == self.ctx.site_id:
            claim_epoch(
                self.ctx.storage,
                self.settings.primary,
                reason="rollback",
                now=self.ctx.now(),
                host=self.ctx.vault.host,
            )
        del state["intent"]
        state["history"] = []
        _write_json(self.state_path, state)
        decision = WatchDecision(
            "rolled-back",
            f"the failover started at {intent.get('at')} was not finished and the primary "
            f"{self.settings.primary} is alive again ({_alive_reason(probe)}): rolled back, "
            "no marker written, no traffic switched",
            (probe,),
        )
        self._alert(decision)
        return self._log(decision)

    def _alert(self, decision: WatchDecision) -> None:
        """Tell the alert hooks what the watch did (a failover is news, successful or not)."""
        vault = self.ctx.vault
        with open_run(
            "dr-watch", config=vault.config, plugins=vault.plugins, host=vault.host
        ) as run:
            run.fail(
                "dr-watch",
                f"dr watch on site {self.ctx.site_id}: {decision.action}: {decision.reason}",
            )

    def _log(self, decision: WatchDecision) -> WatchDecision:
        log.info(
            "dr.watch",
            action=decision.action,
            reason=decision.reason,
            site=self.ctx.site_id,
            primary=self.settings.primary,
            probes=[p.summary() for p in decision.probes],
        )
        return decision

    def run(
        self,
        *,
        dry_run: bool = False,
        rounds: int | None = None,
        on_decision: Callable[[WatchDecision], None] | None = None,
    ) -> WatchDecision:
        """Probe every ``interval`` seconds until a failover ends the watch (or *rounds* are done)."""
        n = 0
        while True:
            decision = self.step(dry_run=dry_run)
            if on_decision is not None:
                on_decision(decision)
            n += 1
            if decision.action in {"failover", "failover-failed", "resumed"} or (
                rounds is not None and n >= rounds
            ):
                return decision
            self.sleep(self.settings.interval)


def _alive_reason(probe: Probe) -> str:
    why = []
    if probe.health_up:
        why.append("a health URL answers")
    if probe.heartbeat_fresh and probe.heartbeat_at is not None:
        why.append(f"its heartbeat is fresh ({iso(probe.heartbeat_at)})")
    return "the primary is alive: " + " and ".join(why)


def _gone_reason(settings: WatchSettings, streak: Sequence[Mapping[str, Any]], span: float) -> str:
    return (
        f"the primary {settings.primary} is gone: no health URL answered and no fresh "
        f"heartbeat in {len(streak)} probes over {span:.0f}s (at least {settings.probes} "
        f"over {settings.window:g}s)"
    )
