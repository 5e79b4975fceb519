"""``cellvault doctor``: the operations manual's quick checklist (section 7) as one call.

:func:`run_checks` answers, line by line, whether a setup is ready for
production:

* the configuration loads, and names no unknown ``BACKUP_*`` / ``RESTORE_*``
  variable (a typo such as ``BACKUP_TARGET`` gets a "did you mean");
* every cell's paths exist and are readable;
* every target is reachable and writable, its credentials included: a small
  probe object ``.cellvault-doctor-<random>`` is written at the target's root,
  read back and removed;
* the alert webhook answers (a ``HEAD`` request: no alert is posted unless
  asked to), and the alert log can be written;
* the newest backup of each cell is fresh (``max_age``, the
  ``BACKUP_MAX_AGE_HOURS`` of ``cellvault status``) and its last verify passed;
* a restore drill (``cellvault verify --level drill``) passed recently.

Each line is a :class:`Check`; a failed one says what to do. Whether cron or
a systemd timer runs the backups cannot be seen from here: the freshness of
the newest backup is the evidence that it does.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import requests

from .cell import Cell
from .config import Config, unknown_env
from .errors import CellvaultError, ConfigError, TargetError
from .journal import debris
from .layout import BackupDirLayout
from .log import get_logger, redact_text
from .notify import AlertSettings, alert_settings
from .notify.webhook import WebhookError, build_request, detect_format, display_url, post
from .ops.drill import sweep_drills
from .targets.advice import target_fix
from .targets.base import Target
from .vault import Vault

__all__ = [
    "PROBE_PREFIX",
    "Check",
    "DoctorReport",
    "config_failed",
    "format_report",
    "run_checks",
]

log = get_logger(__name__)

#: The name of the probe objects written at a target's root (``.cellvault-doctor-<random>``).
PROBE_PREFIX = ".cellvault-doctor-"
#: Entries of a cell's tree checked for readability, at most (a bound for huge trees).
WALK_LIMIT = 200_000


def _one_line(text: str, target: str | None = None) -> str:
    """*text* redacted, on one line, without a leading ``target <name>:`` the check names."""
    text = " ".join(redact_text(text).split())
    if target is not None:
        text = text.removeprefix(f"target {target}: ")
    return text


@attrs.frozen
class Check:
    """One line of the checklist.

    *ok* is false for a failure; a check that passed with a reservation has
    *warn* set (it does not fail the report). *fix* says what to do.
    """

    name: str
    ok: bool
    detail: str
    fix: str | None = None
    warn: bool = False

    @property
    def status(self) -> str:
        """``ok``, ``warn`` or ``fail``."""
        return "fail" if not self.ok else ("warn" if self.warn else "ok")

    @property
    def mark(self) -> str:
        """``[ok]``, ``[warn]`` or ``[FAIL]``: the checklist's mark."""
        return {"ok": "[ok]", "warn": "[warn]", "fail": "[FAIL]"}[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
        }


@attrs.frozen
class DoctorReport:
    """Every :class:`Check`, in checklist order."""

    checks: tuple[Check, ...]
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether no check failed (warnings allowed)."""
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.ok and c.warn]

    def check(self, name: str) -> Check:
        """The check called *name* (``target s3``, ``backup crm``, ...)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "duration": self.duration,
            "failed": len(self.failures()),
            "warnings": len(self.warnings()),
            "checks": [c.to_dict() for c in self.checks],
        }


# -- configuration ---------------------------------------------------------------------


def _variables(environ: Mapping[str, str] | None) -> list[Check]:
    if environ is None:
        return []
    unknown = unknown_env(environ)
    if not unknown:
        return [Check("variables", True, "no unknown BACKUP_* or RESTORE_* variable")]
    names = ", ".join(key for key, _ in unknown)
    fixes = []
    for key, suggestion in unknown:
        if suggestion and "<" in suggestion:
            fixes.append(f"{key}: name it like {suggestion}")
        elif suggestion:
            fixes.append(f"did you mean {suggestion}? rename {key} to {suggestion}")
        else:
            fixes.append(f"remove {key}, or see docs/configuration.md for the known variables")
    return [
        Check(
            "variables",
            False,
            f"not cellvault variables, so ignored: {names}",
            fix="; ".join(fixes),
        )
    ]


