"""The ``cellvault`` command line: a thin layer over :class:`cellvault.Vault`.

Exit codes: 0 success; 1 a backup, verify or restore failed (or anything
else went wrong at run time); 2 a usage or configuration error. Errors are
one clear message on stderr, never a traceback (``--debug`` shows one).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .archive import Kind, iso_time
from .config import Config, load_env, load_toml, read_env_file, unknown_env, with_restore_env
from .display import Display, PlainProgress
from .errors import CellvaultError, ConfigError
from .forking import keep_freed_memory
from .log import configure_logging, get_logger, redact_text
from .progress import human_size
from .vault import Level, Vault, iter_failures

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
        self.progress: Display | PlainProgress | None = None
        if not as_json:
            self.progress = Display(handler=_handler) if sys.stderr.isatty() else PlainProgress(0)

    def use_json(self) -> None:
        """``--json`` was given after the subcommand: JSON on stdout, no progress line."""
        self.as_json = True
        self.progress = None

    def load(self, *, warn_unknown: bool = True) -> Config:
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
        for key, suggestion in unknown_env(env) if warn_unknown else ():
            # A log event, so that --log-format json keeps stderr machine-readable.
            log.warning("config.unknown_variable", variable=key, did_you_mean=suggestion)
        return config

    def vault(self, config: Config | None = None) -> Vault:
        config = config or self.load()
        if isinstance(self.progress, PlainProgress):
            self.progress.interval = config.progress_interval
        return Vault(config, on_event=self.progress.event if self.progress else None)


_size = human_size


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


class _Command(click.Command):
    """A subcommand that takes ``--json`` after its name too (``cellvault list --json``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Commands with a --json of their own (doctor, sync, dr ...) handle it themselves.
        self.adds_json = not any(p.name == "as_json" for p in self.params)
        if self.adds_json:
            self.params.append(
                click.Option(
                    ["--json", "as_json"],
                    is_flag=True,
                    help="Print the result as JSON (as 'cellvault --json').",
                )
            )

    def invoke(self, ctx: click.Context) -> Any:
        if self.adds_json and ctx.params.pop("as_json", False):
            state = ctx.find_object(State)
            if state is not None:
                state.use_json()
        return super().invoke(ctx)


class _Group(click.Group):
    """The command groups: every subcommand a :class:`_Command`, every subgroup a ``_Group``."""

    command_class = _Command
    group_class = type


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
    state: State, kind: Kind | None, cells: tuple[str, ...], targets: tuple[str, ...]
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
                dumped = "".join(f" + dump {d.name} {_size(d.bytes)}" for d in cell.dumps if d.ok)
                click.echo(
                    f"ok   {cell.archive}  {cell.kind}  {cell.files} files, {_size(cell.bytes_read)} read"
                    f"{dumped}, {_size(cell.archive_size)} stored on {where}{extra}"
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
    help="Verify every committed archive, not only one per cell (not with --level drill).",
)
@click.option(
    "--level",
    type=click.Choice(["quick", "read", "full", "drill"]),
    default="full",
    show_default=True,
    help="quick: size and the store's checksum, no download; read: read every byte once and "
    "decompress it to the end; full: read back and check every member; drill: restore into a "
    "scratch directory, check, run health checks, time it.",
)
@pass_state
def verify(
    state: State,
    cells: tuple[str, ...],
    targets: tuple[str, ...],
    select: str,
    all_archives: bool,
    level: Level,
) -> None:
    """Check the archives on every target: quick, read, full (the default) or a drill.

    full checks each archive's sha256 against its sidecar, every member against
    the manifest, meta.json's backed_at, and that an incremental's chain is
    there. read checks the sha256, that the data decompresses to its end (the
    codec's checksum), meta.json and the chain, without unpacking members (what
    runs after each backup). quick downloads nothing. drill restores the newest archive of each
    cell from each target into a scratch directory under the backup directory,
    compares it with the manifest, runs the cells' health checks and reports
    the restore time (RTO). Exits 1 if any check failed.
    """
    with _errors(state):
        report = state.vault().verify(
            list(cells) or None,
            targets=list(targets) or None,
            select=select,
            all_archives=all_archives,
            level=level,
        )
    if state.as_json:
        _emit_json(report.to_dict())
    else:
        for r in report.results:
            if not r.ok:
                click.echo(f"FAIL {r.archive} on {r.target}: {r.error}", err=True)
            elif r.level == "drill":
                click.echo(
                    f"ok   {r.archive} on {r.target}: restored {r.files} files, {_size(r.bytes)} "
                    f"in {r.rto or 0:.2f}s (RTO)"
                )
            elif r.level in ("quick", "read"):
                click.echo(f"ok   {r.archive} on {r.target}: {', '.join(r.checks)} as recorded")
            else:
                click.echo(f"ok   {r.archive} on {r.target}: {r.members} members")
            for line in r.cleaned:
                click.echo(f"note {line}")
        if not report.results:
            click.echo("nothing to verify: no archives found")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@cli.command()
@click.option("--cell", "cells", multiple=True, help="Rekey only this cell (repeatable).")
@click.option("--target", "targets", multiple=True, help="Only on this target (repeatable).")
@click.option(
    "--date",
    "select",
    default="latest",
    show_default=True,
    help="Which archive: latest, an id, a date prefix (20250101_0200) or an ISO time.",
)
@click.option(
    "--all", "all_archives", is_flag=True, help="Every archive --date matches, not only the newest."
)
@pass_state
def rekey(
    state: State,
    cells: tuple[str, ...],
    targets: tuple[str, ...],
    select: str,
    all_archives: bool,
) -> None:
    """Re-encrypt stored archives to the current recipients (BACKUP_ENCRYPT_RECIPIENTS).

    Each chosen archive is decrypted with BACKUP_AGE_IDENTITY (or the secret-store
    plugin's identities) and encrypted again as one stream, never decompressed;
    an archive stored in the clear is encrypted. Each is committed like a backup
    (new object, manifest copy, then sidecar), and the old object deleted. Run it
    after a key rotation, with --all, before retiring the old identity. Exits 1 if
    any archive failed.
    """
    with _errors(state):
        report = state.vault().rekey(
            list(cells) or None,
            targets=list(targets) or None,
            select=select,
            all_archives=all_archives,
        )
    if state.as_json:
        _emit_json(report.to_dict())
    else:
        for r in report.results:
            if not r.ok:
                click.echo(f"FAIL {r.archive} on {r.target}: {r.error}", err=True)
            elif r.outcome == "current":
                click.echo(f"ok   {r.archive} on {r.target}: already encrypted to these recipients")
            else:
                click.echo(f"ok   {r.archive} on {r.target}: re-encrypted as {r.data}")
        if not report.results:
            click.echo("nothing to rekey: no archives found")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@cli.command()
@click.option("--cell", "cells", multiple=True, help="Only this cell (repeatable).")
@click.option("--target", "targets", multiple=True, help="Only this target (repeatable).")
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    help="Hours a newest archive may be old (default: BACKUP_MAX_AGE_HOURS, else 26).",
)
@pass_state
def status(
    state: State, cells: tuple[str, ...], targets: tuple[str, ...], max_age: float | None
) -> None:
    """Tell a monitor whether every cell has a fresh, verified backup on every target.

    Per cell and target: the newest archive, its age (the RPO), and the last
    quick, full and drill verify. Reads no archive. Exits 1 when any cell's
    newest archive is older than the maximum age, missing, or failed its
    last verify; 0 otherwise.
    """
    with _errors(state):
        report = state.vault().status(
            list(cells) or None, targets=list(targets) or None, max_age=max_age
        )
    _echo_status(state, report)


