"""The ``command`` dumper: any program's stdout, loaded back by a program reading stdin.

For what has no dumper of its own (``etcdctl snapshot save /dev/stdout``,
``mongodump --archive``, ``ldapsearch``...)::

    [[cells.crm.dumpers]]
    type = "command"
    name = "ldap"
    command = ["slapcat", "-n", "1"]
    restore_command = ["slapadd", "-n", "1", "-q"]
    filename = "ldap.ldif"

Both run without a shell, with the cell's environment plus *env* and
``CELLVAULT_CELL``, ``CELLVAULT_ARCHIVE`` (and, on restore,
``CELLVAULT_DUMP_FILE``: the staged dump as one file). A non-zero exit or a
timeout fails the backup (or the restore, before the swap).

**Staging.** Alone, ``restore_command`` loads into the live store before the
cell's files are swapped: this dumper cannot stage, and the restore says so
(it is not atomic; the safety backup is the way back). Name a staging
location and the commands that swap it, and it stages like the built-in
databases::

    staging = "ldap_new"                      # CELLVAULT_STAGING, for every command below
    restore_command = ["load-into", "ldap_new"]
    swap_command = ["swap-in", "ldap_new"]      # one short step; the old state kept beside
    unswap_command = ["swap-back", "ldap_new"]  # after swap_command: the old state back
    discard_command = ["drop", "ldap_new"]      # optional: drop the staged state
    commit_command = ["drop-old"]               # optional: drop the old state at the end
    swapped_command = ["is-swapped"]            # optional: exit 0 swapped, 1 not (for recovery)

``restore_command`` then loads into the staging location; ``swap_command``
runs only once every part of the cell is loaded and checked, and
``unswap_command`` puts the old state back when another part of the cell
fails to swap. A restore killed mid-swap is settled by the next run:
``swapped_command`` tells it whether the swap took effect; without it, a
kill between ``swap_command`` and its journal entry is left to a person (the
recovery names the staging location).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from ..errors import ConfigError, LoadError
from ..hookspecs import hookimpl
from ..log import get_logger
from ..specs import DumperSpec
from ..tool import run_tool
from .base import DumpContext, Dumper, LoadContext
from .options import to_args, to_env
from .staging import StagedLoad

__all__ = ["CommandDumper"]

log = get_logger(__name__)

_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|AUTH|CREDENTIAL", re.I)


def _filename(value: Any) -> str:
    text = str(value)
    if not text or "/" in text or text.startswith("."):
        raise ValueError(f"filename {text!r} must be a plain file name")
    return text


def _command(value: Any) -> tuple[str, ...]:
    argv = to_args(value)
    if not argv:
        raise ValueError("command is empty")
    return argv


@attrs.define(kw_only=True)
class CommandDumper(Dumper):
    """Stores a command's stdout; restores by feeding it to *restore_command*'s stdin."""

    type: ClassVar[str] = "command"

    #: The program and its arguments (a list; a string is split on white space).
    command: tuple[str, ...] = attrs.field(converter=_command)
    #: The program that reads the dump on stdin at restore time (none: a restore
    #: hook imports it; set ``autoload = false`` then).
    restore_command: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    #: The dump's file name inside ``dumps/<name>/``.
    filename: str = attrs.field(default="output", converter=_filename)
    #: Extra environment variables for both commands (they may hold credentials:
    #: never in the repr; describe() masks those whose names say so).
    env: dict[str, str] = attrs.field(factory=dict, converter=to_env, repr=False)
    #: Working directory of both commands.
    cwd: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    #: A staging location (``CELLVAULT_STAGING``) restore_command loads into; with
    #: swap_command and unswap_command, the load is staged (see the module's text).
    staging: str = ""
    swap_command: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    unswap_command: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    discard_command: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    commit_command: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    swapped_command: tuple[str, ...] = attrs.field(default=(), converter=to_args)

    def __attrs_post_init__(self) -> None:
        staged = [self.swap_command, self.unswap_command]
        if (bool(self.staging) or any(staged)) and not (self.staging and all(staged)):
            raise ConfigError(
                f"dumper {self.name} (type command): staging needs staging, swap_command "
                "and unswap_command together",
                hint="set all three, or none to load into the live store",
            )

    def _env(self, cell: str, archive: str, **more: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.env,
            "CELLVAULT_CELL": cell,
            "CELLVAULT_ARCHIVE": archive,
            **more,
        }

    def _secrets(self) -> list[str]:
        """Values of *env* whose names say they are secret: masked in what the tools print."""
        return [v for k, v in self.env.items() if _SECRET_NAME.search(k)]

    def dump(self, ctx: DumpContext) -> None:
        ctx.info["command"] = list(self.command)
        ctx.run(
            self.command,
            stdout_to=self.filename,
            env=self._env(ctx.cell.name, ctx.archive),
            secrets=self._secrets(),
            cwd=self.cwd,
        )

    def stage(self, ctx: LoadContext) -> StagedLoad | None:
        """With ``staging``: restore_command loads there; swap_command swaps it in later."""
        if not self.staging:
            return ctx.cannot_stage("no staging location is configured (staging, swap_command)")
        staged = self._staged(f"{self.staging} (for cell {ctx.cell.name})", ctx.cell.name)
        ctx.side_created(staged)
        self.load(ctx)
        return staged

    def _staged(self, what: str, cell: str) -> _CommandSwap:
        return _CommandSwap(self.name, what, self.staging, owner=self, cell=cell)

    def resume(self, state: Mapping[str, Any]) -> StagedLoad | None:
        """The staging location a killed restore left, if it is still this dumper's."""
        if not self.staging or state.get("side") != self.staging:
            return None
        return self._staged(str(state.get("what")), str(state.get("cell", "")))

    def step(self, argv: Sequence[str], cell: str, *, check: bool = True) -> int:
        """Run one of the staging commands; its exit status (LoadError when *check* and not 0)."""
        result = run_tool(
            argv,
            what=f"dumper {self.name}: {Path(argv[0]).name}",
            error=LoadError,
            env=self._env(cell, "", CELLVAULT_STAGING=self.staging),
            secrets=self._secrets(),
            cwd=self.cwd,
            timeout=self.timeout,
            check=check,
        )
        return result.returncode

    def load(self, ctx: LoadContext) -> None:
        if not self.restore_command:
            raise LoadError(
                f"{ctx.where}: no restore_command is configured",
                hint="set restore_command, or autoload = false to leave the dump to a restore hook",
            )
        dump = ctx.path(self.filename)
        more = {"CELLVAULT_STAGING": self.staging} if self.staging else {}
        ctx.run(
            self.restore_command,
            stdin=dump,
            env=self._env(ctx.cell.name, ctx.archive, CELLVAULT_DUMP_FILE=str(dump), **more),
            secrets=self._secrets(),
            cwd=self.cwd,
        )

    def stock_restore(self, files: Sequence[str]) -> str | None:
        if not self.restore_command:
            return None
        return f"{' '.join(self.restore_command)} < {self.filename}"


