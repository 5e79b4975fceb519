"""The ``cellvault`` command line: a thin layer over :class:`cellvault.Vault`.

Exit codes: 0 success; 1 a backup, verify or restore failed (or anything
else went wrong at run time); 2 a usage or configuration error. Errors are
one clear message on stderr, never a traceback (``--debug`` shows one).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .config import Config, load_env, load_toml, read_env_file, unknown_env, with_restore_env
from .errors import CellvaultError, ConfigError
from .events import Event
from .log import configure_logging, get_logger, redact_text
from .vault import Vault, iter_failures

__all__ = ["main"]

log = get_logger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: The log handler this command line installed, replaced on each invocation.
_handler: logging.Handler | None = None


class State:
    """What the group's options decide for every subcommand."""

    def __init__(
        self, config: Path | None, env_file: Path | None, as_json: bool, debug: bool
    ) -> None:
        self.config_path = config
        self.env_file = env_file
        self.as_json = as_json
        self.debug = debug
        self.progress = _Progress() if (sys.stderr.isatty() and not as_json) else None

    def load(self) -> Config:
        if self.config_path is not None:
            # The seed's RESTORE_* choices are made per run, in the environment:
            # they apply whatever file holds the rest of the configuration.
            return with_restore_env(load_toml(self.config_path), os.environ)
        if self.env_file is None and not os.environ.get("BACKUP_DIR"):
            raise ConfigError(
                "no configuration: BACKUP_DIR is not set and no --config or --env-file was given",
                hint="pass --env-file backup_config.env or --config cellvault.toml, or try 'cellvault demo'",
            )
        config = load_env(None, self.env_file)
        env = dict(read_env_file(self.env_file)) if self.env_file is not None else {}
        env.update(os.environ)
        for key, suggestion in unknown_env(env):
            # A log event, so that --log-format json keeps stderr machine-readable.
            log.warning("config.unknown_variable", variable=key, did_you_mean=suggestion)
        return config

    def vault(self, config: Config | None = None) -> Vault:
        return Vault(config or self.load(), on_event=self.progress.event if self.progress else None)