def _echo_status(state: State, report: Any) -> NoReturn:
    """Print a status report (text or JSON) and exit 1 when it is not ok."""
    if state.as_json:
        _emit_json(report.to_dict())
    else:
        click.echo(f"{'CELL':<16} {'TARGET':<10} {'NEWEST':<36} {'AGE':>6}  {'VERIFY':<24} STATE")
        for c in report.cells:
            for t in c.targets:
                checks = " ".join(x.label(t.newest) for x in t.checks)
                click.echo(
                    f"{c.cell:<16} {t.target:<10} {t.newest or '-':<36} {_age(t.age):>6}  "
                    f"{checks or '-':<24} {'ok' if t.ok else 'PROBLEM'}"
                )
        for line in report.problems():
            click.echo(f"FAIL {line}", err=True)
        for line in report.debris():
            click.echo(f"left {line}", err=True)
        click.echo(f"status: {'ok' if report.ok else 'PROBLEMS'} (max age {report.max_age:g} h)")
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
    help="No longer needed, and does nothing: symbolic links are always restored as they "
    "were, and extraction never writes through one.",
)
@click.option(
    "--dumps/--no-dumps",
    "load_dumps",
    default=None,
    help="Load the cells' database dumps (default: yes in place, no with --into).",
)
@click.option(
    "--dump",
    "only_dumps",
    multiple=True,
    metavar="NAME",
    help="Load only this dumper's dump, even one with autoload off (repeatable).",
)
@click.option(
    "--dump-option",
    "dump_options",
    multiple=True,
    metavar="NAME.KEY=VALUE",
    help="Change a dumper's option for this restore, e.g. db.only_tables=public.orders "
    "(repeatable; see docs/dumpers.md).",
)
@click.option(
    "--remove-excluded",
    is_flag=True,
    help="In place: also remove live paths the cell's exclude rules leave out of backups "
    "(default: keep them).",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    metavar="PATTERN",
    help="Restore only the paths of the cell matching this glob, each with what is under it "
    "(repeatable; needs one --cell; e.g. 'crm/config/*.yml'). Only the archives holding them "
    "are read; the rest of the cell is not touched; what is replaced is kept beside the "
    "cell's root. No dumps, no restore hooks.",
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
    load_dumps: bool | None,
    only_dumps: tuple[str, ...],
    dump_options: tuple[str, ...],
    remove_excluded: bool,
    paths: tuple[str, ...],
) -> None:
    """Restore all cells, or one, to a point in time, in one step.

    The current data is backed up first (abort if that fails). Each archive is
    fetched from the first target that has it, extracted beside its
    destination, checked file by file, its database dumps loaded and its
    restore hooks run, and only then swapped into place: a restore that fails
    leaves the live files as they were. With --path, only chosen paths.
    """
    if allow_external_links:
        click.echo(
            "note: --allow-external-links is no longer needed and does nothing: symbolic "
            "links are always restored as they were, and never written through",
            err=True,
        )
    with _errors(state):
        config = state.load()
        chosen = list(cells) or ([config.restore_cell] if config.restore_cell else None)
    if paths:
        _restore_paths(state, config, chosen, click.get_current_context().params)
    with _errors(state):
        options: dict[str, dict[str, str]] = {}
        for item in dump_options:
            name, dot, rest = item.partition(".")
            key, eq, value = rest.partition("=")
            if not (dot and eq and name and key):
                raise ConfigError(
                    f"--dump-option {item!r} is not NAME.KEY=VALUE",
                    hint="for example --dump-option db.only_tables=public.orders",
                )
            options.setdefault(name, {})[key] = value
        vault = state.vault(config)
        report = vault.restore(
            select or config.restore_date or "latest",
            cells=chosen,
            into=into or config.restore_into,
            skip_prebackup=skip_prebackup or config.restore_skip_prebackup,
            source=list(sources) or None,
            allow_external_links=allow_external_links,
            load_dumps=list(only_dumps) if only_dumps else load_dumps,
            dump_options=options,
            keep_excluded=not remove_excluded,
        )
    if state.as_json:
        _emit_json(report.to_dict())
    else:
        for line in report.recovered:
            click.echo(f"note {line}")
        for c in report.cells:
            if c.ok:
                safety = f"; safety backup {c.safety_backup}" if c.safety_backup else ""
                click.echo(
                    f"ok   {c.cell}: {c.archive} from {c.target} -> {', '.join(c.destination)} "
                    f"({c.files} files, {_size(c.bytes)}){safety}"
                )
            else:
                click.echo(f"FAIL {c.cell}: {c.stage}: {c.error}", err=True)
            for warning in c.warnings:
                click.echo(f"warn {c.cell}: {warning}", err=True)
            for part, what in c.parts.items():
                click.echo(f"     {part}: {what}", err=not c.ok)
            if c.undo:
                click.echo(f"     undo: {c.undo}", err=not c.ok)
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
        safety = "  [safety backup: stays on this site]" if a.reason == "pre-restore" else ""
        click.echo(
            f"{a.id:<40} {kind:<12} {_size(a.size):>10} {a.files:>7}  {','.join(a.targets):<16} "
            f"{chain}{safety}"
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


# -- disaster recovery (cellvault.dr) ------------------------------------------------


def _site(state: State, site_id: str | None = None) -> Any:
    """The :class:`cellvault.dr.Site` of this configuration; ``DR_*`` of the environment win."""
    from .dr import DrSettings, Site

    config = state.load()
    settings = DrSettings.from_config(config, os.environ)
    return Site(state.vault(config), site_id, settings=settings)


def _echo_sync(report: Any) -> None:
    """Print a push or pull report for people."""
    for c in report.cells:
        for archive in c.copied:
            click.echo(f"copied {archive}  {c.source} -> {c.target}")
        if c.locked:
            click.echo(f"skip {c.cell} {c.source} -> {c.target}: {c.locked}", err=True)
        elif not c.ok:
            click.echo(f"FAIL {c.cell} {c.source} -> {c.target}: {c.stage}: {c.error}", err=True)
        else:
            extra = (
                f", {len(c.skipped)} older than {c.target}'s retention keeps, not copied"
                if c.skipped
                else ""
            )
            extra += f", debris of an interrupted run removed: {len(c.debris)}" if c.debris else ""
            extra += f", {len(c.ignored)} left out" if c.ignored else ""
            click.echo(
                f"ok   {c.cell} {c.source} -> {c.target}: {len(c.copied)} copied, "
                f"{c.present} already there{extra}"
            )
        for line in c.ignored:
            click.echo(f"note {c.cell}: not copied: {line}", err=True)
    for warning in report.warnings:
        click.echo(f"warn {warning}", err=True)
    rate = report.bytes / report.duration if report.duration > 0 else 0.0
    click.echo(
        f"sync ({report.mode}, site {report.site}): {'ok' if report.ok else 'FAILED'}, "
        f"{len(report.copied)} archive(s) copied, {_size(report.bytes)} in {report.duration:.1f}s"
        + (f" ({_size(rate)}/s)" if report.bytes else "")
        + (f"; {len(report.locked)} cell(s) left to another run" if report.locked else "")
    )


def _utc(when: Any) -> str:
    return str(when.isoformat()).replace("+00:00", "Z")


def _echo_hooks_error_steps(report: Any) -> None:
    """The end of a failover or failback report: plugin outcomes, the error, the manual steps."""
    for hook in report.hooks:
        if hook.ok and hook.detail:
            click.echo(f"ok   traffic switch {hook.plugin}: {hook.detail}")
        elif hook.ok:
            click.echo(f"ok   failover plugin {hook.plugin}")
        else:
            click.echo(f"FAIL failover plugin {hook.plugin}: {hook.error}", err=True)
    if report.error:
        click.echo(f"FAIL {report.error}", err=True)
    _echo_steps(report.steps)


def _echo_steps(steps: tuple[str, ...]) -> None:
    if steps:
        click.echo("Next steps:")
        for n, step in enumerate(steps, 1):
            click.echo(f"  {n}. {step}")


def _echo_verify_restore(verify: Any, restore: Any) -> None:
    if verify is not None:
        for r in verify.results:
            if r.ok:
                click.echo(f"ok   verified {r.archive} on {r.target}: {r.members} members")
            else:
                click.echo(f"FAIL verify {r.archive} on {r.target}: {r.error}", err=True)
    if restore is not None:
        for c in restore.cells:
            if c.ok:
                click.echo(f"ok   restored {c.cell}: {c.archive} -> {', '.join(c.destination)}")
            else:
                click.echo(f"FAIL restore {c.cell}: {c.stage}: {c.error}", err=True)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the result as JSON (as 'cellvault --json')."
    )(fn)


