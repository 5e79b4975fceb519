"""The command dumper, and what every dumper shares: dumps in the archive, verify, load, failures."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import zstandard

from cellvault import Cell, ConfigError, Vault, hookimpl
from cellvault.dumpers import DumpContext, Dumper, LoadContext, archive_io
from cellvault.dumpers.staging import StagedLoad
from cellvault.errors import CellvaultError, DumpError, LoadError
from cellvault.events import Event
from tests.dumpers.conftest import Alerts, argv_log, vault_for
from tests.helpers import clock, logged, snapshot, write_tree

PY = sys.executable


def emit(n: int, seed: int = 1) -> list[str]:
    """A command writing *n* deterministic, incompressible-ish bytes to stdout."""
    code = (
        f"import random,sys; r=random.Random({seed}); "
        f"sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range({n})))"
    )
    return [PY, "-c", code]


def expected(n: int, seed: int = 1) -> bytes:
    return subprocess.run(emit(n, seed), capture_output=True, check=True).stdout


def sink(path: Path) -> list[str]:
    """A restore command writing its stdin to *path*."""
    code = f"import sys,pathlib; pathlib.Path({str(path)!r}).write_bytes(sys.stdin.buffer.read())"
    return [PY, "-c", code]


def members(archive: Path) -> dict[str, bytes]:
    """Every regular member of a .tar.zst, by name."""
    with open(archive, "rb") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            out = {}
            for info in tar:
                f = tar.extractfile(info)
                out[info.name] = f.read() if f is not None else b""
            return out


def only_archive(backup: Path, cell: str = "crm") -> Path:
    (archive,) = sorted((backup / cell).glob("*.tar.zst"))
    return archive


def test_dump_goes_into_the_archive_and_loads_back(tmp_path: Path) -> None:
    out = tmp_path / "restored.bin"
    dumper = {
        "type": "command",
        "name": "blob",
        "command": emit(5000),
        "restore_command": sink(out),
        "filename": "blob.bin",
    }
    vault = vault_for(tmp_path, [dumper], clock=clock())
    report = vault.backup()
    assert report.ok, report.cells[0].error
    archive = only_archive(tmp_path / "backup")
    got = members(archive)
    assert got["dumps/blob/blob.bin"] == expected(5000)
    descriptor = json.loads(got["dumps/blob/dumper.json"])
    assert descriptor["ok"] is True and descriptor["type"] == "command"
    assert descriptor["files"]["blob.bin"]["parts"] == ["blob.bin"]
    assert descriptor["files"]["blob.bin"]["size"] == 5000
    # The manifest lists the dump with its sha256, so verify covers it.
    manifest = json.loads(got["manifest.json"])
    entries = {e["path"]: e for e in manifest["entries"]}
    assert entries["dumps/blob"]["type"] == "dir"
    assert entries["dumps/blob/blob.bin"]["archive"] == report.cells[0].archive
    assert vault.verify().ok

    restored = vault.restore("latest")
    assert restored.ok, restored.cells[0].error
    assert out.read_bytes() == expected(5000)


@pytest.mark.tools("zstd", "tar")
def test_a_large_dump_is_written_in_parts_that_stock_tools_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_io, "DUMP_CHUNK", 4096)
    out = tmp_path / "restored.bin"
    dumper = {
        "type": "command",
        "name": "big",
        "command": emit(10_000),
        "restore_command": sink(out),
    }
    vault = vault_for(tmp_path, [dumper], clock=clock())
    assert vault.backup().ok
    archive = only_archive(tmp_path / "backup")
    got = members(archive)
    parts = sorted(n for n in got if n.startswith("dumps/big/output.part-"))
    assert parts == [f"dumps/big/output.part-00000{i}" for i in (1, 2, 3)]
    assert [len(got[p]) for p in parts] == [4096, 4096, 10_000 - 8192]
    # Stock tools: zstd -d | tar x, then cat the parts in order.
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(  # noqa: S602 - the stock-tools procedure of docs/dumpers.md
        f"zstd -dc {archive} | tar -x -C {unpacked} && cat {unpacked}/dumps/big/output.part-* > {unpacked}/joined",
        shell=True,
        check=True,
    )
    assert (unpacked / "joined").read_bytes() == expected(10_000)
    assert vault.verify().ok
    assert vault.restore("latest").ok
    assert out.read_bytes() == expected(10_000)


def test_an_exact_multiple_of_the_chunk_and_an_empty_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_io, "DUMP_CHUNK", 1000)
    dumpers = [
        {"type": "command", "name": "even", "command": emit(2000), "autoload": False},
        {"type": "command", "name": "empty", "command": ["true"], "autoload": False},
    ]
    vault = vault_for(tmp_path, dumpers, clock=clock())
    assert vault.backup().ok
    got = members(only_archive(tmp_path / "backup"))
    assert sorted(n for n in got if n.startswith("dumps/even/output")) == [
        "dumps/even/output.part-000001",
        "dumps/even/output.part-000002",
    ]
    assert got["dumps/empty/output"] == b""
    assert vault.verify().ok


def test_a_damaged_dump_member_fails_verify_and_restore(tmp_path: Path) -> None:
    out = tmp_path / "restored.bin"
    dumper = {
        "type": "command",
        "name": "blob",
        "command": emit(3000),
        "restore_command": sink(out),
    }
    vault = vault_for(tmp_path, [dumper], clock=clock(), codec="gzip", level=0)
    assert vault.backup().ok
    (archive,) = (tmp_path / "backup" / "crm").glob("*.tar.gz")
    # Rewrite the archive with one byte of the dump flipped (a valid gzip stream).
    import gzip

    raw = bytearray(gzip.decompress(archive.read_bytes()))
    at = raw.index(expected(3000)[:64])
    raw[at + 10] ^= 0xFF
    archive.write_bytes(gzip.compress(bytes(raw)))
    report = vault.verify()
    assert not report.ok
    assert "dumps/blob/output" in (report.results[0].error or "")
    restored = vault.restore("latest", skip_prebackup=True)
    assert not restored.ok
    assert not out.exists()


def test_dumps_are_taken_fresh_in_every_incremental(tmp_path: Path) -> None:
    dumper = {"type": "command", "name": "blob", "command": emit(100), "autoload": False}
    vault = vault_for(tmp_path, [dumper], clock=clock())
    first = vault.backup(kind="full")
    second = vault.backup(kind="incremental")
    assert first.ok and second.ok
    assert second.cells[0].kind == "incremental"
    archives = sorted((tmp_path / "backup" / "crm").glob("*.tar.zst"))
    got = members(archives[-1])
    assert "dumps/blob/output" in got
    assert "data/crm/config.yaml" not in got  # unchanged files stay in the full archive
    entries = {e["path"]: e for e in json.loads(got["manifest.json"])["entries"]}
    assert entries["dumps/blob/output"]["archive"] == second.cells[0].archive
    assert entries["data/crm/config.yaml"]["archive"] == first.cells[0].archive
    assert vault.verify().ok


def test_a_failing_dump_fails_its_cell_with_a_clear_error_and_an_alert(
    tmp_path: Path, alerts: Alerts
) -> None:
    secret = "s3cr3t-Passw0rd"
    bad = {
        "type": "command",
        "name": "db",
        "command": [
            PY,
            "-c",
            f"import sys; print('connecting with password {secret}', file=sys.stderr); "
            f"print('PGPASSWORD={secret}', file=sys.stderr); sys.exit(3)",
        ],
        "env": {"DB_PASSWORD": secret},
    }
    billing = write_tree(tmp_path / "cells" / "billing", {"a": "b"})
    vault = vault_for(
        tmp_path, [bad], cells=[Cell("billing", [billing])], plugins=[alerts], clock=clock()
    )
    # DB_PASSWORD's value is a known secret: masked wherever the tool prints it.
    report = vault.backup()
    by_cell = {c.cell: c for c in report.cells}
    assert by_cell["billing"].ok
    crm = by_cell["crm"]
    assert not crm.ok and crm.stage == "dump"
    assert "cell crm, dumper db" in (crm.error or "") and "exit code 3" in (crm.error or "")
    assert "PGPASSWORD=***" in (crm.error or "")
    assert secret not in (crm.error or "")
    (failure,) = [f for f in alerts.failures if f.cell == "crm"]
    assert failure.stage == "dump" and failure.error == crm.error
    assert not list((tmp_path / "backup" / "crm").glob("*.json"))  # nothing committed


def test_a_dump_that_hangs_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    hang = {
        "type": "command",
        "name": "slow",
        # A child of the command that would outlive a plain kill of the command.
        "command": ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"],
        "timeout": 1,
    }
    vault = vault_for(tmp_path, [hang], clock=clock())
    started = time.monotonic()
    report = vault.backup()
    assert time.monotonic() - started < 30
    assert not report.ok
    assert "timed out after 1 s" in (report.cells[0].error or "")
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    assert (
        not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_a_failing_load_leaves_the_files_untouched(tmp_path: Path, alerts: Alerts) -> None:
    dumper = {
        "type": "command",
        "name": "db",
        "command": ["echo", "dump"],
        "restore_command": ["sh", "-c", "cat >/dev/null; echo 'import failed' >&2; exit 1"],
    }
    vault = vault_for(tmp_path, [dumper], plugins=[alerts], clock=clock())
    assert vault.backup().ok
    crm = tmp_path / "cells" / "crm"
    (crm / "config.yaml").write_text("changed after the backup\n")
    before = snapshot(crm)
    report = vault.restore("latest")
    assert not report.ok
    (cell,) = report.cells
    assert cell.stage == "load" and "import failed" in (cell.error or "")
    assert snapshot(crm) == before
    assert any(f.operation == "restore" and f.cell == "crm" for f in alerts.failures)
    assert not [p for p in crm.parent.iterdir() if p.name.startswith(".cellvault")]


def test_restore_chooses_which_dumps_load(tmp_path: Path) -> None:
    a, b = tmp_path / "a.out", tmp_path / "b.out"
    dumpers = [
        {"type": "command", "name": "a", "command": ["echo", "A"], "restore_command": sink(a)},
        {
            "type": "command",
            "name": "b",
            "command": ["echo", "B"],
            "restore_command": sink(b),
            "autoload": False,
        },
    ]
    vault = vault_for(tmp_path, dumpers, clock=clock())
    assert vault.backup().ok
    assert vault.restore("latest").ok
    assert a.read_text() == "A\n" and not b.exists()  # b is not autoloaded
    a.unlink()
    assert vault.restore("latest", load_dumps=["b"]).ok
    assert b.read_text() == "B\n" and not a.exists()
    b.unlink()
    assert vault.restore("latest", load_dumps=False).ok
    assert not a.exists() and not b.exists()
    # Options for this restore only: here, another restore command.
    c = tmp_path / "c.out"
    assert vault.restore("latest", dump_options={"a": {"restore_command": sink(c)}}).ok
    assert c.read_text() == "A\n" and not a.exists()
    with pytest.raises(ConfigError, match="no cell being restored has a dumper named 'nope'"):
        vault.restore("latest", load_dumps=["nope"])
    with pytest.raises(ConfigError, match="unknown option 'restor_command'"):
        vault.restore("latest", dump_options={"a": {"restor_command": []}})


def test_restore_into_a_directory_keeps_the_dumps_and_loads_none(tmp_path: Path) -> None:
    out = tmp_path / "loaded.out"
    dumper = {
        "type": "command",
        "name": "db",
        "command": ["echo", "D"],
        "restore_command": sink(out),
    }
    vault = vault_for(tmp_path, [dumper], clock=clock())
    assert vault.backup().ok
    report = vault.restore("latest", into=tmp_path / "elsewhere")
    assert report.ok, report.cells[0].error
    assert not out.exists()
    kept = tmp_path / "elsewhere" / "crm.dumps" / "db"
    assert (kept / "output").read_text() == "D\n"
    assert json.loads((kept / "dumper.json").read_text())["ok"] is True
    assert str(tmp_path / "elsewhere" / "crm.dumps") in report.cells[0].destination
    assert (tmp_path / "elsewhere" / "crm" / "crm" / "config.yaml").exists()


def test_restore_into_a_directory_that_loads_dumps_saves_the_live_databases_first(
    tmp_path: Path,
) -> None:
    """--into with --dumps replaces live databases: a safety backup first, or a refusal."""
    out = tmp_path / "loaded.out"
    out.write_text("live\n")
    dumper = {
        "type": "command",
        "name": "db",
        "command": ["cat", str(out)],
        "restore_command": sink(out),  # no staging: loads straight into the live store
    }
    vault = vault_for(tmp_path, [dumper], clock=clock())
    assert vault.backup().ok
    out.write_text("newer\n")
    refused = vault.restore("latest", into=tmp_path / "a", load_dumps=True, skip_prebackup=True)
    assert not refused.ok
    assert "refused: dumper db cannot stage" in (refused.error or "")
    assert "or load no dump (--no-dumps" in (refused.error or "")
    assert out.read_text() == "newer\n"  # untouched
    report = vault.restore("latest", into=tmp_path / "b", load_dumps=True)
    assert report.ok, report.error
    assert out.read_text() == "live\n"
    safety = report.cells[0].safety_backup
    (pre,) = [a for a in vault.list(["crm"]) if a.id == safety]
    assert pre.reason == "pre-restore"
    got = members(tmp_path / "backup" / "crm" / f"{safety}.tar.zst")
    assert got["dumps/db/output"] == b"newer\n"  # the way back holds what was live


def test_the_safety_backup_survives_a_failing_dumper(tmp_path: Path) -> None:
    """The database may be what the restore repairs: its dump failing must not block it."""
    flag = tmp_path / "broken"
    dumper = {
        "type": "command",
        "name": "db",
        "command": ["sh", "-c", f"test ! -e {flag} && echo ok"],
        "autoload": False,
    }
    vault = vault_for(tmp_path, [dumper], clock=clock())
    assert vault.backup().ok
    flag.touch()
    report = vault.restore("latest")
    assert report.ok, report.error
    safety = report.cells[0].safety_backup
    assert safety
    (pre,) = [a for a in vault.list(["crm"]) if a.id == safety]
    assert pre.reason == "pre-restore"
    got = members(tmp_path / "backup" / "crm" / f"{safety}.tar.zst")
    descriptor = json.loads(got["dumps/db/dumper.json"])
    assert descriptor["ok"] is False and "exit code 1" in descriptor["error"]
    # That incomplete dump is refused if someone tries to load it.
    back = vault.restore(safety, skip_prebackup=True, load_dumps=["db"])
    assert not back.ok and "incomplete dump" in (back.cells[0].error or "")


def test_tools_run_without_a_shell_and_credentials_stay_out_of_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = argv_log(monkeypatch)
    dumper = {
        "type": "command",
        "name": "db",
        "command": ["echo", "$HOME;", "x"],
        "autoload": False,
    }
    vault = vault_for(tmp_path, [dumper], clock=clock())
    assert vault.backup().ok
    got = members(only_archive(tmp_path / "backup"))
    assert got["dumps/db/output"] == b"$HOME; x\n"  # no shell expanded anything
    assert calls and calls[0][0] == ["echo", "$HOME;", "x"]


def test_config_errors_name_the_dumper(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no dumper type handles dumper x \\(type nosuch\\)"):
        vault_for(tmp_path, [{"type": "nosuch", "name": "x"}])
    with pytest.raises(ConfigError, match="unknown option 'comand'") as info:
        vault_for(tmp_path, [{"type": "command", "comand": ["x"]}])
    assert "command" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="two dumpers are named 'a'"):
        Cell("crm", ["/srv/crm"], dumpers=[{"type": "command", "name": "a"}] * 2)
    with pytest.raises(ConfigError, match="invalid dumper name"):
        Cell("crm", ["/srv/crm"], dumpers=[{"type": "command", "name": "../x"}])
    with pytest.raises(ConfigError, match="needs a type"):
        Cell("crm", ["/srv/crm"], dumpers=[{"command": ["x"]}])


class Upper(Dumper):
    """A dumper written in the test, passed as an object rather than a spec."""

    type = "upper"

    def dump(self, ctx: DumpContext) -> None:
        with ctx.open("text") as out:
            out.write(b"hello\n")

    def load(self, ctx: LoadContext) -> None:
        with ctx.open("text") as f:
            staged = ctx.staged(ctx.cell.paths[0] / "from-dump.txt")
            assert staged is not None, "a cell's path has a staged copy"
            staged.write_bytes(f.read().upper())


def test_a_dumper_object_loads_into_the_staged_cell(tmp_path: Path) -> None:
    vault = vault_for(tmp_path, [Upper(name="up")], clock=clock())
    assert vault.backup().ok
    report = vault.restore("latest")
    assert report.ok, report.cells[0].error
    # Written into the staged copy, swapped in with the rest.
    assert (tmp_path / "cells" / "crm" / "from-dump.txt").read_text() == "HELLO\n"


class Registers:
    @hookimpl
    def cellvault_make_dumper(self, spec):  # type: ignore[no-untyped-def]
        return Upper.from_spec(spec) if spec.type == "upper" else None


def test_a_plugin_registers_a_dumper_type(tmp_path: Path) -> None:
    vault = vault_for(tmp_path, [{"type": "upper", "name": "u"}], plugins=[Registers()])
    assert isinstance(vault.dumpers["crm"][0], Upper)
    assert isinstance(vault, Vault)


class Crashing(Dumper):
    """A dumper that fails its dump: with *error*, or a crash of its own (not a CellvaultError)."""

    type = "crashing"
    error: Exception = RuntimeError("lost the socket, PGPASSWORD=s3cr3t")

    def dump(self, ctx: DumpContext) -> None:
        raise self.error

    def load(self, ctx: LoadContext) -> None:
        raise AssertionError("never loaded")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        # A crash: its type and its redacted text, after the cell and the dumper.
        (
            RuntimeError("lost the socket, PGPASSWORD=s3cr3t"),
            "cell crm, dumper boom: RuntimeError: lost the socket, PGPASSWORD=***",
        ),
        # A known failure says it all; the cell and the dumper are named once.
        (
            ConfigError("cell crm, dumper boom: DB_PASSWORD is not set"),
            "cell crm, dumper boom: DB_PASSWORD is not set",
        ),
        (ConfigError("DB_PASSWORD is not set"), "cell crm, dumper boom: DB_PASSWORD is not set"),
        # A dumper's own DumpError is named as the others are, its hint kept.
        (DumpError("no space"), "cell crm, dumper boom: no space"),
        (
            DumpError("no space", hint="free some"),
            "cell crm, dumper boom: no space (free some)",
        ),
        (DumpError("cell crm, dumper boom: no space"), "cell crm, dumper boom: no space"),
    ],
)
def test_a_failed_dump_is_named_once_and_a_crash_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: Exception, message: str
) -> None:
    dumper = Crashing(name="boom")
    dumper.error = error
    vault = vault_for(tmp_path, [dumper], clock=clock())
    (crm,) = vault.backup().cells
    assert not crm.ok and crm.stage == "dump"
    assert crm.error == message
    crashed = [
        r
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "dump.crashed"
    ]
    assert len(crashed) == (0 if isinstance(error, CellvaultError) else 1)
    assert all(r.msg.get("dumper") == "boom" and r.exc_info for r in crashed)  # type: ignore[union-attr]


def test_a_load_is_logged_by_dumper_and_type(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    vault = vault_for(tmp_path, [Upper(name="up")], clock=clock())
    assert vault.backup().ok
    events: list[Event] = []
    vault.on_event = events.append
    assert vault.restore("latest").ok
    started = [e.data for e in events if e.name == "restore.dump_loading"]
    assert started == [{"dumper": "up"}]
    logged = [
        (r.msg["event"], r.msg.get("dumper"), r.msg.get("type"), r.msg.get("cell"))
        for r in caplog.records
        if isinstance(r.msg, dict) and str(r.msg.get("event")).startswith("dump.")
    ]
    # It cannot stage (asked first), so it loads into the staged cell.
    loads = [e for e in logged if e[0] in ("dump.loading", "dump.loaded", "dump.staged")]
    assert loads == [
        ("dump.loading", "up", "upper", "crm"),
        ("dump.loading", "up", "upper", "crm"),
        ("dump.loaded", "up", None, "crm"),
    ]
    (duration,) = [
        r.msg["duration"]
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "dump.loaded"
    ]
    assert isinstance(duration, float) and 0 <= duration < 3 and round(duration, 3) == duration


class LoadFails(Upper):
    """Dumps as Upper does; its load fails with *error*."""

    type = "upper"
    error: Exception = RuntimeError("lost the socket, PGPASSWORD=s3cr3t")

    def load(self, ctx: LoadContext) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            RuntimeError("lost the socket, PGPASSWORD=s3cr3t"),
            "cell crm, dumper up: RuntimeError: lost the socket, PGPASSWORD=***",
        ),
        (ConfigError("DB_PASSWORD is not set"), "cell crm, dumper up: DB_PASSWORD is not set"),
        (
            LoadError("cell crm, dumper up: the server refused"),
            "cell crm, dumper up: the server refused",
        ),
    ],
)
def test_a_failed_load_names_the_dumper_and_a_crash_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: Exception, message: str
) -> None:
    dumper = LoadFails(name="up")
    vault = vault_for(tmp_path, [dumper], clock=clock())
    assert vault.backup().ok
    dumper.error = error
    report = vault.restore("latest")
    assert not report.ok
    assert message in (report.cells[0].error or ""), report.cells[0].error
    assert "s3cr3t" not in (report.cells[0].error or "")
    crashed = [
        r.msg
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "dump.load_crashed"
    ]
    assert crashed == ([] if isinstance(error, CellvaultError) else [crashed[0]])
    assert all(c.get("dumper") == "up" for c in crashed)  # type: ignore[union-attr]


class Scratch(Upper):
    """Loads as Upper does, noting its scratch folder; removes that folder itself."""

    type = "upper"

    def load(self, ctx: LoadContext) -> None:
        self.spools.append((ctx.spool, stat.S_IMODE(ctx.spool.stat().st_mode)))
        shutil.rmtree(ctx.spool)  # a dumper may clean up after itself
        # What a killed restore leaves: the next dumper's scratch folder.
        (ctx.spool.parent / ".load-second").mkdir(exist_ok=True)
        super().load(ctx)


def test_each_load_has_a_private_scratch_folder_removed_after_it(tmp_path: Path) -> None:
    first, second = Scratch(name="first"), Scratch(name="second")
    first.spools, second.spools = [], []
    vault = vault_for(tmp_path, [first, second], clock=clock())
    assert vault.backup().ok
    report = vault.restore("latest")
    assert report.ok, report.cells[0].error
    ((one, mode_one),), ((two, mode_two),) = first.spools, second.spools
    assert (one.name, two.name) == (".load-first", ".load-second")
    assert mode_one == mode_two == 0o700
    assert not one.exists() and not two.exists()


@pytest.mark.parametrize(
    ("body", "message", "hint"),
    [
        (
            None,
            "cell crm, dumper db: archive cell_crm_x holds no dumper.json for this dump",
            "the archive was made before this dumper was configured; restore without it",
        ),
        (b"{not json", "cell crm, dumper db: dumper.json is not JSON (", None),
        (b"[1, 2]", "cell crm, dumper db: dumper.json is unusable", None),
        (b'{"ok": true, "files": []}', "cell crm, dumper db: dumper.json is unusable", None),
        (
            b'{"files": {}}',
            "cell crm, dumper db: archive cell_crm_x holds an incomplete dump (None)",
            "choose an older archive, or restore with this dump skipped",
        ),
        (
            b'{"ok": false, "error": "disk full", "files": {}}',
            "cell crm, dumper db: archive cell_crm_x holds an incomplete dump (disk full)",
            "choose an older archive, or restore with this dump skipped",
        ),
    ],
)
def test_a_dump_descriptor_that_is_missing_unusable_or_incomplete_is_refused(
    tmp_path: Path, body: bytes | None, message: str, hint: str | None
) -> None:
    if body is not None:
        (tmp_path / "dumper.json").write_bytes(body)
    with pytest.raises(LoadError) as info:
        archive_io.read_descriptor(tmp_path, where="cell crm, dumper db", archive="cell_crm_x")
    assert info.value.message.startswith(message), info.value.message
    assert info.value.hint == hint
    good = {"ok": True, "files": {}, "type": "command"}
    (tmp_path / "dumper.json").write_text(json.dumps(good))
    assert archive_io.read_descriptor(tmp_path, where="w", archive="a") == good


def test_a_dump_of_another_type_is_not_loaded(tmp_path: Path) -> None:
    vault = vault_for(tmp_path, [Upper(name="db")], clock=clock())
    backup = vault.backup()
    assert backup.ok
    archive = backup.cells[0].archive
    other = vault_for(tmp_path, [{"type": "command", "name": "db", "command": ["true"]}])
    report = other.restore("latest")
    assert not report.ok
    error = report.cells[0].error or ""
    assert (
        f"cell crm, dumper db: archive {archive} holds a upper dump, but the dumper is of type "
        "command"
    ) in error, error
    assert "(rename the dumper, or restore with this dump skipped)" in error


class DumpFailsLater(Upper):
    """Dumps as Upper does until told to fail (then a crash of its own)."""

    type = "upper"
    failing = False

    def dump(self, ctx: DumpContext) -> None:
        if self.failing:
            raise RuntimeError("the database is down")
        super().dump(ctx)


def test_a_safety_backup_without_its_dump_is_not_loaded(tmp_path: Path) -> None:
    dumper = DumpFailsLater(name="up")
    vault = vault_for(tmp_path, [dumper], clock=clock())
    assert vault.backup().ok
    dumper.failing = True  # the database the restore is about to repair
    report = vault.restore("latest")
    assert report.ok, report.cells[0].error
    safety = report.cells[0].safety_backup
    assert safety is not None
    again = vault.restore(str(safety))
    assert not again.ok
    error = again.cells[0].error or ""
    assert (
        f"cell crm, dumper up: archive {safety} holds an incomplete dump (cell crm, dumper up: "
        "RuntimeError: the database is down)"
    ) in error, error
    assert "(choose an older archive, or restore with this dump skipped)" in error


class MetaSeen(Upper):
    """Loads as Upper does, noting the archive metadata its load is given."""

    type = "upper"

    def load(self, ctx: LoadContext) -> None:
        self.metas = [*getattr(self, "metas", []), ctx.meta]
        super().load(ctx)

    def stock_restore(self, files: Sequence[str]) -> str | None:
        return f"upper-load {' '.join(files)}"


def test_a_dumps_descriptor_says_what_it_is_and_a_load_is_told_its_archive(
    tmp_path: Path,
) -> None:
    dumper = MetaSeen(name="up")
    vault = vault_for(tmp_path, [dumper], clock=clock())
    before = time.time()
    backup = vault.backup()
    after = time.time()
    assert backup.ok
    body = json.loads(members(only_archive(tmp_path / "backup"))["dumps/up/dumper.json"])
    assert (body["format"], body["name"], body["type"], body["ok"], body["error"]) == (
        1,
        "up",
        "upper",
        True,
        None,
    )
    fields = "format name type ok error started_at finished_at options info files restore"
    assert sorted(body) == sorted(fields.split())
    text = body["files"]["text"]
    assert sorted(text) == ["parts", "sha256", "size"] and text["size"] == len(b"hello\n")
    assert text["sha256"] == hashlib.sha256(b"hello\n").hexdigest()
    assert body["restore"] == "upper-load text"  # told the files it wrote
    started = dt.datetime.fromisoformat(body["started_at"].replace("Z", "+00:00"))
    finished = dt.datetime.fromisoformat(body["finished_at"].replace("Z", "+00:00"))
    assert body["started_at"].endswith("Z") and body["finished_at"].endswith("Z")
    assert before - 1 <= started.timestamp() <= finished.timestamp() <= after + 1
    assert vault.restore("latest").ok
    (meta,) = dumper.metas
    assert str(meta.id) == backup.cells[0].archive


def test_a_dump_the_archive_lacks_is_skipped_unless_asked_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = vault_for(tmp_path, [Upper(name="up")], clock=clock())
    backup = old.backup()
    assert backup.ok
    archive = backup.cells[0].archive
    # A dumper configured since (first): the archive has no dump of it.
    (tmp_path / "cells" / "crm" / "from-dump.txt").unlink(missing_ok=True)
    vault = vault_for(tmp_path, [Upper(name="new"), Upper(name="up")], clock=clock())
    assert vault.restore("latest").ok
    assert (tmp_path / "cells" / "crm" / "from-dump.txt").read_text() == "HELLO\n"  # up loaded
    skipped = [
        r.msg
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == "dump.not_in_archive"
    ]
    assert [(m["dumper"], m["cell"], m["archive"]) for m in skipped] == [("new", "crm", archive)]  # type: ignore[index]
    asked = vault.restore(archive, load_dumps=["new"])
    assert not asked.ok
    error = asked.cells[0].error or ""
    assert f"cell crm: archive {archive} holds no dump of dumper new (it holds: up)" in error, error


def test_the_staged_dumps_are_the_folders_named_as_dumpers(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    assert archive_io.staged_dumpers(dumps) == []  # an archive without dumps
    write_tree(dumps, {"up/dumper.json": "{}", "db/dumper.json": "{}", "stray": "a file"})
    (dumps / "Not A Name").mkdir()
    assert archive_io.staged_dumpers(dumps) == ["db", "up"]


class NoStage(Upper):
    """Loads as Upper does; says why it cannot stage."""

    type = "upper"

    def stage(self, ctx: LoadContext) -> StagedLoad | None:
        ctx.cannot_stage("its server is too old")
        return None


def test_a_restore_says_why_each_dumper_could_not_stage(tmp_path: Path) -> None:
    vault = vault_for(tmp_path, [NoStage(name="old"), Upper(name="up")], clock=clock())
    assert vault.backup().ok
    report = vault.restore("latest")
    assert report.ok, report.cells[0].error
    parts = report.cells[0].parts
    assert parts["dump:old"] == (
        "loaded into the live database before the swap (this dumper cannot stage: its server "
        "is too old)"
    )
    assert parts["dump:up"] == (
        "loaded into the live database before the swap (this dumper cannot stage: it has no "
        "staging step)"
    )


class Recording(Upper):
    """Dumps as Upper does, noting its context; removes its scratch folder itself."""

    type = "recording"
    seen: list[tuple[str, int, Path]]
    scratch: list[str]

    def dump(self, ctx: DumpContext) -> None:
        self.seen.append((ctx.reason, stat.S_IMODE(ctx.spool.stat().st_mode), ctx.spool))
        self.scratch = sorted(p.name for p in ctx.spool.parent.glob(".dump-*"))
        shutil.rmtree(ctx.spool)  # a dumper may clean up after itself
        time.sleep(0.01)
        super().dump(ctx)
        with ctx.open("more") as out:
            out.write(b"12345")


class Leaves(Upper):
    """Dumps as Upper does, leaving a file in its scratch folder."""

    type = "leaves"

    def dump(self, ctx: DumpContext) -> None:
        (ctx.spool / "work.tmp").write_bytes(b"x" * 1000)
        super().dump(ctx)


def test_a_dump_is_summed_up_in_the_report_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    dumper = Recording(name="rec")
    dumper.seen = []
    vault = vault_for(tmp_path, [Leaves(name="first"), dumper], clock=clock())
    started = time.monotonic()
    (crm,) = vault.backup().cells
    wall = time.monotonic() - started
    assert crm.ok, crm.error
    ((reason, mode, scratch),) = dumper.seen
    assert (reason, mode, scratch.name) == ("scheduled", 0o700, ".dump-crm-rec")
    assert not scratch.exists()
    assert dumper.scratch == [".dump-crm-rec"]  # the first dumper's is gone, with its file
    first, summary = crm.dumps
    assert (summary.name, summary.type, summary.ok, summary.bytes, summary.error) == (
        "rec",
        "recording",
        True,
        len(b"hello\n12345"),
        None,
    )
    assert 0.01 <= summary.duration <= wall
    assert (first.name, first.ok, first.bytes) == ("first", True, len("hello\n"))
    _, written = logged(caplog, "dump.written")
    assert {k: written[k] for k in ("cell", "archive", "dumper", "type", "bytes", "ok")} == {
        "cell": "crm",
        "archive": crm.archive,
        "dumper": "rec",
        "type": "recording",
        "bytes": 11,
        "ok": True,
    }
    assert written["duration"] == round(summary.duration, 3)


def test_a_safety_backup_says_which_dump_it_lacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed dump does not block the restore, and the restore's report says what is missing."""
    caplog.set_level(logging.INFO, logger="cellvault")
    dumper = Recording(name="rec")
    dumper.seen = []
    # An archive taken before the dumper "boom" was configured (and began to fail).
    assert vault_for(tmp_path, [dumper], clock=clock()).backup().ok
    vault = vault_for(tmp_path, [dumper, Crashing(name="boom")], clock=clock())
    assert not vault.backup().ok  # a scheduled backup fails on the crashing dump
    caplog.clear()
    report = vault.restore("latest", load_dumps=[])
    assert report.ok, report.error
    (cell,) = report.cells
    safety = cell.safety_backup
    assert safety and [s[0] for s in dumper.seen][-1] == "pre-restore"
    error = "cell crm, dumper boom: RuntimeError: lost the socket, PGPASSWORD=***"
    assert cell.warnings == (
        f"safety backup {safety}: dumper boom failed, so the safety backup lacks its dump: {error}",
    )
    (failed,) = logged(caplog, "dump.failed")
    assert (failed["cell"], failed["dumper"], failed["type"], failed["error"]) == (
        "crm",
        "boom",
        "crashing",
        error,
    )
    assert failed["archive"] == safety
    (summary,) = [s for s in logged(caplog, "dump.written") if s["dumper"] == "boom"]
    assert (summary["ok"], summary["bytes"]) == (False, 0)
    # Taken on its own (Vault.backup's reason), the safety backup's report says the same.
    (pre,) = vault.backup(reason="pre-restore").cells
    assert pre.ok
    assert [(d.name, d.ok, d.error) for d in pre.dumps] == [
        ("rec", True, None),
        ("boom", False, error),
    ]
    assert pre.warnings == (f"dumper boom failed, so the safety backup lacks its dump: {error}",)