def config_failed(
    error: CellvaultError, *, environ: Mapping[str, str] | None = None, source: str | None = None
) -> DoctorReport:
    """The report when the configuration does not load: that line failed, the rest unchecked."""
    where = f"{source}: " if source else ""
    checks = [
        Check(
            "configuration",
            False,
            f"{where}{_one_line(error.message)}",
            fix=redact_text(error.hint) if error.hint else "fix the configuration and run again",
        ),
        *_variables(environ),
    ]
    return DoctorReport(tuple(checks))


def _describe(config: Config, source: str | None) -> str:
    cells = ", ".join(c.name for c in config.cells) or "none"
    targets = ", ".join(t.name for t in config.target_specs)
    where = f"{source}: " if source else ""
    return f"{where}{len(config.cells)} cell(s) ({cells}); target(s) {targets}; backup_dir {config.backup_dir}"


# -- cells -----------------------------------------------------------------------------


def _walk(root: Path, problems: list[str], budget: list[int]) -> None:
    """Check that every directory below *root* can be listed and every file read."""
    stack = [root]
    while stack and budget[0] > 0:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            problems.append(f"cannot list {folder} ({exc.strerror})")
            continue
        for entry in entries:
            budget[0] -= 1
            try:
                if entry.is_symlink():
                    continue  # archived as a link: its target need not be readable
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif not os.access(entry.path, os.R_OK):
                    problems.append(f"cannot read {entry.path}")
            except OSError as exc:
                problems.append(f"cannot stat {entry.path} ({exc.strerror})")
            if len(problems) >= 5:
                return


def _check_cell(cell: Cell) -> Check:
    problems: list[str] = []
    budget = [WALK_LIMIT]
    for path in cell.paths:
        if not path.exists():
            problems.append(f"{path} does not exist")
        elif not os.access(path, os.R_OK):
            problems.append(f"cannot read {path}")
        elif path.is_dir():
            _walk(path, problems, budget)
    paths = ", ".join(str(p) for p in cell.paths)
    if problems:
        return Check(
            f"cell {cell.name}",
            False,
            "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""),
            fix=f"create the path or fix BACKUP_CELLS_ROOT / BACKUP_CELL_{cell.name.upper().replace('-', '_')}_PATHS "
            "(or [cells.<name>] paths), and let the backup user read every file",
        )
    bounded = "" if budget[0] > 0 else f" (the first {WALK_LIMIT} entries checked)"
    return Check(f"cell {cell.name}", True, f"{paths}: exists and is readable{bounded}")


# -- targets ---------------------------------------------------------------------------


def _probe(target: Target) -> tuple[str, bool]:
    """Reach *target*, then write, read back and delete a probe object.

    Return its key, and whether the delete removed it (a put-only backup
    credential, as docs/security.md sets up, cannot: the probe then stays).
    """
    key = f"{PROBE_PREFIX}{secrets.token_hex(6)}"
    body = f"cellvault doctor probe from {socket.gethostname()} at {time.time():.0f}\n".encode()
    # One try each, no retries: doctor reports what the target does now.
    with target.guard("reach the target (list its root)"):
        target.list("")
    with target.guard(f"write the probe object {key}"):
        target.put_bytes(key, body)
    try:
        with target.guard(f"read the probe object {key} back"):
            back = target.read_bounded(key, len(body))  # no more than was written
        if back != body:
            raise TargetError(
                f"the probe object {key} read back differs from what was written",
                target=target.name,
            )
    finally:
        with target.guard(f"delete the probe object {key}"):
            deleted = _delete_probe(target, key)
    return key, deleted


def _delete_probe(target: Target, key: str) -> bool:
    """Delete the probe object *key* (and nothing else); tell whether it is gone."""
    try:
        target.delete(key)
    except PermissionError:
        return False
    try:
        target.stat(key)
    except FileNotFoundError:
        return True
    return False  # the store answered, and kept it