def _site_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--site-id", help="This site's id (default: DR_SITE_ID, else the host name)."
    )(fn)


@cli.command()
@click.option(
    "--pull-only/--push",
    "pull_only",
    default=None,
    help="Pull from the object storage into this site's backup directory (the standby's "
    "mode), or push. Default: DR_PULL_ONLY (1: pull), else push.",
)
@click.option(
    "--from",
    "sources",
    multiple=True,
    help="Copy from this target. Push: default the first target. Pull: default the "
    "object-storage targets (DR_TARGET, else all but the first); repeatable.",
)
@click.option(
    "--to",
    "targets",
    multiple=True,
    help="Push to this target (repeatable). Default: the object-storage targets.",
)
@click.option("--cell", "cells", multiple=True, help="Only this cell (repeatable). Default: all.")
@click.option(
    "--verify", is_flag=True, help="Read every copy back completely before committing it."
)
@click.option(
    "--include-safety",
    is_flag=True,
    help="Copy pre-restore safety backups too (they stay on the site that took them).",
)
@_site_option
@_json_option
@pass_state
def sync(
    state: State,
    pull_only: bool | None,
    sources: tuple[str, ...],
    targets: tuple[str, ...],
    cells: tuple[str, ...],
    verify: bool,
    include_safety: bool,
    site_id: str | None,
    as_json: bool,
) -> None:
    """Copy missing archives to the object storage, or (--pull-only) from it.

    The seed's sync_backup_to_dr.sh. Each archive is copied once, oldest
    first: data, manifest, then the sidecar that commits it, after its sha256
    was checked. A cell that another run is copying (its lease is held) is
    skipped with a message: exit 0, so a cron job every 15 minutes stays quiet.
    Exit 1 if a copy failed (it is resumed by the next run). A push from a
    site that another site has fenced (it holds the current DR epoch) is
    refused; a pull leaves out what a fenced site wrote after the fence.
    Pre-restore safety backups are not copied unless --include-safety.
    """
    state.as_json = state.as_json or as_json
    with _errors(state):
        site = _site(state, site_id)
        pull = site.settings.pull_only if pull_only is None else pull_only
        if pull:
            if targets:
                raise ConfigError(
                    "--to is for a push; a pull copies into this site's backup directory"
                )
            report = site.pull(
                list(cells) or None,
                source=list(sources) or None,
                verify=verify,
                include_safety=include_safety,
            )
        else:
            if len(sources) > 1:
                raise ConfigError("a push copies from one target: give --from once")
            report = site.push(
                list(cells) or None,
                source=sources[0] if sources else None,
                to=list(targets) or None,
                verify=verify,
                include_safety=include_safety,
            )
    if state.progress:
        state.progress.clear()
    if state.as_json:
        _emit_json(report.to_dict())
    else:
        _echo_sync(report)
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@cli.group()
def dr() -> None:
    """Disaster recovery: prepare a standby site, fail over, fail back, status.

    Each site sets DR_SITE_ID (primary, dr, ...) and the same object storage
    (BACKUP_TARGETS=local,s3). The primary pushes ('cellvault sync'), the
    standby pulls ('cellvault sync --pull-only' or DR_PULL_ONLY=1). See the
    runbook in docs/dr.md.
    """


@dr.command()
@click.option("--no-pull", is_flag=True, help="Only create directories and check targets.")
@_site_option
@_json_option
@pass_state
def prepare(state: State, no_pull: bool, site_id: str | None, as_json: bool) -> None:
    """Set up this site as a standby (the seed's prepare_dr_site.sh).

    Creates the backup directory and the cells' parent directories, checks
    every target (credentials, reachability, a probe object written, read and
    removed), pulls from the object storage, and shows what the site holds.
    """
    state.as_json = state.as_json or as_json
    with _errors(state):
        report = _site(state, site_id).prepare(pull=not no_pull)
    if state.progress:
        state.progress.clear()
    if state.as_json:
        _emit_json(report.to_dict())
        sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
    for path in report.created:
        click.echo(f"created {path}")
    for check in report.checks:
        if check.ok:
            click.echo(f"ok   target {check.target}: reachable, probe written, read and removed")
        else:
            click.echo(f"FAIL target {check.target}: {check.error}", err=True)
    if report.pull is not None:
        _echo_sync(report.pull)
    if report.holdings:
        click.echo(f"{'CELL':<20} {'ARCHIVES':>8} {'SIZE':>10}  NEWEST")
        for cell, h in sorted(report.holdings.items()):
            click.echo(f"{cell:<20} {h.count:>8} {_size(h.bytes):>10}  {h.newest or '-'}")
    else:
        click.echo("this site holds no archive yet")
    click.echo(f"prepare site {report.site}: {'ok' if report.ok else 'FAILED'}")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@dr.command()