class _Progress:
    """One updating status line on a terminal, fed by the vault's events."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.width = 0

    def event(self, event: Event) -> None:
        if event.name == "cell.progress":
            done = int(event.data.get("bytes", 0))
            text = f"{event.cell}: packing {_size(done)} ({event.data.get('files', 0)} files)"
        elif event.name == "archive.stored":
            text = f"{event.cell}: stored on {event.target}"
        elif event.name == "restore.fetched":
            text = f"{event.cell}: read {event.archive} from {event.target}"
        else:
            return
        with self.lock:
            pad = max(0, self.width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()
            self.width = len(text)

    def clear(self) -> None:
        with self.lock:
            if self.width:
                sys.stderr.write("\r" + " " * self.width + "\r")
                sys.stderr.flush()
                self.width = 0


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _fail(message: str, hint: str | None, code: int) -> NoReturn:
    click.echo(f"error: {redact_text(message)}", err=True)
    if hint:
        click.echo(f"  hint: {redact_text(hint)}", err=True)
    sys.exit(code)


@contextmanager
def _errors(state: State) -> Iterator[None]:
    try:
        yield
    except CellvaultError as exc:
        if state.progress:
            state.progress.clear()
        if state.as_json:
            hint = redact_text(exc.hint) if exc.hint else None
            _emit_json(
                {
                    "ok": False,
                    "error": redact_text(exc.message),
                    "hint": hint,
                    "type": type(exc).__name__,
                }
            )
            sys.exit(exc.exit_code)
        _fail(exc.message, exc.hint, exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; nothing partial was committed", None, EXIT_FAILED)
    except Exception as exc:
        if state.debug:
            raise
        _fail(
            f"unexpected {type(exc).__name__}: {exc}",
            "this is a bug in cellvault or a plugin; rerun with --debug for the traceback and report it",
            EXIT_FAILED,
        )
    finally:
        if state.progress:
            state.progress.clear()


pass_state = click.make_pass_decorator(State)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cellvault")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CELLVAULT_CONFIG",
    help="TOML configuration file (or CELLVAULT_CONFIG). Without it, the seed's BACKUP_* variables are read.",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A backup_config.env in the seed's format; variables set in the environment win over it.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout, for machines."
)
@click.option(
    "--log-format",
    type=click.Choice(["console", "json"]),
    default="console",
    show_default=True,
    help="How log events are written to stderr.",
)
@click.option("-v", "--verbose", count=True, help="More log events (-v info, -vv debug).")
@click.option("--debug", is_flag=True, hidden=True, help="Show tracebacks of unexpected errors.")
@click.pass_context
def cli(
    ctx: click.Context,
    config: Path | None,
    env_file: Path | None,
    as_json: bool,
    log_format: str,
    verbose: int,
    debug: bool,
) -> None:
    """Back up, verify and restore the cells of a PaaS platform.

    Configuration comes from --config (TOML), or from the environment variables
    of the seed's backup_config.env (BACKUP_DIR, BACKUP_CELLS, BACKUP_TARGETS,
    RESTORE_DATE, ...), optionally read from --env-file.

    Exit codes: 0 success, 1 a backup, verify or restore failed, 2 a usage or
    configuration error.
    """
    default = logging.INFO if log_format == "json" else logging.WARNING
    level = {0: default, 1: logging.INFO}.get(verbose, logging.DEBUG)
    global _handler
    if _handler is not None:  # main() called again in the same process
        logging.getLogger("cellvault").removeHandler(_handler)
    _handler = configure_logging(log_format, level, tracebacks=debug)
    ctx.obj = State(config, env_file, as_json, debug)


@cli.command()
@click.option(
    "--type",
    "kind",
    type=click.Choice(["full", "incremental"]),
    help="Backup type (default: BACKUP_TYPE, else full).",
)
@click.option(
    "--cell", "cells", multiple=True, help="Back up only this cell (repeatable). Default: all."
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="Store only to this target (repeatable). Default: all.",
)
@pass_state
def backup(
    state: State, kind: str | None, cells: tuple[str, ...], targets: tuple[str, ...]
) -> None:
    """Back up cells to every target, then verify each stored copy.

    Each cell's archive is built once and stored to all targets at once. The
    run exits 1 if any cell or target failed, naming the stage (pack, upload,
    verify) and the target.
    """
    with _errors(state):
        vault = state.vault()
        report = vault.backup(list(cells) or None, kind=kind, targets=list(targets) or None)
    if state.progress:
        state.progress.clear()
    if state.as_json:
        _emit_json(report.to_dict())
    else:
        for cell in report.cells:
            if cell.ok:
                where = ", ".join(t.target for t in cell.targets)
                extra = f" ({cell.note})" if cell.note else ""
                click.echo(
                    f"ok   {cell.archive}  {cell.kind}  {cell.files} files, {_size(cell.bytes_read)} read, "
                    f"{_size(cell.archive_size)} stored on {where}{extra}"
                )
            for warning in cell.warnings:
                click.echo(f"warn {cell.cell}: {warning}", err=True)
        for line in iter_failures(report):
            click.echo(f"FAIL {line}", err=True)
        click.echo(
            f"backup run {report.run}: {'ok' if report.ok else 'FAILED'} in {report.duration:.1f}s"
        )
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@cli.command()
@click.option("--cell", "cells", multiple=True, help="Verify only this cell (repeatable).")
@click.option(
    "--target", "targets", multiple=True, help="Read back from this target only (repeatable)."
)
@click.option(
    "--date",
    "select",
    default="latest",
    show_default=True,
    help="Which archive: latest, an id, a date prefix (20250101_0200) or an ISO time.",
)
@click.option(
    "--all",
    "all_archives",
    is_flag=True,
    help="Verify every committed archive, not only one per cell.",
)
@pass_state
def verify(
    state: State, cells: tuple[str, ...], targets: tuple[str, ...], select: str, all_archives: bool
) -> None:
    """Read archives back from the targets and check every byte.

    Checks each archive's sha256 against its sidecar, every member against the
    manifest, meta.json's backed_at, and that an incremental's chain is there.
    """
    with _errors(state):
        report = state.vault().verify(
            list(cells) or None,
            targets=list(targets) or None,
            select=select,
            all_archives=all_archives,
        )
    if state.as_json:
        _emit_json(report.to_dict())
    else:
        for r in report.results:
            if r.ok:
                click.echo(f"ok   {r.archive} on {r.target}: {r.members} members")
            else:
                click.echo(f"FAIL {r.archive} on {r.target}: {r.error}", err=True)
        if not report.results:
            click.echo("nothing to verify: no archives found")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@cli.command()
@click.option(
    "--date",
    "select",
    help="latest, an archive id, a date prefix such as 20250101_0200, or an ISO time "
    "(newest at or before it). Default: RESTORE_DATE, else latest.",
)
@click.option(
    "--cell",
    "cells",
    multiple=True,
    help="Restore only this cell (default: RESTORE_CELL, else all).",
)
@click.option(
    "--into",
    type=click.Path(file_okay=False, path_type=Path),
    help="Restore under DIR/<cell>/ instead of the cells' own paths (default: RESTORE_INTO).",
)
@click.option(
    "--skip-prebackup",
    is_flag=True,
    help="Do not back up the current data first (RESTORE_SKIP_PREBACKUP=1). Needs approval.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Read from these targets, in this order (default: all).",
)
@click.option(
    "--allow-external-links",
    is_flag=True,
    help="Restore symbolic links that point outside the cell (only for archives you trust).",
)
@pass_state
def restore(
    state: State,
    select: str | None,
    cells: tuple[str, ...],
    into: Path | None,
    skip_prebackup: bool,
    sources: tuple[str, ...],
    allow_external_links: bool,
) -> None:
    """Restore all cells, or one, to a point in time, in one step.

    The current data is backed up first (abort if that fails). Each archive is
    fetched from the first target that has it, extracted beside its
    destination, checked file by file, and only then swapped into place: a
    restore that fails leaves the live data as it was.
    """
    with _errors(state):
        config = state.load()
        chosen = list(cells) or ([config.restore_cell] if config.restore_cell else None)
        vault = state.vault(config)
        report = vault.restore(
            select or config.restore_date or "latest",
            cells=chosen,
            into=into or config.restore_into,
            skip_prebackup=skip_prebackup or config.restore_skip_prebackup,
            source=list(sources) or None,
            allow_external_links=allow_external_links,
        )
    if state.as_json:
        _emit_json(report.to_dict())
    else:
        for c in report.cells:
            if c.ok:
                safety = f"; safety backup {c.safety_backup}" if c.safety_backup else ""
                click.echo(
                    f"ok   {c.cell}: {c.archive} from {c.target} -> {', '.join(c.destination)} "
                    f"({c.files} files, {_size(c.bytes)}){safety}"
                )
            else:
                click.echo(f"FAIL {c.cell}: {c.stage}: {c.error}", err=True)
        if report.error:
            click.echo(f"FAIL {report.error}", err=True)
        click.echo(f"restore: {'ok' if report.ok else 'FAILED'} in {report.duration:.1f}s")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@cli.command(name="list")
@click.option("--cell", "cells", multiple=True, help="Only this cell (repeatable).")
@click.option("--target", "targets", multiple=True, help="Only this target (repeatable).")
@pass_state
def list_(state: State, cells: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """List committed archives: id, kind, chain, size and where they are stored.

    With --json: {"ok": true, "archives": [...]}, oldest first.
    """
    with _errors(state):
        archives = state.vault().list(list(cells) or None, targets=list(targets) or None)
    if state.as_json:
        # An object like every other --json output (and like its errors), not a bare list.
        _emit_json({"ok": True, "archives": [a.to_dict() for a in archives]})
        return
    if not archives:
        click.echo("no archives")
        return
    click.echo(f"{'ARCHIVE':<40} {'KIND':<12} {'SIZE':>10} {'FILES':>7}  {'TARGETS':<16} CHAIN")
    for a in archives:
        chain = (
            f"<- {a.parent} (+{len(a.chain) - 1} more)"
            if len(a.chain) > 1
            else (f"<- {a.parent}" if a.parent else "")
        )
        kind = a.kind if a.reason == "scheduled" else f"{a.kind}*"
        click.echo(
            f"{a.id:<40} {kind:<12} {_size(a.size):>10} {a.files:>7}  {','.join(a.targets):<16} {chain}"
        )
    if any(a.reason != "scheduled" for a in archives):
        click.echo(
            "* made for a reason other than the schedule (pre-restore safety backup, demo, ...)"
        )


@cli.command()
@click.option("--cell", "cells", multiple=True, help="Only this cell (repeatable). Default: all.")
@click.option("--target", "targets", multiple=True, help="Only this target (repeatable).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted and why; delete nothing.")
@pass_state
def prune(state: State, cells: tuple[str, ...], targets: tuple[str, ...], dry_run: bool) -> None:
    """Delete archives the retention policy no longer keeps (--dry-run first).

    Default policy, the seed's: full archives 7 days, incrementals 3 days
    (BACKUP_KEEP_FULL_DAYS, BACKUP_KEEP_INCREMENTAL_DAYS), plus optional
    BACKUP_KEEP_LAST / _HOURLY / _DAILY / _WEEKLY / _MONTHLY. A cell's newest
    archive, its newest full archive, and every archive a kept one needs are
    always kept. Debris of interrupted runs is removed too.
    """
    with _errors(state):
        report = state.vault().prune(
            list(cells) or None, targets=list(targets) or None, dry_run=dry_run
        )
    if state.as_json:
        _emit_json(report.to_dict())
        sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
    deleted = 0
    for result in report.results:
        if result.error:
            click.echo(f"FAIL {result.target} {result.cell}: {result.error}", err=True)
            continue
        if not result.decisions and not result.debris:
            continue
        click.echo(f"{result.target} {result.cell}")
        for d in result.decisions:
            verb = "keep  " if d.keep else ("would delete" if dry_run else "delete")
            deleted += not d.keep
            click.echo(f"  {verb} {d.id}  {'; '.join(d.reasons)}")
        for key in result.debris:
            click.echo(f"  {'would remove' if dry_run else 'removed'} debris {key}")
    what = "would be deleted" if dry_run else "deleted"
    click.echo(f"prune: {deleted} archive(s) {what}; {'ok' if report.ok else 'FAILED'}")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@cli.command()
@click.option(
    "--dir",
    "where",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("cellvault-demo"),
    show_default=True,
    help="Scratch directory for the sample cells, the backups and the restored copy.",
)
@pass_state
def demo(state: State, where: Path) -> None:
    """Back up two sample cells, verify them and restore them into a scratch directory."""
    from .demo import run_demo

    with _errors(state):
        result = run_demo(where)
    if state.as_json:
        _emit_json(
            {
                "ok": result.ok,
                "backup": result.backup.to_dict(),
                "verify": result.verify.to_dict(),
                "restore": result.restore.to_dict(),
                "identical": result.identical,
            }
        )
        sys.exit(EXIT_OK if result.ok else EXIT_FAILED)
    echo: Callable[[str], None] = click.echo
    echo(f"1. created sample cells crm and billing in {result.cells_dir}")
    for c in result.backup.cells:
        state_ = "ok" if c.ok else f"FAILED ({c.error})"
        echo(
            f"2. backed up {c.cell}: {c.archive}, {c.files} files, {_size(c.archive_size)} -> {state_}"
        )
    echo(
        f"   archives are in {result.backup_dir}/<cell>/ (restorable with: zstd -d < X.tar.zst | tar x)"
    )
    for r in result.verify.results:
        echo(f"3. verified {r.archive} on {r.target}: {'ok' if r.ok else 'FAILED ' + str(r.error)}")
    for rc in result.restore.cells:
        echo(
            f"4. restored {rc.cell} into {', '.join(rc.destination)}: {'ok' if rc.ok else 'FAILED ' + str(rc.error)}"
        )
    echo(f"5. restored trees identical to the originals: {'yes' if result.identical else 'NO'}")
    echo("demo ok" if result.ok else "demo FAILED")
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cellvault`` console script."""
    cli.main(args=argv, prog_name="cellvault")