def _check_deletion(target: Target, deleted: bool) -> Check | None:
    """Warn when the backup credential of an object store can delete what it wrote."""
    if not getattr(target, "object_store", False):
        return None  # a directory: the backup user owns what it writes (see docs/security.md)
    name = f"target {target.name} deletion"
    if not deleted:
        return Check(name, True, "the backup credential cannot delete (the probe was refused)")
    if target.object_lock is not None:
        locked = f"archives are locked ({target.object_lock.describe()})"
        return Check(name, True, f"the backup credential can delete, but {locked}")
    return Check(
        name,
        True,
        f"the backup credential can delete objects in {target.spec.display()}: a stolen "
        "credential can delete every archive",
        fix="give backups a credential that can put but not delete and prune a separate one, "
        "or lock archives (BACKUP_OBJECT_LOCK with Object Lock on the bucket); "
        "see docs/security.md",
        warn=True,
    )


def _check_targets(targets: Iterable[Target], timeout: float) -> list[Check]:
    """Probe every target at once, each within *timeout* seconds."""
    results: dict[str, Check] = {}
    extra: dict[str, Check] = {}
    lock = threading.Lock()

    def work(target: Target) -> None:
        started = time.monotonic()
        try:
            key, deleted = _probe(target)
        except CellvaultError as exc:
            check = Check(
                f"target {target.name}",
                False,
                _one_line(exc.message, target.name),
                fix=target_fix(target, exc.message, exc.hint),
            )
        except Exception as exc:  # noqa: BLE001 - a boundary: reported as a failed check
            text = _one_line(f"{type(exc).__name__}: {exc}")
            check = Check(f"target {target.name}", False, text, fix=target_fix(target, text, None))
        else:
            removed = "removed" if deleted else "left (its delete was refused)"
            check = Check(
                f"target {target.name}",
                True,
                f"{target.spec.display()}: reachable; probe {key} written, read back and "
                f"{removed} in {time.monotonic() - started:.2f} s",
            )
            deletion = _check_deletion(target, deleted)
            if deletion is not None:
                with lock:
                    extra[target.name] = deletion
        with lock:
            results.setdefault(target.name, check)

    targets = list(targets)
    threads = [
        threading.Thread(target=work, args=(t,), name=f"doctor-{t.name}", daemon=True)
        for t in targets
    ]
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    out = []
    with lock:
        for target in targets:
            check = results.get(target.name)
            if check is None:
                # Still trying (a client retrying a refused connection, a black hole):
                # the thread is left to finish on its own; it deletes its probe if it can.
                check = Check(
                    f"target {target.name}",
                    False,
                    f"no answer within {timeout:g} s from {target.spec.display()}",
                    fix=target_fix(target, "no answer", None),
                )
                results[target.name] = check
            out.append(check)
        out.extend(extra[t.name] for t in targets if t.name in extra)
    return out


# -- alerts ----------------------------------------------------------------------------


def _check_webhook(settings: AlertSettings, timeout: float, send_test_alert: bool) -> Check:
    if settings.webhook is None:
        return Check(
            "alert webhook",
            True,
            "no BACKUP_ALERT_WEBHOOK: failures go to the alert log only",
            fix="set BACKUP_ALERT_WEBHOOK to your WeCom, DingTalk, Slack or Feishu robot",
            warn=True,
        )
    where = display_url(settings.webhook)
    fmt = settings.format if settings.format != "auto" else detect_format(settings.webhook)
    where = f"{where} ({fmt})"
    settings = attrs.evolve(settings, timeout=min(timeout, settings.timeout))
    if send_test_alert:
        return _post_test_alert(settings, where)
    return _head_webhook(settings, where)


def _post_test_alert(settings: AlertSettings, where: str) -> Check:
    """Post a test alert (``--send-test-alert``): the robot must accept it."""
    alert = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "status": "ok",
        "operation": "doctor test alert",
        "host": socket.gethostname(),
        "error": None,
    }
    url, body = build_request(settings, alert)
    try:
        post(url, body, settings)
    except WebhookError as exc:
        return Check(
            "alert webhook",
            False,
            f"{where}: the test alert was not delivered: {_one_line(str(exc))}",
            fix="check BACKUP_ALERT_WEBHOOK (the robot's full URL and key), "
            "BACKUP_ALERT_FORMAT and BACKUP_ALERT_SECRET",
        )
    return Check("alert webhook", True, f"{where}: a test alert was posted and accepted")