@click.option(
    "--restore",
    "select",
    help="Also restore the cells' own paths: 'latest', a date prefix or an archive id. "
    "Default: verify only (restore yourself with 'cellvault restore').",
)
@click.option(
    "--skip-prebackup",
    is_flag=True,
    help="With --restore: no safety backup of the current data first (RESTORE_SKIP_PREBACKUP=1).",
)
@click.option("--no-pull", is_flag=True, help="Do not pull first (the object storage is down).")
@click.option(
    "--force",
    is_flag=True,
    help="Fail over although a failover is in effect, the newest backups are not all "
    "here, or one does not verify.",
)
@_site_option
@_json_option
@pass_state
def failover(
    state: State,
    select: str | None,
    skip_prebackup: bool,
    no_pull: bool,
    force: bool,
    site_id: str | None,
    as_json: bool,
) -> None:
    """Make this standby site the active one (the seed's dr_failover.sh).

    Pulls the newest backups, checks that this site holds the newest archive
    of every cell and verifies each completely, optionally restores them,
    writes the failover marker (object storage and local), calls the failover
    plugins (DNS, SLB, Ingress) and prints the switch steps. Refuses while a
    failover is in effect, unless --force.
    """
    state.as_json = state.as_json or as_json
    with _errors(state):
        config = state.load()
        report = _site(state, site_id).failover(
            restore=select,
            skip_prebackup=skip_prebackup or config.restore_skip_prebackup,
            force=force,
            pull=not no_pull,
        )
    if state.progress:
        state.progress.clear()
    if state.as_json:
        _emit_json(report.to_dict())
        sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
    if report.pull is not None:
        click.echo(f"pull: {len(report.pull.copied)} archive(s) copied")
    _echo_verify_restore(report.verify, report.restore)
    for warning in report.warnings:
        click.echo(f"warn {warning}", err=True)
    if report.marker is not None:
        click.echo(
            f"marker written to {', '.join(report.marker_written)}: site {report.marker.site_id} "
            f"active since {_utc(report.marker.at)}"
        )
    _echo_hooks_error_steps(report)
    click.echo(f"failover to site {report.site}: {'ok' if report.ok else 'FAILED'}")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@dr.command()
@click.option(
    "--final-backup",
    type=click.Choice(["full", "incremental", "none"]),
    default="incremental",
    show_default=True,
    help="On the active site: the backup taken before handing back.",
)
@click.option(
    "--no-restore", is_flag=True, help="On the primary: pull and verify, but do not restore."
)
@click.option(
    "--skip-prebackup",
    is_flag=True,
    help="On the primary: no safety backup of the current data first.",
)
@click.option(
    "--force",
    is_flag=True,
    help="On the primary: take over without a hand-back of the active site.",
)
@_site_option
@_json_option
@pass_state
def failback(
    state: State,
    final_backup: str,
    no_restore: bool,
    skip_prebackup: bool,
    force: bool,
    site_id: str | None,
    as_json: bool,
) -> None:
    """Hand the service back to the recovered primary: run on the active site, then there.

    On the active (standby) site, with writes stopped: a final backup, a push
    of everything the object storage misses, and the hand-back recorded in
    the marker. Then on the primary: a pull, a verify and a restore of
    exactly what was handed back, the marker cleared, the failover plugins
    called, and the switch-back steps printed.
    """
    state.as_json = state.as_json or as_json
    with _errors(state):
        config = state.load()
        report = _site(state, site_id).failback(
            final_backup=None if final_backup == "none" else final_backup,
            restore=not no_restore,
            skip_prebackup=skip_prebackup or config.restore_skip_prebackup,
            force=force,
        )
    if state.progress:
        state.progress.clear()
    if state.as_json:
        _emit_json(report.to_dict())
        sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
    if report.backup is not None:
        for line in iter_failures(report.backup):
            click.echo(f"FAIL {line}", err=True)
        for c in report.backup.cells:
            if c.ok:
                click.echo(f"ok   final backup {c.archive}")
    for sync_report in (report.push, report.pull):
        if sync_report is not None:
            _echo_sync(sync_report)
    _echo_verify_restore(report.verify, report.restore)
    for warning in report.warnings:
        click.echo(f"warn {warning}", err=True)
    if report.step == "handback" and report.marker is not None and report.marker.handback:
        for cell, archive in sorted(report.marker.handback.archives.items()):
            click.echo(f"handed back {cell}: {archive}")
    _echo_hooks_error_steps(report)
    click.echo(f"failback ({report.step}) on site {report.site}: {'ok' if report.ok else 'FAILED'}")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@dr.command()
@_site_option
@_json_option
@pass_state
def heartbeat(state: State, site_id: str | None, as_json: bool) -> None:
    """Write this site's heartbeat to the shared store (a timer on the primary).

    What 'cellvault dr watch' on the standby reads: a primary whose heartbeat
    is fresh is never failed over. Scheduled backups write it too.
    """
    state.as_json = state.as_json or as_json
    with _errors(state):
        beat = _site(state, site_id).heartbeat()
    if state.as_json:
        _emit_json({"site": beat.site, "at": _utc(beat.at), "source": beat.source})
    else:
        click.echo(f"heartbeat of site {beat.site} written at {_utc(beat.at)}")