@hookimpl
def cellvault_make_dumper(spec: DumperSpec) -> Dumper | None:
    return CommandDumper.from_spec(spec) if spec.type == "command" else None


@attrs.define
class _CommandSwap(StagedLoad):
    """A staging location loaded by restore_command, swapped in by the configured commands."""

    owner: CommandDumper = attrs.field(kw_only=True)
    cell: str = attrs.field(kw_only=True)

    def swap(self) -> None:
        self.owner.step(self.owner.swap_command, self.cell)

    def unswap(self) -> None:
        self.owner.step(self.owner.unswap_command, self.cell)

    def swapped(self) -> bool | None:
        if not self.owner.swapped_command:
            return None
        status = self.owner.step(self.owner.swapped_command, self.cell, check=False)
        if status not in (0, 1):
            raise LoadError(f"dumper {self.dumper}: swapped_command exited {status} (not 0 or 1)")
        return status == 0

    def discard(self) -> None:
        if self.owner.discard_command:
            try:
                self.owner.step(self.owner.discard_command, self.cell)
            except LoadError as exc:
                log.warning("dump.cleanup_failed", dumper=self.dumper, error=exc.message)

    def commit(self) -> None:
        if self.owner.commit_command:
            try:
                self.owner.step(self.owner.commit_command, self.cell)
            except LoadError as exc:
                log.warning("dump.old_state_kept", dumper=self.dumper, error=exc.message)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "cell": self.cell}