#: What a failed connection's message says, and how a check line names it.
_CONNECT_CAUSES = (
    ("refused", "connection refused"),
    ("Name or service not known", "unknown host"),
    ("Temporary failure in name resolution", "unknown host"),
    ("No route to host", "no route to host"),
    ("SSL", "TLS error"),
)


def _head_webhook(settings: AlertSettings, where: str) -> Check:
    """Ask the webhook's URL for a ``HEAD``: it answers, and nothing is posted."""
    assert settings.webhook is not None
    wait = settings.timeout
    try:
        answer = requests.head(
            settings.webhook,
            timeout=(min(wait, 3.0), wait),
            allow_redirects=False,
            headers={"User-Agent": "cellvault-doctor"},
        )
    except requests.Timeout:
        return Check(
            "alert webhook",
            False,
            f"{where}: no answer within {wait:g} s",
            fix="check that this host can reach the webhook (proxy, firewall, DNS)",
        )
    except requests.RequestException as exc:
        text = str(exc)
        cause = next((why for pattern, why in _CONNECT_CAUSES if pattern in text), None)
        return Check(
            "alert webhook",
            False,
            f"{where}: cannot connect ({cause or type(exc).__name__})",
            fix="check BACKUP_ALERT_WEBHOOK's host and that this host can reach it "
            "(proxy, firewall, DNS)",
        )
    code = answer.status_code
    answer.close()
    if code in (404, 410):
        return Check(
            "alert webhook",
            True,
            f"{where} answers, but HTTP {code} to HEAD: the path may be wrong",
            fix="check the webhook URL; 'cellvault doctor --send-test-alert' posts a real test alert",
            warn=True,
        )
    if code >= 500 and code != 501:
        return Check(
            "alert webhook",
            True,
            f"{where} answers with HTTP {code} (a server error)",
            fix="'cellvault doctor --send-test-alert' posts a real test alert",
            warn=True,
        )
    return Check(
        "alert webhook",
        True,
        f"{where} answers (HTTP {code} to HEAD); no alert was posted (--send-test-alert posts one)",
    )


def _check_alert_log(settings: AlertSettings) -> Check:
    name = "alert log"
    if settings.log is None:
        return Check(
            name,
            True,
            "switched off (BACKUP_ALERT_LOG=off)",
            fix="set BACKUP_ALERT_LOG to a file your log collector reads",
            warn=True,
        )
    path = settings.log if settings.log.is_absolute() else Path.cwd() / settings.log
    if path.exists():
        if path.is_file() and os.access(path, os.W_OK):
            return Check(name, True, f"{path}: exists and is writable")
        return Check(
            name,
            False,
            f"{path}: cannot be appended to",
            fix="let the backup user write it, or set BACKUP_ALERT_LOG",
        )
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        relative = "" if settings.log.is_absolute() else " (relative to the current directory)"
        return Check(name, True, f"{path}: will be created at the first alert{relative}")
    return Check(
        name,
        False,
        f"{path}: cannot be created ({parent} is not writable)",
        fix="create its folder for the backup user, or set BACKUP_ALERT_LOG",
    )


# -- backups and drills ----------------------------------------------------------------