@dr.command()
@click.option("--primary", help="The site id of the primary watched (DR_WATCH_PRIMARY).")
@click.option(
    "--url", "urls", multiple=True, help="A health URL of the primary (repeatable; DR_WATCH_URLS)."
)
@click.option(
    "--probes", type=click.IntRange(min=1), help="Failed probes in a row (DR_WATCH_PROBES, 3)."
)
@click.option(
    "--window",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds the primary must be gone (DR_WATCH_WINDOW, 180).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between probes (DR_WATCH_INTERVAL, 30).",
)
@click.option(
    "--restore",
    default="latest",
    show_default=True,
    help="What the failover restores (latest, a date, an archive id).",
)
@click.option("--once", is_flag=True, help="One probe and decision, then exit (for cron).")
@click.option("--dry-run", is_flag=True, help="Probe and say what it would do; change nothing.")
@_site_option
@_json_option
@pass_state
def watch(
    state: State,
    primary: str | None,
    urls: tuple[str, ...],
    probes: int | None,
    window: float | None,
    interval: float | None,
    restore: str,
    once: bool,
    dry_run: bool,
    site_id: str | None,
    as_json: bool,
) -> None:
    """On the standby: fail over by itself when the primary is gone (manual 5.5).

    Probes the primary's health URLs and reads its heartbeat in the shared
    store every --interval seconds; fails over only when both say it is gone
    in --probes probes in a row over --window seconds, then switches the
    traffic (DR_SWITCH_COMMAND, DR_SWITCH_K8S, cellvault_switch_traffic
    plugins) and alerts. Every decision is printed with its probes. Exit 0
    when the watch ends with a failover (or --once decided anything but a
    failed failover), 1 when a failover or a traffic switch failed.
    """
    state.as_json = state.as_json or as_json
    with _errors(state):
        site = _site(state, site_id)
        watcher = site.watcher(
            primary=primary,
            urls=urls,
            probes=probes,
            window=window,
            interval=interval,
            restore=restore,
        )
        echo = functools.partial(_echo_decision, state)
        if once:
            decision = watcher.step(dry_run=dry_run)
            echo(decision)
        else:
            decision = watcher.run(dry_run=dry_run, on_decision=echo)
    sys.exit(EXIT_OK if decision.ok else EXIT_FAILED)


def _echo_decision(state: State, decision: Any) -> None:
    """One round of dr watch, for people (or one JSON object per line)."""
    if state.as_json:
        click.echo(json.dumps(decision.to_dict(), default=str, sort_keys=True))
        return
    click.echo(f"watch: {decision.action}: {decision.reason}")
    for probe in decision.probes:
        click.echo(f"  probe {probe.summary()}")
    if decision.failover is not None:
        _echo_hooks_error_steps(decision.failover)
    for hook in decision.traffic:
        if hook.ok:
            click.echo(f"ok   traffic switch {hook.plugin}: {hook.detail}")
        else:
            click.echo(f"FAIL traffic switch {hook.plugin}: {hook.error}", err=True)
    sys.stdout.flush()


@dr.command(name="status")
@click.option("--cell", "cells", multiple=True, help="Only this cell (repeatable).")
@_site_option
@_json_option
@pass_state
def dr_status(state: State, cells: tuple[str, ...], site_id: str | None, as_json: bool) -> None:
    """Which site is active, what each site and target holds, and the replication lag.

    Exit 1 when a target cannot be read.
    """
    state.as_json = state.as_json or as_json
    with _errors(state):
        report = _site(state, site_id).status(list(cells) or None)
    if state.as_json:
        _emit_json(report.to_dict())
        sys.exit(EXIT_OK if report.ok else EXIT_FAILED)
    marker = report.marker
    if marker is None:
        click.echo(f"this site: {report.site}; active: the primary (no failover in effect)")
    else:
        handed = " (handed back, failback pending)" if marker.handback else ""
        click.echo(
            f"this site: {report.site}; active: {marker.site_id} since {_utc(marker.at)} "
            f"(failover marker on {report.marker_source}, written by {marker.host}){handed}"
        )
    if report.epoch is not None:
        fenced = "" if report.epoch_site == report.site else " (this site is fenced)"
        click.echo(
            f"epoch {report.epoch}, held by site {report.epoch_site} since "
            f"{_utc(report.epoch_since)}{fenced}"
        )
    click.echo(f"{'TARGET':<12} {'CELL':<16} {'ARCHIVES':>8} {'SIZE':>10}  NEWEST")
    for view in report.targets:
        if not view.reachable:
            click.echo(f"{view.target:<12} unreachable: {view.error}")
            continue
        for cell, h in sorted(view.cells.items()):
            click.echo(
                f"{view.target:<12} {cell:<16} {h.count:>8} {_size(h.bytes):>10}  {h.newest or '-'}"
            )
    if report.lag:
        click.echo(f"{'CELL':<16} {'VS':<10} {'LAG':>10} {'BEHIND':>7} {'AHEAD':>6}  NEWER")
        for lag in report.lag:
            text = "-" if lag.lag_seconds is None else f"{lag.lag_seconds / 60:.0f} min"
            newer = {
                "local": f"this site, by {', '.join(lag.ahead_archives) or '-'}",
                "remote": f"{lag.target}, by {', '.join(lag.behind_archives) or '-'}",
            }.get(lag.leader, "even")
            click.echo(
                f"{lag.cell:<16} {lag.target:<10} {text:>10} {lag.behind:>7} {lag.ahead:>6}  {newer}"
            )
        for lag in report.lag:
            for ident in lag.safety:
                click.echo(f"  {lag.cell}: {ident} is a pre-restore safety backup (not counted)")
    for record in report.sites:
        newest = ", ".join(f"{c}={h.newest}" for c, h in sorted(record.cells.items()))
        click.echo(
            f"site {record.site_id} ({record.host}): last {record.action} at "
            f"{_utc(record.at)}; {newest or 'no archive'}"
        )
    for warning in report.warnings:
        click.echo(f"warn {warning}", err=True)
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@cli.command()
@click.option(
    "--send-test-alert",
    is_flag=True,
    help="POST a test alert to BACKUP_ALERT_WEBHOOK (default: only a HEAD request, no message).",
)
@click.option(
    "--no-probe",
    is_flag=True,
    help="Write no probe object: skip the target lines (the backup lines still list the targets).",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    help="Hours the newest backup may be old (default: BACKUP_MAX_AGE_HOURS, else 26).",
)
@click.option(
    "--drill-max-age",
    type=click.FloatRange(min=0, min_open=True),
    default=7.0,
    show_default=True,
    help="Days since the last passed restore drill (cellvault verify --level drill).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=15.0,
    show_default=True,
    help="Seconds each target and the webhook get to answer.",
)
@_json_option
@pass_state
def doctor(
    state: State,
    send_test_alert: bool,
    no_probe: bool,
    max_age: float | None,
    drill_max_age: float,
    timeout: float,
    as_json: bool,
) -> None:
    """Check, line by line, that this setup is ready for production.

    The operations manual's checklist (section 7) as one command: the
    configuration loads and names no unknown variable; every cell's paths
    exist and are readable; every target is reachable and writable with its
    credentials (a probe object .cellvault-doctor-<random> is written, read
    back and removed); the alert webhook answers and the alert log is
    writable; the newest backup of each cell is fresh and verified; a restore
    drill passed recently. Each failure says what to do. Exits 1 when any
    check failed, 0 otherwise (warnings included).
    """
    from .doctor import config_failed, format_report, run_checks

    state.as_json = state.as_json or as_json
    environ: dict[str, str] | None = None
    if state.config_path is not None:
        source = str(state.config_path)
    else:
        source = str(state.env_file) if state.env_file is not None else "environment"
    with _errors(state):
        try:
            if state.config_path is None and (state.env_file is None or state.env_file.is_file()):
                environ = dict(read_env_file(state.env_file)) if state.env_file else {}
                environ.update(os.environ)
            config = state.load(warn_unknown=False)
        except ConfigError as exc:
            report = config_failed(exc, environ=environ, source=source)
        else:
            report = run_checks(
                config,
                environ=environ,
                source=source,
                probe=not no_probe,
                send_test_alert=send_test_alert,
                max_age=max_age,
                drill_max_age=drill_max_age,
                timeout=timeout,
            )
    if state.as_json:
        _emit_json(report.to_dict())
    else:
        format_report(report, click.echo)
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@cli.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--dir",
    "dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write the configuration and the schedule (the manual's deploy/scripts/).",
)
@click.option(
    "--backup-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/backup/paas"),
    show_default=True,
    help="BACKUP_DIR of the configuration: the local backup directory.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["env", "toml"]),
    default="env",
    show_default=True,
    help="backup_config.env (the manual's format) or cellvault.toml.",
)
@click.option(
    "--schedule",
    type=click.Choice(["cron", "systemd", "none"]),
    default="cron",
    show_default=True,
    help="Also write a cron file, or systemd services and timers.",
)
@click.option("--force", is_flag=True, help="Replace files that exist.")
@click.option("--no-doctor", is_flag=True, help="Do not run the doctor checklist afterwards.")
@pass_state
def init(
    state: State,
    root: Path,
    dest: Path,
    backup_dir: Path,
    fmt: str,
    schedule: str,
    force: bool,
    no_doctor: bool,
) -> None:
    """Write a configuration for the cells found under ROOT, and its schedule.

    Every folder directly under ROOT with a cell's name is a cell
    (BACKUP_CELLS_ROOT=ROOT). Writes a commented backup_config.env (or
    cellvault.toml) into --dir, and a cron file or systemd units running
    full backups daily at 02:00, incrementals every 6 hours, prune daily and a
    restore drill weekly; then runs 'cellvault doctor' on the result. Nothing
    is replaced without --force. Exits 0 when every doctor line passed but the
    backup and drill lines (no backup can exist yet), 1 otherwise.
    """
    from .doctor import format_report
    from .scaffold import init as run_init

    with _errors(state):
        result = run_init(
            root,
            dest,
            backup_dir=backup_dir,
            fmt=fmt,
            schedule=schedule,
            force=force,
            doctor=not no_doctor,
        )
    if state.as_json:
        _emit_json(result.to_dict())
    else:
        click.echo(f"cells under {root}: {', '.join(result.cells)}")
        for path in result.files:
            click.echo(f"wrote {path}")
        if result.doctor is not None:
            format_report(result.doctor, click.echo)
        flag = "--env-file" if fmt == "env" else "--config"
        click.echo(f"next: cellvault {flag} {result.config} backup")
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


