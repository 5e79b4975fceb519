"""``cellvault init``: a first configuration for the cells found under a root.

:func:`scaffold` looks at the folders directly under a root (each one a
cell, as ``BACKUP_CELLS_ROOT`` means), writes a commented
``backup_config.env`` in the operations manual's format (or a
``cellvault.toml``) naming them, and the schedule: a cron file, or systemd
units and timers (full daily at 02:00, incremental every 6 hours, prune
daily, a restore drill weekly). :func:`init` also runs the
:mod:`cellvault.doctor` checklist on the result.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import attrs

from .cell import validate_cell_name
from .config import Config, load_env, load_toml, read_env_file
from .doctor import DoctorReport, run_checks
from .errors import ConfigError
from .layout import RESERVED_NAMES

__all__ = ["FORMATS", "SCHEDULES", "InitResult", "find_cells", "init", "scaffold"]

FORMATS = ("env", "toml")
SCHEDULES = ("cron", "systemd", "none")
#: Doctor lines that fail on any new setup until the first backup and drill ran.
_FIRST_RUN = ("backup ", "drill ")


@attrs.frozen
class InitResult:
    """What ``cellvault init`` found, wrote and checked."""

    cells: tuple[str, ...]
    config: Path
    files: tuple[Path, ...]
    doctor: DoctorReport | None = None

    @property
    def ok(self) -> bool:
        """Every doctor line passed, but those only the first backup and drill can pass."""
        if self.doctor is None:
            return True
        return all(c.ok or c.name.startswith(_FIRST_RUN) for c in self.doctor.checks)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "cells": list(self.cells),
            "config": str(self.config),
            "files": [str(f) for f in self.files],
            "doctor": self.doctor.to_dict() if self.doctor is not None else None,
        }


def find_cells(root: Path) -> list[str]:
    """The cells under *root*: its folders whose names are valid cell names, sorted."""
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory", hint="give the folder that holds the cells")
    names = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith(".") or entry.name in RESERVED_NAMES:
            continue
        try:
            validate_cell_name(entry.name)
        except ConfigError:
            continue  # lost+found, names with capitals or spaces: not cells
        names.append(entry.name)
    return names


def _env_text(cells: list[str], root: Path, backup_dir: Path) -> str:
    return f"""\
# backup_config.env: written by 'cellvault init' for the cells under {root}.
# The operations manual's format: read with 'cellvault --env-file <this file>';
# variables set in the environment win over it. Every variable is in
# docs/configuration.md; 'cellvault --env-file <this file> doctor' checks them.

# --- what to back up
export BACKUP_DIR={shlex.quote(str(backup_dir))}
export BACKUP_CELLS={shlex.quote(" ".join(cells))}
export BACKUP_CELLS_ROOT={shlex.quote(str(root))}
# Leave files out of every cell (patterns separated by spaces), or of one cell:
# export BACKUP_EXCLUDE="*.tmp *.swp"
# export BACKUP_CELL_CRM_EXCLUDE="cache/*"

# --- where to store it: local, and any of s3, oss, nas (the first is read first)
export BACKUP_TARGETS=local
# export BACKUP_S3_BUCKET=paas-backup BACKUP_S3_PREFIX=paas   # with pip install 'cellvault[s3]'
# export BACKUP_OSS_BUCKET=paas-backup BACKUP_OSS_ENDPOINT=https://oss-cn-hangzhou.aliyuncs.com
# export BACKUP_NAS_PATH=/mnt/nas/paas-backup                 # or BACKUP_NAS_RSYNC=host::module/path

# --- how
export BACKUP_TYPE=full
# export BACKUP_JOBS=2
# export BACKUP_VERIFY_LEVEL=read

# --- retention (what 'cellvault prune' keeps): the manual's 7 days full, 3 days incremental
# export BACKUP_KEEP_FULL_DAYS=7
# export BACKUP_KEEP_INCREMENTAL_DAYS=3

# --- alerts: a chat webhook, apprise URLs, and the alert log (default: ../backup/
# backup_alerts.log from this file's folder, the manual's deploy/backup/)
# export BACKUP_ALERT_WEBHOOK=https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...
# export BACKUP_ALERT_URLS="mailtos://user:password@mail.example.com?to=ops@example.com"
"""


def _toml_text(cells: list[str], root: Path, backup_dir: Path) -> str:
    tables = "\n".join(f'[cells.{name}]\npaths = ["{root / name}"]\n' for name in cells)
    return f"""\
# cellvault.toml: written by 'cellvault init' for the cells under {root}.
# Read with 'cellvault --config <this file>'; every key is in docs/configuration.md.

backup_dir = "{backup_dir}"
backup_type = "full"
# jobs = 2
# verify_level = "read"

{tables}
# The first target is the primary one; without [targets], one local target in backup_dir.
[targets.local]
url = "{backup_dir}"

# [targets.s3]
# url = "s3://paas-backup/paas"                # with pip install 'cellvault[s3]'

[retention]
keep_full_days = 7
keep_incremental_days = 3

