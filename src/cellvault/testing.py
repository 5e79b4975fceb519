"""Contract tests for plugin authors: the tests every cellvault target and dumper passes.

A package that adds a target type subclasses :class:`TargetContract` in its
own test suite and gives it a ``target`` fixture (a fresh, empty target of
its type); pytest then runs the same commit, listing, lease, retry, debris
and read-back tests the built-in targets (local, NAS, rsync, S3, OSS, any
fsspec URL) pass in cellvault's own suite::

    import pytest
    from cellvault import TargetSpec
    from cellvault.testing import TargetContract
    from cellvault_simpledir import SimpleDirTarget

    class TestSimpleDir(TargetContract):
        @pytest.fixture
        def target(self, tmp_path):
            return SimpleDirTarget(TargetSpec("usb", f"simpledir://{tmp_path}/usb"))

A package that adds a dumper type subclasses :class:`DumperContract` the
same way: a ``spec`` fixture (the table of a dumper of its type, against a
real source of its own), ``write_state`` and ``read_state`` (put a known
state in the source, read back which one it holds) and, optionally, a
``broken_spec`` fixture (the same type pointed at a source that is not
there). The built-in dumpers (sqlite, command, PostgreSQL, MariaDB, Redis)
and the example plugin's ``sqlite-sql`` pass it in cellvault's own suite.

This module is also a pytest plugin (the ``pytest11`` entry point
``cellvault``, loaded by pytest wherever cellvault is installed; or
``pytest_plugins = ["cellvault.testing"]``): it adds the ``target_contract``
marker to every target contract test and ``dumper_contract`` to every dumper
contract test, so ``pytest -m target_contract`` runs them alone. It needs
pytest, which cellvault itself does not depend on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs
import pytest
import zstandard

from .cell import Cell
from .config import Config
from .dumpers import archive_io
from .dumpers.members import DESCRIPTOR, DUMPS_ROOT
from .errors import ConfigError, LockHeld
from .hookspecs import hookimpl
from .lock import Lease
from .report import Failure
from .specs import TargetSpec
from .targets.base import Target
from .vault import Vault

__all__ = ["DumperContract", "TargetContract"]

MARKER = "target_contract"
DUMPER_MARKER = "dumper_contract"
CELL = "crm"
#: An archive id no test writes but the debris test.
DEBRIS_ID = "cell_crm_20250101_020000"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker of the contract tests."""
    config.addinivalue_line(
        "markers", f"{MARKER}: a test of cellvault.testing's target contract for plugin authors"
    )
    config.addinivalue_line(
        "markers",
        f"{DUMPER_MARKER}: a test of cellvault.testing's dumper contract for plugin authors",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test a :class:`TargetContract` or :class:`DumperContract` subclass inherits."""
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and issubclass(cls, TargetContract):
            item.add_marker(MARKER)
        if cls is not None and issubclass(cls, DumperContract):
            item.add_marker(DUMPER_MARKER)


class _Provide:
    """A plugin that hands the vault the very target under test."""

    def __init__(self, target: Target) -> None:
        self.target = target

    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> Target | None:
        return self.target if spec == self.target.spec else None


class _Flaky(io.RawIOBase):
    """A stream that fails after its first block: what a broken source looks like."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.sent:
            raise OSError("the source broke off")
        n = min(len(buffer), len(self.data))
        buffer[:n] = self.data[:n]
        self.sent = True
        return n


class TargetContract:
    """The contract every :class:`cellvault.Target` type keeps; subclass it in a test module.

    Override the ``target`` fixture to return a fresh, empty target of your
    type (a new folder, bucket or prefix per test). Override
    :attr:`large_size` to change the size of the file the streaming tests
    write (default 3 MiB: more than one block of a multipart upload).
    """

    #: Bytes of the large file of the put, fetch and stream tests.
    large_size: int = 3 * 1024 * 1024

    @pytest.fixture
    def target(self) -> Target:
        """A fresh, empty target of the type under test: override this fixture."""
        raise NotImplementedError("a TargetContract subclass must define a 'target' fixture")

    @pytest.fixture
    def payload(self) -> bytes:
        """Incompressible bytes of :attr:`large_size`."""
        return secrets.token_bytes(self.large_size)

    # -- the primitives ----------------------------------------------------------------

    def test_put_bytes_replaces_and_reads_back(self, target: Target) -> None:
        target.put_bytes("a/b.json", b"first")
        assert target.read_bytes("a/b.json") == b"first"
        target.put_bytes("a/b.json", b"second, longer")
        with target.open_read("a/b.json") as f:
            assert f.read() == b"second, longer"

    def test_put_file_and_fetch_stream_large_files(
        self, target: Target, payload: bytes, tmp_path: Path
    ) -> None:
        local = tmp_path / "large.bin"
        local.write_bytes(payload)
        target.put_file(local, f"{CELL}/large.bin")
        back = tmp_path / "back.bin"
        target.fetch(f"{CELL}/large.bin", back)
        assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(payload).digest()
        with target.open_read(f"{CELL}/large.bin") as f:
            assert f.read(10) == payload[:10]

    def test_a_missing_key_is_file_not_found(self, target: Target) -> None:
        with pytest.raises(FileNotFoundError):
            target.open_read("nope/missing.json").read()
        with pytest.raises(FileNotFoundError):
            target.stat("nope/missing.json")
        target.delete("nope/missing.json")  # not an error

    def test_list_gives_files_with_sizes_and_folders(self, target: Target) -> None:
        assert target.list("nope") == []
        target.put_bytes("a/one.bin", b"12345")
        target.put_bytes("a/sub/two.bin", b"x")
        entries = {e.name: e for e in target.list("a")}
        assert set(entries) == {"one.bin", "sub"}
        assert (entries["one.bin"].size, entries["one.bin"].is_dir) == (5, False)
        assert entries["sub"].is_dir
        assert "a" in {e.name for e in target.list("") if e.is_dir}
        target.delete("a/one.bin")
        assert {e.name for e in target.list("a")} == {"sub"}

    def test_create_exclusive_creates_only_once(self, target: Target) -> None:
        assert target.create_exclusive(".locks/crm.lock", b"mine") is True
        assert target.create_exclusive(".locks/crm.lock", b"theirs") is False
        assert target.read_bytes(".locks/crm.lock") == b"mine"

    def test_stat_gives_the_size_and_only_declared_checksums(self, target: Target) -> None:
        target.put_bytes(f"{CELL}/s.bin", b"0123456789")
        info = target.stat(f"{CELL}/s.bin")
        assert info.size == 10
        assert set(info.checksums) <= set(target.stat_checksums)

    def test_put_stream_writes_all_or_nothing_or_declines(
        self, target: Target, payload: bytes
    ) -> None:
        if not target.put_stream(f"{CELL}/stream.bin", io.BytesIO(payload)):
            # The opt-out: a type that writes no streams says False and writes nothing.
            assert "stream.bin" not in {e.name for e in target.list(CELL)}
            with pytest.raises(FileNotFoundError):
                target.stat(f"{CELL}/stream.bin")
            return
        assert target.read_bytes(f"{CELL}/stream.bin") == payload
        with pytest.raises(OSError, match="broke off"):
            target.put_stream(f"{CELL}/broken.bin", io.BufferedReader(_Flaky(payload)))
        assert "broken.bin" not in {e.name for e in target.list(CELL)}

    def test_check_reaches_the_target(self, target: Target) -> None:
        target.check()

    # -- what cellvault builds on them -----------------------------------------------------

    def test_leases_exclude_each_other(self, target: Target) -> None:
        with (
            Lease.acquire(target, CELL, "contract test"),
            pytest.raises(LockHeld, match="contract test"),
        ):
            Lease.acquire(target, CELL, "a second run")
        with Lease.acquire(target, CELL, "after the release"):
            pass

    def test_transient_errors_are_retried(self, target: Target, monkeypatch: Any) -> None:
        real = target.put_bytes
        calls: list[str] = []

        def flaky(key: str, data: bytes) -> None:
            calls.append(key)
            if len(calls) == 1:
                raise ConnectionResetError(104, "Connection reset by peer")
            real(key, data)

        monkeypatch.setattr(target, "put_bytes", flaky)
        target.retrying(target.put_bytes, "r/x.json", b"ok")
        assert len(calls) == 2
        assert target.read_bytes("r/x.json") == b"ok"
        assert not target.is_transient(FileNotFoundError("gone"))
        assert not target.is_transient(PermissionError(13, "denied"))

    def test_debris_of_an_interrupted_run_is_found_and_cleared(self, target: Target) -> None:
        target.put_bytes(f"{CELL}/{DEBRIS_ID}.tar.zst", b"half an archive")
        target.put_bytes(f"{CELL}/notes.txt", b"not ours: left alone")
        assert target.archives(CELL) == []
        assert target.debris(CELL) == [f"{CELL}/{DEBRIS_ID}.tar.zst"]
        assert target.clear_debris(CELL) == [f"{CELL}/{DEBRIS_ID}.tar.zst"]
        assert {e.name for e in target.list(CELL)} == {"notes.txt"}

    @pytest.fixture
    def vault(self, target: Target, tmp_path: Path, payload: bytes) -> Iterator[Vault]:
        """A vault whose only target is *target*, with a cell of a few files."""
        cell = tmp_path / "cells" / CELL
        (cell / "uploads").mkdir(parents=True)
        (cell / "config.yaml").write_text("service: crm\n")
        (cell / "uploads" / "large.bin").write_bytes(payload)
        os.symlink("config.yaml", cell / "current")
        config = Config(
            backup_dir=tmp_path / "backup",
            cells=[Cell(CELL, [cell])],
            targets=[target.spec],
            extra={"BACKUP_ALERT_LOG": "off"},
        )
        yield Vault(config, plugins=[_Provide(target)], load_entry_points=False)

    def test_commit_listing_and_read_back(self, vault: Vault, target: Target) -> None:
        backup = vault.backup()
        assert backup.ok, [(c.stage, c.error) for c in backup.cells]
        (sidecar,) = target.archives(CELL)
        assert str(sidecar.id) == backup.cells[0].archive
        assert target.archive_ids(CELL) == [sidecar.id]
        assert target.debris(CELL) == []
        assert target.stat(f"{CELL}/{sidecar.data_name}").size == sidecar.size
        with target.open_archive(sidecar) as f:
            assert _sha256(f) == sidecar.sha256
        assert vault.verify(level="full").ok

    def test_a_restore_reads_back_every_byte(
        self, vault: Vault, tmp_path: Path, payload: bytes
    ) -> None:
        assert vault.backup().ok
        restored = vault.restore("latest", into=tmp_path / "restored")
        assert restored.ok, [(c.stage, c.error) for c in restored.cells]
        root = tmp_path / "restored" / CELL / CELL
        assert (root / "uploads" / "large.bin").read_bytes() == payload
        assert os.readlink(root / "current") == "config.yaml"

    def test_a_deleted_archive_is_no_longer_listed(self, vault: Vault, target: Target) -> None:
        assert vault.backup().ok
        (sidecar,) = target.archives(CELL)
        target.delete_archive(sidecar)
        assert target.archives(CELL) == []
        assert [e for e in target.list(CELL) if not e.is_dir] == []


def _sha256(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


# -- dumpers ---------------------------------------------------------------------------------


class _Alerts:
    """A plugin that keeps every failure the run reports (what an alert channel receives)."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    @hookimpl
    def cellvault_backup_failed(self, failure: Failure) -> None:
        self.failures.append(failure)


@attrs.define
class DumperKit:
    """What a :class:`DumperContract` test works with: vaults, alerts, the run logs.

    The vault it makes has two cells: ``crm`` (a few files and the dumper
    under test) and ``billing`` (files only, to show a failing dumper fails
    its own cell alone).
    """

    root: Path
    plugins: list[object]
    alerts: _Alerts = attrs.field(factory=_Alerts)

    @property
    def crm(self) -> Path:
        """The files of cell ``crm``."""
        return self.root / "cells" / CELL

    def vault(self, dumper: Mapping[str, Any]) -> Vault:
        """A vault whose cell ``crm`` has *dumper* (a configuration table)."""
        billing = self.root / "cells" / "billing"
        for folder, text in ((self.crm, "service: crm\n"), (billing, "service: billing\n")):
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "config.yaml").exists():
                (folder / "config.yaml").write_text(text)
        config = Config(
            backup_dir=self.root / "backup",
            cells=[Cell(CELL, [self.crm], dumpers=[dict(dumper)]), Cell("billing", [billing])],
            extra={"BACKUP_ALERT_LOG": "off"},
        )
        return Vault(config, plugins=[self.alerts, *self.plugins], load_entry_points=False)

    def run_logs(self) -> str:
        """Every run log written so far, as one text."""
        logs = self.root / "backup" / "logs"
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))


class DumperContract:
    """The contract every dumper type keeps; subclass it in a test module.

    Give the subclass:

    - a ``spec`` fixture: the table of one dumper of your type, as a cell's
      configuration holds it (``{"type": ..., "name": ..., <options>}``),
      against a real source of the test's own (a scratch database, a file
      under ``tmp_path``);
    - :meth:`write_state` and :meth:`read_state`: put the state called
      *marker* into that source, and say which marker it holds now. A
      marker is up to :attr:`big_marker` characters of ``[a-z0-9-]``.

    And, as your type needs them: a ``broken_spec`` fixture (the same type
    pointed at a source that does not answer: without it the failure test
    is not collected); a ``dumper_plugins`` fixture (the plugin modules or
    objects whose ``cellvault_make_dumper`` makes your type; entry points are
    not loaded, so that whatever else is installed stays out; the built-in
    types need none); a ``load_failure_options`` fixture (options for one
    restore that make the load fail before it writes, such as an unreachable
    server: without it that test is not collected); :attr:`secret_option`
    and :attr:`secret` (what must never reach an argv, a log, an error or
    the archive), or :attr:`spec_has_secret` ``False`` when *spec* carries
    no secret (the secrets test is then not collected).

    A test left out is not collected at all, rather than skipped: a CI run
    of a plugin's suite can then require that nothing was skipped.
    """

    #: An option of *spec* whose value must reach no argv, file, log or error.
    secret_option: str = "password"  # noqa: S105 - an option's name, not a password
    #: A secret *spec* may carry elsewhere (the password in a DSN, an env value).
    secret: str = "cv-contract-S3cret"  # noqa: S105 - a test value
    #: Whether *spec* carries a secret (``False``: the secrets test is not collected).
    spec_has_secret: bool = True
    #: The part size of the large-dump test (the archive's ``DUMP_CHUNK`` for that test).
    part_size: int = 4096
    #: Characters of the large-dump test's marker: enough for a dump of several parts.
    big_marker: int = 16384

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Leave out (not collect) the tests this subclass opts out of."""
        super().__init_subclass__(**kwargs)
        if cls.broken_spec is DumperContract.broken_spec:
            cls.test_a_failing_dump_fails_its_cell_alone_with_a_clear_error_and_an_alert = None  # type: ignore[assignment,method-assign]
        if cls.load_failure_options is DumperContract.load_failure_options:
            cls.test_a_failing_load_leaves_files_and_data_untouched = None  # type: ignore[assignment,method-assign]
        if not cls.spec_has_secret:
            cls.test_secrets_stay_out_of_argv_logs_errors_and_the_descriptor = None  # type: ignore[assignment,method-assign]

    @pytest.fixture
    def spec(self) -> dict[str, Any]:
        """The dumper's table against a real source: override this fixture."""
        raise NotImplementedError("a DumperContract subclass must define a 'spec' fixture")

    @pytest.fixture
    def broken_spec(self) -> dict[str, Any] | None:
        """The same type pointed at a source that is not there (not overridden: not tested)."""
        return None

    @pytest.fixture
    def load_failure_options(self) -> dict[str, Any] | None:
        """Restore-time options that make the load fail before it writes (not overridden: not tested)."""
        return None

    @pytest.fixture
    def dumper_plugins(self) -> list[object]:
        """The plugins that make the type under test (none for the built-in types)."""
        return []

    @pytest.fixture
    def kit(self, tmp_path: Path, dumper_plugins: list[object]) -> DumperKit:
        """Vaults with the dumper under test, and the alerts they sent."""
        return DumperKit(tmp_path, list(dumper_plugins))

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        """Put the state called *marker* into the source *spec* dumps: override this method."""
        raise NotImplementedError("a DumperContract subclass must define write_state")

    def read_state(self, spec: Mapping[str, Any]) -> str:
        """The marker of the state the source *spec* dumps holds now: override this method."""
        raise NotImplementedError("a DumperContract subclass must define read_state")

    def secrets_of(self, spec: Mapping[str, Any]) -> list[str]:
        """The secret values *spec* carries: its :attr:`secret_option`, and :attr:`secret`."""
        found = [str(spec[self.secret_option])] if spec.get(self.secret_option) else []
        if self.secret and self.secret in json.dumps(spec):
            found.append(self.secret)
        return found

    # -- the tests ---------------------------------------------------------------------

    def test_an_unknown_option_is_a_configuration_error(
        self, kit: DumperKit, spec: dict[str, Any]
    ) -> None:
        with pytest.raises(ConfigError, match="unknown option 'no_such_option'"):
            kit.vault({**spec, "no_such_option": "1"})

    def test_a_restore_brings_back_the_state_each_backup_dumped(
        self, kit: DumperKit, spec: dict[str, Any]
    ) -> None:
        vault = kit.vault(spec)
        self.write_state(spec, "full")
        full = vault.backup(kind="full")
        assert full.ok, [(c.cell, c.stage, c.error) for c in full.cells]
        self.write_state(spec, "incremental")
        incremental = vault.backup(kind="incremental")
        assert incremental.ok, [(c.cell, c.stage, c.error) for c in incremental.cells]
        # Every backup takes a dump of its own, the incrementals too.
        assert [c.kind for c in incremental.cells if c.cell == CELL] == ["incremental"]
        assert vault.verify(CELL, level="full").ok
        self.write_state(spec, "later")
        assert self.read_state(spec) == "later"
        latest = vault.restore("latest", cells=CELL)
        assert latest.ok, [(c.stage, c.error) for c in latest.cells]
        assert self.read_state(spec) == "incremental"
        (archive,) = [c.archive for c in full.cells if c.cell == CELL]
        assert archive is not None
        older = vault.restore(archive, cells=CELL)
        assert older.ok, [(c.stage, c.error) for c in older.cells]
        assert self.read_state(spec) == "full"

    def test_the_dump_is_in_the_archive_with_its_descriptor(
        self, kit: DumperKit, spec: dict[str, Any]
    ) -> None:
        self.write_state(spec, "archived")
        vault = kit.vault(spec)
        assert vault.backup(CELL, kind="full").ok
        (data,) = sorted((kit.root / "backup" / CELL).glob("*.tar.zst"))
        members = _members(data)  # read as stock zstd and tar would
        (name,) = [d.name for d in vault.dumpers[CELL]]
        prefix = f"{DUMPS_ROOT}/{name}/"
        mine = {n.removeprefix(prefix) for n in members if n.startswith(prefix)}
        assert DESCRIPTOR in mine, f"no {prefix}{DESCRIPTOR} in the archive"
        assert mine - {DESCRIPTOR}, "the dump wrote no file"
        descriptor = json.loads(members[prefix + DESCRIPTOR])
        assert descriptor["ok"] is True and descriptor["type"] == spec["type"]
        blob = b"".join(members.values())
        for secret in self.secrets_of(spec):
            assert secret.encode() not in blob, "a secret reached the archive"

    def test_a_large_dump_is_kept_in_parts_and_loads_back(
        self, kit: DumperKit, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(archive_io, "DUMP_CHUNK", self.part_size)
        vault = kit.vault(spec)
        (name,) = [d.name for d in vault.dumpers[CELL]]
        big = "big-" + secrets.token_hex(self.big_marker // 2)[: self.big_marker - 4]
        self.write_state(spec, big)
        assert vault.backup(CELL).ok
        self.write_state(spec, "after")
        # Restored into a folder, the dump is kept as the archive holds it and loads nowhere.
        into = kit.root / "elsewhere"
        report = vault.restore("latest", cells=CELL, into=into)
        assert report.ok, [(c.stage, c.error) for c in report.cells]
        assert self.read_state(spec) == "after"
        kept = into / f"{CELL}.dumps" / name
        descriptor = json.loads((kept / DESCRIPTOR).read_text())
        assert descriptor["ok"] is True
        records = descriptor["files"].values()
        total = sum(r["size"] for r in records)
        assert total > self.part_size, f"raise big_marker: the dump is {total} bytes"
        for record in records:
            sizes = [(kept / part).stat().st_size for part in record["parts"]]
            assert sum(sizes) == record["size"]
            # A streamed file is cut into parts of part_size; a file of known size
            # (DumpContext.add_file) is one member, whatever its size.
            assert all(size == self.part_size for size in sizes[:-1])
        loaded = vault.restore("latest", cells=CELL)
        assert loaded.ok, [(c.stage, c.error) for c in loaded.cells]
        assert self.read_state(spec) == big

    def test_a_failing_dump_fails_its_cell_alone_with_a_clear_error_and_an_alert(
        self, kit: DumperKit, broken_spec: dict[str, Any] | None
    ) -> None:
        assert broken_spec is not None, "broken_spec gave None: give a spec, or do not override it"
        vault = kit.vault(broken_spec)
        (name,) = [d.name for d in vault.dumpers[CELL]]
        report = vault.backup()
        assert not report.ok
        by_cell = {c.cell: c for c in report.cells}
        assert by_cell["billing"].ok
        crm = by_cell[CELL]
        assert not crm.ok and crm.stage == "dump" and crm.error
        assert f"cell {CELL}, dumper {name}" in crm.error
        (failure,) = [f for f in kit.alerts.failures if f.cell == CELL]
        assert failure.stage == "dump" and failure.error == crm.error
        assert vault.list(CELL) == []  # nothing committed
        assert not list((kit.root / "backup" / CELL).glob("*.tar.*"))
        for secret in self.secrets_of(broken_spec):
            assert secret not in crm.error
            assert secret not in kit.run_logs()

    def test_a_failing_load_leaves_files_and_data_untouched(
        self,
        kit: DumperKit,
        spec: dict[str, Any],
        load_failure_options: dict[str, Any] | None,
    ) -> None:
        assert load_failure_options is not None, (
            "load_failure_options gave None: give options, or do not override it"
        )
        vault = kit.vault(spec)
        (name,) = [d.name for d in vault.dumpers[CELL]]
        self.write_state(spec, "backed-up")
        assert vault.backup(CELL).ok
        self.write_state(spec, "now")
        (kit.crm / "config.yaml").write_text("changed after the backup\n")
        report = vault.restore("latest", cells=CELL, dump_options={name: load_failure_options})
        assert not report.ok
        (cell,) = report.cells
        assert cell.stage == "load" and f"dumper {name}" in (cell.error or "")
        assert (kit.crm / "config.yaml").read_text() == "changed after the backup\n"
        assert self.read_state(spec) == "now"
        assert any(f.operation == "restore" and f.cell == CELL for f in kit.alerts.failures)

    def test_secrets_stay_out_of_argv_logs_errors_and_the_descriptor(
        self,
        kit: DumperKit,
        spec: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        found = self.secrets_of(spec)
        assert found, "spec carries no secret: set spec_has_secret = False in the subclass"
        started: list[list[str]] = []
        real = subprocess.Popen

        def spy(argv: Any, *args: Any, **kwargs: Any) -> Any:
            started.append([str(a) for a in ([argv] if isinstance(argv, str | bytes) else argv)])
            return real(argv, *args, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", spy)
        caplog.set_level("DEBUG")
        vault = kit.vault(spec)
        (dumper,) = vault.dumpers[CELL]
        self.write_state(spec, "secret")
        assert vault.backup(CELL).ok
        self.write_state(spec, "other")
        assert vault.restore("latest", cells=CELL).ok
        assert self.read_state(spec) == "secret"
        assert vault.restore("latest", cells=CELL, into=kit.root / "elsewhere").ok
        descriptor = kit.root / "elsewhere" / f"{CELL}.dumps" / dumper.name / DESCRIPTOR
        for secret in found:
            assert secret not in repr(dumper) and secret not in json.dumps(dumper.describe())
            assert secret not in descriptor.read_text()
            assert not [argv for argv in started if any(secret in a for a in argv)]
            assert secret not in caplog.text
            assert secret not in kit.run_logs()


def _members(archive: Path) -> dict[str, bytes]:
    """Every regular member of a committed ``.tar.zst`` archive, by name (as zstd and tar read it)."""
    out: dict[str, bytes] = {}
    with (
        open(archive, "rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        for info in tar:
            f = tar.extractfile(info)
            out[info.name] = f.read() if f is not None else b""
    return out