@cli.command()
@click.argument("private", type=click.Path(dir_okay=False, path_type=Path))
@_json_option
@pass_state
def keygen(state: State, private: Path, as_json: bool) -> None:
    """Write a new Ed25519 key pair for signing sidecars: PRIVATE and PRIVATE.pub.

    PRIVATE (mode 0600) is the site's BACKUP_SIGNING_KEY; the public key
    printed (also in PRIVATE.pub) goes into BACKUP_VERIFY_KEYS of every site
    that restores or pulls these archives. An existing file is never
    replaced. See docs/security.md.
    """
    from .signing import generate_keypair

    if as_json:
        state.use_json()
    with _errors(state):
        pair = generate_keypair(private)
    if state.as_json:
        _emit_json(
            {
                "private": str(pair.private),
                "public": str(pair.public),
                "public_key": pair.public_key,
                "key_id": pair.key_id,
            }
        )
        return
    click.echo(
        f"wrote {pair.private} (the private key: BACKUP_SIGNING_KEY={pair.private.resolve()})"
    )
    click.echo(f"wrote {pair.public} (key id {pair.key_id})")
    click.echo(f"BACKUP_VERIFY_KEYS={pair.public_key}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@pass_state
def completion(state: State, shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    Commands, options, choices and file names complete on Tab. Load it from
    the shell's start-up file: in ~/.bashrc, eval "$(cellvault completion
    bash)"; in ~/.zshrc, eval "$(cellvault completion zsh)"; for fish,
    cellvault completion fish > ~/.config/fish/completions/cellvault.fish.
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # the three shells click knows
    script = completer(cli, {}, "cellvault", "_CELLVAULT_COMPLETE").source()
    if state.as_json:
        _emit_json({"ok": True, "shell": shell, "script": script})
    else:
        click.echo(script)


# -- browsing the history: ls, find, diff, mount -------------------------


def _line(data: Any) -> None:
    """One JSON line (the --json output of ls, find and diff)."""
    click.echo(json.dumps(data, sort_keys=True, default=str))


def _mode(kind: str, mode: int) -> str:
    return {"dir": "d", "symlink": "l"}.get(kind, "-") + stat.filemode(mode)[1:]


def _instant(value: str | None, option: str) -> dt.datetime | None:
    """An ISO date or time given to *option* (UTC when it names no zone)."""
    if value is None:
        return None
    try:
        when = iso_time(value.strip())
    except ValueError:
        raise ConfigError(
            f"{option} {value!r} is not a date or time",
            hint="give an ISO date or time, e.g. 2025-01-31 or 2025-01-31T02:00",
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


_DATE_HELP = (
    "latest, an archive id, a date prefix such as 20250101_0200, or an ISO time "
    "(newest at or before it). Default: latest."
)


@cli.command()
@click.argument("cell")
@click.argument("path", required=False)
@click.option("--date", "select", default="latest", show_default=True, help=_DATE_HELP)
@click.option("--source", "sources", multiple=True, help="Read from these targets, in this order.")
@pass_state
def ls(state: State, cell: str, path: str | None, select: str, sources: tuple[str, ...]) -> None:
    """List the tree of CELL at a point in time (only PATH and what is under it, if given).

    Each line: mode, owner, size, mtime (UTC), path relative to the cell
    (starting with the root's name, e.g. crm/config/app.yml) and, for files,
    the archive that holds its bytes. Reads the archive's manifest only, never
    its data. With --json: one JSON object per path, then a last line
    {"ok": true, "point": {...}, "paths": N}.
    """
    with _errors(state):
        point, entries = state.vault().ls(
            cell, select=select, path=path, source=list(sources) or None
        )
        count = 0
        if not state.as_json:
            click.echo(f"# {point.archive} ({point.kind}, {point.backed_at}) on {point.target}")
        for e in entries:
            count += 1
            if state.as_json:
                _line(e.to_dict())
                continue
            name = f"{e.path} -> {e.target}" if e.type == "symlink" else e.path
            held = f"  [{e.archive}]" if e.archive and e.archive != point.archive else ""
            click.echo(
                f"{_mode(e.type, e.mode)} {e.uid:>5}:{e.gid:<5} {e.size:>12}  "
                f"{e.mtime}  {name}{held}"
            )
    if state.as_json:
        _line({"ok": True, "point": point.to_dict(), "paths": count})


@cli.command()
@click.argument("cell")
@click.argument("patterns", nargs=-1, required=True, metavar="PATTERN...")
@click.option("--since", help="Only points taken at or after this ISO date or time (UTC).")
@click.option("--until", help="Only points taken at or before this ISO date or time (UTC).")
@click.option("--source", "sources", multiple=True, help="Read from these targets, in this order.")
@pass_state
def find(
    state: State,
    cell: str,
    patterns: tuple[str, ...],
    since: str | None,
    until: str | None,
    sources: tuple[str, ...],
) -> None:
    """Find every point at which a path matching PATTERN existed, newest first.

    A PATTERN with a / is a glob over the path relative to the cell
    ('crm/uploads/2025/*'; * also crosses /); one without matches the file
    name ('*.yml'). Each line: archive, size, mtime (UTC), path. Reads the
    manifests only, one at a time, never archive data. With --json: one JSON
    object per match, then {"ok": true, "matches": N}.
    """
    with _errors(state):
        found = state.vault().find(
            cell,
            patterns,
            since=_instant(since, "--since"),
            until=_instant(until, "--until"),
            source=list(sources) or None,
        )
        count = 0
        for f in found:
            count += 1
            if state.as_json:
                _line(f.to_dict())
            else:
                click.echo(f"{f.archive}  {f.type:<7} {f.size:>12}  {f.mtime}  {f.path}")
    if state.as_json:
        _line({"ok": True, "matches": count})
    elif not count:
        click.echo(f"no path of cell {cell} matches {' '.join(patterns)} at any point")


@cli.command()
@click.argument("cell")
@click.argument("a", metavar="A")
@click.argument("b", metavar="B", default="latest")
@click.option("--source", "sources", multiple=True, help="Read from these targets, in this order.")
@pass_state
def diff(state: State, cell: str, a: str, b: str, sources: tuple[str, ...]) -> None:
    """Show what changed in CELL from point A to point B (default: latest).

    A and B are chosen as --date of restore chooses (latest, an archive id,
    a date prefix, an ISO time). Each line: + added, - removed, M modified
    (with what changed: type, content, mode, owner, target, mtime), then the
    totals. Reads the two manifests only. With --json: one JSON object per
    path, then {"ok": true, "a": ..., "b": ..., "totals": ...}.
    """
    with _errors(state):
        report = state.vault().diff(cell, a, b, source=list(sources) or None)
    signs = {"added": "+", "removed": "-", "modified": "M"}
    for e in report.entries:
        if state.as_json:
            _line(e.to_dict())
        else:
            what = f"  ({', '.join(e.changes)})" if e.changes else ""
            click.echo(f"{signs[e.status]} {e.path}{what}")
    t = report.totals()
    if state.as_json:
        _line({"ok": True, "a": report.a.to_dict(), "b": report.b.to_dict(), "totals": t})
        return
    click.echo(
        f"{report.a.archive} -> {report.b.archive}: "
        f"{t['added']} added ({_size(t['added_bytes'])}), "
        f"{t['removed']} removed ({_size(t['removed_bytes'])}), "
        f"{t['modified']} modified ({_size(t['modified_bytes'])} of new content)"
    )


@cli.command()
@click.argument("cell")
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option("--date", "select", default="latest", show_default=True, help=_DATE_HELP)
@click.option(
    "--all", "all_points", is_flag=True, help="Show every point, as a directory per archive id."
)
@click.option("--source", "sources", multiple=True, help="Read from these targets, in this order.")
@click.option(
    "--cache-mb",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="MiB of fetched files kept; the least recently used go first.",
)
@pass_state
def mount(
    state: State,
    cell: str,
    mountpoint: Path,
    select: str,
    all_points: bool,
    sources: tuple[str, ...],
    cache_mb: int,
) -> None:
    """Mount a read-only view of CELL at MOUNTPOINT, for cp, grep and diff.

    The point --date picks appears as the cell's tree (MOUNTPOINT/<root>/...);
    with --all, every point as a directory named by its archive id. Listing
    reads manifests only; a file's bytes are fetched when it is first read
    (its archive read only up to it, checked against the manifest) and kept
    in a bounded cache. Runs in the foreground until 'fusermount -u
    MOUNTPOINT' or Ctrl-C. Needs FUSE (/dev/fuse and libfuse) and the extra:
    pip install 'cellvault[mount]'.
    """
    with _errors(state):
        vault = state.vault()
        if not state.as_json:
            click.echo(
                f"mounting cell {cell} at {mountpoint}; unmount with: fusermount -u {mountpoint}"
            )
        vault.mount(
            cell,
            mountpoint,
            select=None if all_points else select,
            source=list(sources) or None,
            cache_bytes=cache_mb << 20,
        )
    if state.as_json:
        _emit_json({"ok": True, "cell": cell, "mountpoint": str(mountpoint)})


def _restore_paths(
    state: State, config: Config, cells: list[str] | None, params: dict[str, Any]
) -> None:
    """``restore --path``: the chosen paths of one cell (see :meth:`Vault.restore_paths`).

    *params* are the restore command's own.
    """
    with _errors(state):
        if params["load_dumps"] is not None or params["only_dumps"] or params["dump_options"]:
            raise ConfigError(
                "--path restores files only: --dumps, --dump and --dump-option do not apply",
                hint="restore a database with a whole-cell restore and --dump NAME",
            )
        if not cells or len(cells) != 1:
            raise ConfigError(
                "--path restores paths of one cell: name it with --cell (or RESTORE_CELL)",
                hint="for example: cellvault restore --cell crm --path 'crm/config/app.yml'",
            )
        report = state.vault(config).restore_paths(
            cells[0],
            list(params["paths"]),
            params["select"] or config.restore_date or "latest",
            into=params["into"] or config.restore_into,
            source=list(params["sources"]) or None,
            allow_external_links=params["allow_external_links"],
        )
    if state.as_json:
        _emit_json(report.to_dict())
    elif report.ok:
        click.echo(
            f"ok   {report.cell}: {', '.join(report.paths)} from {report.archive} "
            f"({report.files} files, {_size(report.bytes)}; read {len(report.archives_read)} "
            f"archive(s), {_size(report.bytes_read)})"
        )
        for dest in report.destinations:
            click.echo(f"     -> {dest}")
        if report.replaced_kept_in:
            click.echo(f"     what was replaced is kept in {report.replaced_kept_in}")
        click.echo(f"restore: ok in {report.duration:.1f}s")
    else:
        click.echo(f"FAIL {report.cell}: {report.stage}: {report.error}", err=True)
        click.echo(f"restore: FAILED in {report.duration:.1f}s")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


# -- the fleet (cellvault[fleet]) ---------------------------------------------------------


def _fleet(state: State, **overrides: Any) -> Any:
    """The coordinator's :class:`cellvault.fleet.Fleet` (a ConfigError without the extra)."""
    try:
        from .fleet import Fleet, FleetSettings
    except ImportError as exc:
        raise ConfigError(
            f"the fleet needs Celery ({exc.name} is not installed)",
            hint="pip install 'cellvault[fleet]'",
        ) from None
    vault = state.vault()
    return Fleet(vault, FleetSettings.from_config(vault.config, **overrides))


def _echo_fleet(report: Any) -> None:
    for r in report.results:
        where = f"on {r.host}" if r.host else "(no worker)"
        if r.ok:
            again = " (done by an earlier delivery)" if r.already_done else ""
            click.echo(f"ok   {r.cell} {where}: {r.archive or '-'} in {r.duration:.1f}s{again}")
        else:
            click.echo(f"FAIL {r.cell} {where}: {r.error}", err=True)
    for line in report.unowned:
        click.echo(f"FAIL {line}: nobody backs it up", err=True)
    per_host = ", ".join(f"{h} {n}" for h, n in sorted(report.hosts.items()))
    click.echo(
        f"fleet {report.operation}: {'ok' if report.ok else 'FAILED'}, {len(report.results)} "
        f"cell(s) in {report.duration:.1f}s" + (f" ({per_host})" if per_host else "")
    )


@cli.group()
def fleet() -> None:
    """Cells on many hosts, through Celery (pip install 'cellvault[fleet]'; docs/fleet.md).

    Each host runs 'cellvault fleet worker' with its own configuration; any
    host with CELLVAULT_BROKER_URL coordinates: backup, restore, status, hosts.
    """


@fleet.command(name="worker")
@click.option(
    "--host",
    help="This host's name in the fleet (default: CELLVAULT_FLEET_HOST, else the host name).",
)
@click.option("--pool", is_flag=True, help="Also serve the standby restore pool's queue.")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=2, show_default=True, help="Tasks at once."
)
@click.option(
    "--beat",
    is_flag=True,
    help="Also run the schedule (full at 02:00, incremental every 6 h by default).",
)
@pass_state
def fleet_worker(state: State, host: str | None, pool: bool, concurrency: int, beat: bool) -> None:
    """Run a worker: this host's cells' tasks (and the pool's), until stopped.

    Tasks are acknowledged only when done: a worker killed mid-task leaves it
    to be run again, and the cell's lease keeps two runs apart.
    """
    from .fleet import start_worker

    with _errors(state):
        coordinator = _fleet(state, host=host)
        extra = ["--beat"] if beat else []
        start_worker(
            coordinator.app,
            coordinator.vault,
            host=coordinator.settings.host,
            pool=pool,
            concurrency=concurrency,
            extra_args=extra,
        )


@fleet.command(name="hosts")
@click.option(
    "--timeout",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds to wait for the workers' answers.",
)
@_json_option
@pass_state
def fleet_hosts(state: State, timeout: float, as_json: bool) -> None:
    """Which cells live on which host; cells nobody owns or two hosts claim. Exit 1 on those."""
    state.as_json = state.as_json or as_json
    with _errors(state):
        found = _fleet(state).hosts(timeout=timeout)
    if state.as_json:
        _emit_json({**found.to_dict(), "warnings": found.warnings()})
    else:
        for host, cells in found.hosts.items():
            tags = [
                t for t, on in (("live", host in found.live), ("pool", host in found.pool)) if on
            ]
            click.echo(f"{host:<20} {' '.join(cells)}" + (f"  [{', '.join(tags)}]" if tags else ""))
        for line in found.warnings():
            click.echo(f"warn {line}", err=True)
    sys.exit(EXIT_FAILED if found.warnings() else EXIT_OK)


@fleet.command(name="backup")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["full", "incremental"]),
    help="Backup type (default: BACKUP_TYPE of each host).",
)
@click.option("--cell", "cells", multiple=True, help="Only this cell (repeatable).")
@click.option("--timeout", type=float, help="Seconds to wait for the last result.")
@_json_option
@pass_state
def fleet_backup(
    state: State, kind: str | None, cells: tuple[str, ...], timeout: float | None, as_json: bool
) -> None:
    """Back up every cell on the host that owns it; wait; one summary. Exit 1 if any failed."""
    state.as_json = state.as_json or as_json
    with _errors(state):
        coordinator = _fleet(state)
        echo = None if state.as_json else _fleet_line
        report = coordinator.backup(list(cells) or None, kind=kind, timeout=timeout, on_result=echo)
    if state.as_json:
        _emit_json({**report.to_dict(), "ok": report.ok})
    else:
        _echo_fleet(report)
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