class Side(Upper):
    """Stages into a side object named after it, or says why it cannot (``cannot`` set)."""

    type = "side"
    cannot = ""

    def stage(self, ctx: LoadContext) -> StagedLoad | None:
        if self.cannot:
            return ctx.cannot_stage(self.cannot)
        side = StagedLoad(self.name, f"store {self.name}", f"{self.name}-side")
        ctx.side_created(side)
        return side


def test_load_staged_dumps_stages_each_dumper_in_order_and_says_what_it_did(
    tmp_path: Path,
) -> None:
    """Two that stage, one that cannot: each staged side reported; the third per the caller."""
    a, b, c = Side(name="a"), Side(name="b"), Side(name="c")
    c.cannot = "no side database here"
    vault = vault_for(tmp_path, [a, c, b], clock=clock())
    assert vault.backup().ok
    report = vault.restore("latest", into=tmp_path / "out")
    assert report.ok, report.cells[0].error
    dumps = tmp_path / "out" / "crm.dumps"
    (meta,) = [s.meta for s in vault.target("local").archives("crm")]
    cell = vault.config.cells[0]
    (tmp_path / "staged").mkdir()

    def load(**kwargs: Any) -> tuple[list[str], dict[str, Any]]:
        seen: dict[str, Any] = {"sides": [], "staged": [], "created": [], "why": {}, "order": []}
        loaded = archive_io.load_staged_dumps(
            cell=cell,
            meta=meta,
            dumpers=[a, c, b],
            dumps=dumps,
            spool=tmp_path / "scratch",
            staged_roots={cell.paths[0]: tmp_path / "staged"},
            sides=seen["sides"],
            on_staged=seen["staged"].append,
            on_side=seen["created"].append,
            not_staged=seen["why"],
            on_loading=seen["order"].append,
            **kwargs,
        )
        return loaded, seen

    # A restore's: the one that cannot stage loads into the live store, in its turn.
    loaded, seen = load()
    assert loaded == ["a", "c", "b"]
    assert [s.side for s in seen["sides"]] == ["a-side", "b-side"]
    assert seen["staged"] == seen["sides"] == seen["created"]
    assert seen["why"] == {"c": "no side database here"}
    assert seen["order"] == ["c"]  # only c loads live, between on_loading and on_loaded
    # A drill's: the one that cannot stage is not loaded at all, only named.
    no_live: list[str] = []
    loaded, seen = load(no_live=no_live)
    assert (loaded, no_live, seen["order"]) == (["a", "b"], ["c"], [])
    # Asked for a dumper the cell lacks, or one whose dump the archive lacks: refused.
    with pytest.raises(LoadError) as unknown:
        load(only=["a", "zz"])
    assert (unknown.value.message, unknown.value.hint) == (
        "cell crm: no dumper named 'zz' is configured",
        "configured dumpers: a, c, b",
    )
    with pytest.raises(LoadError) as bare:
        archive_io.load_staged_dumps(
            cell=cell, meta=meta, dumpers=[], dumps=dumps, spool=tmp_path / "s", only=["a"]
        )
    assert bare.value.hint == "configured dumpers: none"
    shutil.rmtree(dumps / "b")
    with pytest.raises(LoadError) as lacking:
        load(only=["b"])
    assert (lacking.value.message, lacking.value.hint) == (
        f"cell crm: archive {meta.id} holds no dump of dumper b",
        "it holds: a, c",
    )
    shutil.rmtree(dumps)
    dumps.mkdir()
    with pytest.raises(LoadError) as empty:
        load(only=["b"])
    assert empty.value.hint == "it holds: no dumps"


class Slow(Upper):
    """Writes 192 KiB in three parts, a third of a second apart."""

    type = "slow"

    def dump(self, ctx: DumpContext) -> None:
        with ctx.open("data") as out:
            for _ in range(3):
                out.write(b"x" * 65536)
                time.sleep(0.3)


def test_a_dump_counts_in_the_backup_s_progress_as_it_is_written(tmp_path: Path) -> None:
    events: list[Event] = []
    vault = vault_for(
        tmp_path, [Slow(name="s")], clock=clock(), on_event=events.append, progress_interval=1e-9
    )
    assert vault.backup().ok
    files = len("db: crm\n") + len("a\n")
    done = [e.data["bytes_done"] for e in events if e.name == "progress"]
    assert max(done) == files + 3 * 65536
    assert {v for v in done if files < v < files + 3 * 65536}, "no progress during the dump"