[alerts]
# webhook = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=..."
# urls = ["mailtos://user:password@mail.example.com?to=ops@example.com"]
"""


def _command(config: Path, fmt: str) -> str:
    exe = shutil.which("cellvault") or str(Path(sys.argv[0]).resolve())
    flag = "--env-file" if fmt == "env" else "--config"
    return f"{shlex.quote(exe)} {flag} {shlex.quote(str(config))}"


#: (name, systemd OnCalendar, cron time, arguments): the manual's schedule.
_JOBS = (
    ("backup-full", "*-*-* 02:00:00", "0 2 * * *", "backup --type full"),
    ("backup-incremental", "*-*-* 08,14,20:00:00", "0 8,14,20 * * *", "backup --type incremental"),
    ("prune", "*-*-* 03:30:00", "30 3 * * *", "prune"),
    ("drill", "Sun *-*-* 04:00:00", "0 4 * * 0", "verify --level drill"),
)


def _cron_text(command: str) -> str:
    lines = [
        "# cellvault's schedule, written by 'cellvault init': install with 'crontab <this file>'",
        "# (or copy it to /etc/cron.d/ with a user column). Times are the host's local time.",
    ]
    lines += [f"{cron}  {command} {args}" for _, _, cron, args in _JOBS]
    return "\n".join(lines) + "\n"


def _systemd_units(command: str) -> dict[str, str]:
    units = {}
    for name, calendar, _, args in _JOBS:
        units[f"cellvault-{name}.service"] = (
            f"# Written by 'cellvault init'. Install: copy to /etc/systemd/system/, then\n"
            f"# systemctl daemon-reload && systemctl enable --now cellvault-{name}.timer\n"
            f"[Unit]\nDescription=cellvault {args}\n"
            "Wants=network-online.target\nAfter=network-online.target remote-fs.target\n\n"
            f"[Service]\nType=oneshot\nExecStart={command} {args}\n"
            "Nice=10\nIOSchedulingClass=best-effort\nTimeoutStartSec=6h\n"
        )
        units[f"cellvault-{name}.timer"] = (
            f"[Unit]\nDescription=cellvault {args}: {calendar}\n\n"
            f"[Timer]\nOnCalendar={calendar}\nPersistent=true\n\n"
            "[Install]\nWantedBy=timers.target\n"
        )
    return units


def _write(files: dict[Path, str], force: bool) -> tuple[Path, ...]:
    existing = [p for p in files if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"{existing[0]} exists already; nothing was written",
            hint="pass --force to replace it, or --dir for another folder",
        )
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if path.suffix in (".env", ".toml"):
            path.chmod(0o600)  # it will hold credentials
    return tuple(files)


def scaffold(
    root: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    backup_dir: str | os.PathLike[str] | None = None,
    fmt: str = "env",
    schedule: str = "cron",
    cells: Iterable[str] | None = None,
    force: bool = False,
) -> InitResult:
    """Write a configuration for the cells under *root*, and its schedule, into *dest*.

    *cells* defaults to :func:`find_cells`; *backup_dir* to ``/backup/paas``.
    Raises :class:`ConfigError` when no cell is found, or when a file exists
    (unless *force*). Nothing is written unless everything can be.
    """
    if fmt not in FORMATS or schedule not in SCHEDULES:
        raise ConfigError(f"unknown format {fmt!r} or schedule {schedule!r}")
    root_path = Path(root).expanduser().absolute()
    names = list(cells) if cells is not None else find_cells(root_path)
    if not names:
        raise ConfigError(
            f"no cell under {root_path}: no folder with a cell's name",
            hint="give the folder that holds one folder per cell (BACKUP_CELLS_ROOT)",
        )
    folder = Path(dest).expanduser().absolute()
    target = Path(backup_dir or "/backup/paas").expanduser().absolute()
    config = folder / ("backup_config.env" if fmt == "env" else "cellvault.toml")
    text = _env_text if fmt == "env" else _toml_text
    files = {config: text(names, root_path, target)}
    command = _command(config, fmt)
    if schedule == "cron":
        files[folder / "cellvault.cron"] = _cron_text(command)
    elif schedule == "systemd":
        files.update({folder / "systemd" / n: t for n, t in _systemd_units(command).items()})
    written = _write(files, force)
    return InitResult(tuple(names), config, written)


def load(result: InitResult) -> tuple[Config, dict[str, str] | None]:
    """The configuration *result* wrote, and the environment doctor reads with it."""
    if result.config.suffix == ".toml":
        return load_toml(result.config), None
    environ = {**read_env_file(result.config), **os.environ}
    return load_env(None, result.config), environ


def init(
    root: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    backup_dir: str | os.PathLike[str] | None = None,
    fmt: str = "env",
    schedule: str = "cron",
    force: bool = False,
    doctor: bool = True,
    probe: bool = True,
) -> InitResult:
    """:func:`scaffold`, then the doctor checklist on what it wrote (unless not *doctor*).

    With *probe* off, doctor writes no probe object to the targets.
    """
    result = scaffold(root, dest, backup_dir=backup_dir, fmt=fmt, schedule=schedule, force=force)
    if not doctor:
        return result
    config, environ = load(result)
    report = run_checks(config, environ=environ, source=str(result.config), probe=probe)
    return attrs.evolve(result, doctor=report)