def _fleet_line(result: Any) -> None:
    click.echo(f"{'done' if result.ok else 'fail'} {result.cell} on {result.host or '-'}", err=True)


@fleet.command(name="restore")
@click.option(
    "--date",
    "select",
    default="latest",
    show_default=True,
    help="latest, an archive id, a date prefix or an ISO time.",
)
@click.option(
    "--cell",
    "cells",
    multiple=True,
    help="Only this cell (repeatable). Default: every cell on the targets.",
)
@click.option(
    "--skip-prebackup", is_flag=True, help="No safety backup on the pool hosts (an empty standby)."
)
@click.option("--timeout", type=float, help="Seconds to wait for each result.")
@_json_option
@pass_state
def fleet_restore(
    state: State,
    select: str,
    cells: tuple[str, ...],
    skip_prebackup: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Restore every cell over the standby restore pool, largest first; report the platform RTO."""
    state.as_json = state.as_json or as_json
    with _errors(state):
        coordinator = _fleet(state)
        echo = None if state.as_json else _fleet_line
        report = coordinator.restore(
            select,
            cells=list(cells) or None,
            skip_prebackup=skip_prebackup,
            timeout=timeout,
            on_result=echo,
        )
    if state.as_json:
        _emit_json({**report.to_dict(), "ok": report.ok, "rto": report.duration})
    else:
        _echo_fleet(report)
        click.echo(f"platform RTO {report.duration:.1f}s")
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


@fleet.command(name="status")
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    help="Hours a newest archive may be old.",
)
@_json_option
@pass_state
def fleet_status(state: State, max_age: float | None, as_json: bool) -> None:
    """Every cell's newest archive and RPO per target, read from the targets (workers may be down).

    Needs no broker and no worker. Exits 1 when a cell is stale, missing or failed its last verify.
    """
    state.as_json = state.as_json or as_json
    with _errors(state):
        report = state.vault().status(max_age=max_age)
    _echo_status(state, report)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cellvault`` console script."""
    # This process is the command's own, no host's: its allocator keeps what it
    # frees, as the children's do (forking.keep_freed_memory; a backup's batches).
    keep_freed_memory()
    cli.main(args=argv, prog_name="cellvault")