def _ago(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _check_backups(vault: Vault, targets: list[Target], max_age: float | None) -> list[Check]:
    names = [c.name for c in vault.config.cells]
    if not names or not targets:
        return []
    status = vault.status(names, targets=[t.name for t in targets], max_age=max_age)
    out = []
    for cell in status.cells:
        name = f"backup {cell.cell}"
        problems = [f"{t.target}: {p}" for t in cell.targets for p in t.problems]
        if problems:
            text = " ".join(problems)
            if "no archive" in text:
                fix = (
                    f"run 'cellvault backup --cell {cell.cell}', and make sure the schedule "
                    "(cron_backup.example, the systemd timer) is installed"
                )
            elif "max_age" in text:
                fix = (
                    "the scheduled backups have stopped: check the cron job or timer and the "
                    f"newest {vault.config.backup_dir}/logs/backup_*.log, then run "
                    f"'cellvault backup --cell {cell.cell}'"
                )
            elif "verify failed" in text:
                fix = (
                    f"run 'cellvault verify --cell {cell.cell}' to see what is wrong, and take a "
                    "new backup; restore from another target meanwhile"
                )
            else:
                fix = "see 'cellvault status' for details"
            out.append(Check(name, False, "; ".join(problems), fix=fix))
            continue
        verified = [
            f"{t.target} {c.level}"
            + (f" of older {c.archive}" if c.archive and c.archive != t.newest else "")
            for t in cell.targets
            for c in t.checks
            if c.ok and c.level in ("quick", "read", "full")
        ]
        ages = [t.age for t in cell.targets if t.age is not None]
        newest = {t.newest for t in cell.targets if t.newest}
        detail = (
            f"newest {', '.join(sorted(newest))} is {_ago(max(ages))} old "
            f"(max {status.max_age:g} h) on {', '.join(t.target for t in cell.targets)}"
        )
        if not verified:
            out.append(
                Check(
                    name,
                    True,
                    detail + "; never verified",
                    fix=f"run 'cellvault verify --cell {cell.cell}' (and keep BACKUP_VERIFY=1)",
                    warn=True,
                )
            )
        else:
            out.append(Check(name, True, f"{detail}; verified ({', '.join(verified)})"))
    return out


def _check_drills(vault: Vault, targets: list[Target], max_days: float, now: float) -> list[Check]:
    state = vault.state.read().get("cells", {})
    out = []
    for cell in vault.config.cells:
        name = f"drill {cell.name}"
        drills = []
        for target in targets:
            entry = state.get(cell.name, {}).get(target.name, {})
            drill = entry.get("drill") if isinstance(entry, dict) else None
            if isinstance(drill, dict) and drill.get("at"):
                drills.append((float(drill["at"]), target.name, drill))
        fix = (
            f"run 'cellvault verify --level drill --cell {cell.name}' (it restores into a "
            f"scratch directory and times it), and schedule it at least every {max_days:g} days"
        )
        if not drills:
            out.append(Check(name, False, "no restore drill recorded", fix=fix))
            continue
        at, where, drill = max(drills, key=lambda d: d[0])
        age = max(0.0, now - at)
        if not drill.get("ok"):
            out.append(
                Check(
                    name,
                    False,
                    f"the last drill, {_ago(age)} ago on {where}, failed: {drill.get('error')}",
                    fix=f"see 'cellvault verify --level drill --cell {cell.name}' and fix what it "
                    "names before you rely on this backup",
                )
            )
        elif age > max_days * 86400:
            out.append(
                Check(
                    name,
                    False,
                    f"the last drill passed {_ago(age)} ago on {where}, more than {max_days:g} days",
                    fix=fix,
                )
            )
        else:
            rto = drill.get("rto")
            timing = f": restored in {rto:.2f} s (RTO)" if isinstance(rto, int | float) else ""
            out.append(Check(name, True, f"passed {_ago(age)} ago on {where}{timing}"))
    return out


# -- the whole checklist ---------------------------------------------------------------


def _check_dumpers(vault: Vault) -> list[Check]:
    """Probe every configured dumper: connection, permissions, tool versions."""
    out = []
    for cell, dumpers in vault.dumpers.items():
        for dumper in dumpers:
            name = f"dumper {cell}/{dumper.name}"
            try:
                found = dumper.probe()
            except CellvaultError as exc:
                out.append(Check(name, False, _one_line(exc.message), fix=exc.hint))
                continue
            if found is None:
                out.append(Check(name, True, f"type {dumper.type} has no probe", warn=True))
            else:
                out.append(Check(name, True, _one_line(found)))
    return out


def _check_leftovers(vault: Vault) -> Check:
    """Remove what killed drills left; name what killed restores left (their next run settles it)."""
    name = "leftovers"
    try:
        removed = sweep_drills(BackupDirLayout(vault.config.backup_dir), vault.dumpers)
        left = [
            f"cell {cell.name}: {text}"
            for cell in vault.config.cells
            for text in debris(cell.name, list(cell.roots.values()))
        ]
    except (CellvaultError, OSError) as exc:
        return Check(name, False, _one_line(str(exc)), fix="check the backup directory")
    if not removed and not left:
        return Check(name, True, "no leftovers of killed restores or drills")
    return Check(
        name,
        True,
        "; ".join([*(f"removed: {r}" for r in removed), *left]),
        warn=True,
        fix="run a backup or a restore of each cell named, which settles what its "
        "killed restore left"
        if left
        else None,
    )


def _check_config(config: Config, source: str | None) -> Check:
    if config.cells:
        return Check("configuration", True, _describe(config, source))
    return Check(
        "configuration",
        False,
        _describe(config, source) + ": no cells are configured",
        fix="set BACKUP_CELLS (and BACKUP_CELLS_ROOT) or add [cells.<name>] tables",
    )


def _check_alerts(config: Config, timeout: float, send_test_alert: bool) -> list[Check]:
    try:
        settings = alert_settings(config)
    except ConfigError as exc:
        return [Check("alert webhook", False, exc.message, fix=exc.hint or "fix BACKUP_ALERT_*")]
    return [_check_webhook(settings, timeout, send_test_alert), _check_alert_log(settings)]


def run_checks(
    subject: Vault | Config,
    *,
    environ: Mapping[str, str] | None = None,
    source: str | None = None,
    probe: bool = True,
    send_test_alert: bool = False,
    max_age: float | None = None,
    drill_max_age: float = 7.0,
    timeout: float = 15.0,
    vault_options: Mapping[str, Any] | None = None,
) -> DoctorReport:
    """Run the checklist on *subject* (a :class:`Vault`, or a :class:`Config` to build one).

    *environ* is where the configuration's variables came from (the env file
    and the environment): it is checked for unknown names; ``None`` skips that
    line (a TOML configuration). *source* names the configuration in the first
    line. With *probe* off, targets are not written to. *send_test_alert*
    posts a real test alert instead of a ``HEAD`` request. *max_age* (hours)
    defaults to the configuration's ``max_age``; *drill_max_age* is in days.
    *timeout* bounds each target's probe and the webhook request, in seconds.
    *vault_options* are passed to :class:`Vault` when *subject* is a Config.

    Never raises for a problem of the setup: every problem is a failed check.
    """
    started = time.monotonic()
    if isinstance(subject, Vault):
        vault = subject
    else:
        try:
            vault = Vault(subject, **dict(vault_options or {}))
        except CellvaultError as exc:
            report = config_failed(exc, environ=environ, source=source)
            return attrs.evolve(report, duration=time.monotonic() - started)
    config = vault.config
    checks: list[Check] = [_check_config(config, source)]
    checks.extend(_variables(environ))
    checks.extend(_check_cell(cell) for cell in config.cells)

    reachable = list(vault.targets)
    if probe:
        target_checks = _check_targets(vault.targets, timeout)
        checks.extend(target_checks)
        bad = {c.name for c in target_checks if not c.ok}
        # A target that failed its probe fails on its own line only.
        reachable = [t for t in vault.targets if f"target {t.name}" not in bad]

    if probe:
        checks.extend(_check_dumpers(vault))
    checks.append(_check_leftovers(vault))
    checks.extend(_check_alerts(config, timeout, send_test_alert))

    limit = config.max_age if max_age is None else max_age
    try:
        checks.extend(_check_backups(vault, reachable, limit))
    except CellvaultError as exc:
        checks.append(Check("backups", False, exc.message, fix=exc.hint))
    now = vault.clock().timestamp()
    checks.extend(_check_drills(vault, reachable, drill_max_age, now))
    report = DoctorReport(tuple(checks), duration=time.monotonic() - started)
    log.info(
        "doctor.finished",
        ok=report.ok,
        failed=[c.name for c in report.failures()],
        duration=round(report.duration, 3),
    )
    return report


def format_report(report: DoctorReport, echo: Callable[[str], None]) -> None:
    """Write *report* as the checklist people read, one *echo* per line."""
    width = max((len(c.mark) for c in report.checks), default=4)
    for c in report.checks:
        echo(f"{c.mark:<{width}} {c.name}: {c.detail}")
        if c.fix and c.status != "ok":
            echo(f"{'':<{width}}   fix: {c.fix}")
    failed, warned = len(report.failures()), len(report.warnings())
    if failed:
        echo(
            f"doctor: {failed} of {len(report.checks)} checks FAILED"
            + (f", {warned} warning(s)" if warned else "")
            + ": not ready for production"
        )
    else:
        echo(
            f"doctor: all {len(report.checks)} checks passed"
            + (f" ({warned} warning(s))" if warned else "")
            + ": ready for production"
        )
