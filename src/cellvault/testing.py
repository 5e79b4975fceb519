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

This module is also a pytest plugin (the ``pytest11`` entry point
``cellvault``, loaded by pytest wherever cellvault is installed; or
``pytest_plugins = ["cellvault.testing"]``): it adds the ``target_contract``
marker to every contract test, so ``pytest -m target_contract`` runs them
alone. It needs pytest, which cellvault itself does not depend on.

A package that adds a dumper type subclasses :class:`DumperContract` the same
way: a ``spec`` fixture (the options of a dumper of its type, against a real
source of its own), ``write_state`` and ``read_state`` (put a known state in
the source, read back which one it holds) and, optionally, a
``broken_spec`` fixture (the same type pointed at a source that is not
there). The built-in dumpers (sqlite, command, PostgreSQL, MariaDB, Redis)
run it in cellvault's own suite; ``pytest -m dumper_contract`` runs them alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pytest

from .cell import Cell
from .config import Config
from .dumpers.members import DESCRIPTOR, DUMPS_ROOT
from .errors import ConfigError, LockHeld
from .hookspecs import hookimpl
from .lock import Lease
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
        "markers", f"{MARKER}: a test of cellvault.testing's contract for plugin authors"
    )
    config.addinivalue_line(
        "markers", f"{DUMPER_MARKER}: a test of cellvault.testing's contract for dumper authors"
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

    def test_put_stream_writes_all_or_nothing(self, target: Target, payload: bytes) -> None:
        if not target.put_stream(f"{CELL}/stream.bin", io.BytesIO(payload)):
            pytest.skip(f"{type(target).__name__} writes no streams (put_stream says so)")
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


def _members(archive: Path) -> dict[str, bytes]:
    """Every regular member of a committed ``.tar.zst`` archive, by name (stock zstd + tar)."""
    import tarfile

    import zstandard

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


class DumperContract:
    """The contract every dumper type keeps; subclass it in a test module.

    Define:

    * a ``spec`` fixture: the dumper's table as a cell's configuration gives
      it (``{"type": ..., "name": ..., <options>}``), against a real source
      of the test's own (a scratch database, a file under ``tmp_path``);
    * :meth:`write_state` and :meth:`read_state`: put the state called
      *marker* into that source, and say which marker it holds now;
    * optionally a ``broken_spec`` fixture: the same type pointed at a source
      that does not answer (a closed port, a missing file); without it the
      failure test is skipped with that reason;
    * optionally :attr:`secret_option`: the name of an option whose value
      must never be written (default ``password``, used when *spec* has it).

    The tests back up a cell holding only the dumper through a real
    :class:`~cellvault.Vault` on a local target, restore it in place and
    ``--into``, and read the archive with zstandard and tarfile as stock
    tools would.
    """

    #: An option of *spec* whose value must reach no file, log or error.
    secret_option: str = "password"  # noqa: S105 - an option's name, not a password

    @pytest.fixture
    def spec(self) -> dict[str, Any]:
        """The dumper's options against a real source: override this fixture."""
        raise NotImplementedError("a DumperContract subclass must define a 'spec' fixture")

    @pytest.fixture
    def broken_spec(self) -> dict[str, Any] | None:
        """The same type pointed at a source that is not there (``None``: not tested)."""
        return None

    def write_state(self, spec: Mapping[str, Any], marker: str) -> None:
        """Put the state called *marker* into the source *spec* dumps."""
        raise NotImplementedError("a DumperContract subclass must define write_state")

    def read_state(self, spec: Mapping[str, Any]) -> str:
        """The marker of the state the source *spec* dumps holds now."""
        raise NotImplementedError("a DumperContract subclass must define read_state")

    @staticmethod
    def _vault(tmp_path: Path, spec: Mapping[str, Any]) -> Vault:
        cell = tmp_path / "cells" / CELL
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "config.yaml").write_text("service: crm\n")
        config = Config(
            backup_dir=tmp_path / "backup",
            cells=[Cell(CELL, [cell], dumpers=[dict(spec)])],
            extra={"BACKUP_ALERT_LOG": "off"},
        )
        return Vault(config, load_entry_points=False)

    def test_a_restore_in_place_brings_the_dumped_state_back(
        self, spec: dict[str, Any], tmp_path: Path
    ) -> None:
        self.write_state(spec, "before")
        vault = self._vault(tmp_path, spec)
        backup = vault.backup(kind="full")
        assert backup.ok, [(c.stage, c.error) for c in backup.cells]
        self.write_state(spec, "after")
        assert self.read_state(spec) == "after"
        restored = vault.restore("latest", cells=[CELL])
        assert restored.ok, [(c.stage, c.error) for c in restored.cells]
        assert self.read_state(spec) == "before"

    def test_the_dump_is_in_the_archive_with_its_descriptor(
        self, spec: dict[str, Any], tmp_path: Path
    ) -> None:
        self.write_state(spec, "archived")
        vault = self._vault(tmp_path, spec)
        assert vault.backup(kind="full").ok
        (data,) = sorted((tmp_path / "backup" / CELL).glob("*.tar.zst"))
        members = _members(data)
        prefix = f"{DUMPS_ROOT}/{spec['name']}/"
        mine = {n.removeprefix(prefix) for n in members if n.startswith(prefix)}
        assert DESCRIPTOR in mine, f"no {prefix}{DESCRIPTOR} in the archive"
        assert mine - {DESCRIPTOR}, "the dump wrote no file"
        descriptor = json.loads(members[prefix + DESCRIPTOR])
        assert descriptor["type"] == spec["type"]
        secret = spec.get(self.secret_option)
        if secret:
            blob = b"".join(members.values())
            assert str(secret).encode() not in blob, "a secret option reached the archive"

    def test_a_restore_into_keeps_the_dump_beside_and_loads_nothing(
        self, spec: dict[str, Any], tmp_path: Path
    ) -> None:
        self.write_state(spec, "before")
        vault = self._vault(tmp_path, spec)
        assert vault.backup(kind="full").ok
        self.write_state(spec, "live")
        restored = vault.restore("latest", cells=[CELL], into=tmp_path / "out")
        assert restored.ok, [(c.stage, c.error) for c in restored.cells]
        assert self.read_state(spec) == "live"
        kept = tmp_path / "out" / f"{CELL}.dumps" / spec["name"]
        assert (kept / DESCRIPTOR).is_file()

    def test_an_unknown_option_is_a_configuration_error(
        self, spec: dict[str, Any], tmp_path: Path
    ) -> None:
        with pytest.raises(ConfigError, match="no_such_option"):
            self._vault(tmp_path, {**spec, "no_such_option": "1"})

    def test_a_failing_dump_fails_the_cell_and_commits_nothing(
        self, broken_spec: dict[str, Any] | None, tmp_path: Path
    ) -> None:
        if broken_spec is None:
            pytest.skip("no broken_spec fixture: the failure of a dump is not tested")
        vault = self._vault(tmp_path, broken_spec)
        report = vault.backup(kind="full")
        assert not report.ok
        (cell,) = report.cells
        assert cell.error and broken_spec["name"] in cell.error
        secret = broken_spec.get(self.secret_option)
        if secret:
            assert str(secret) not in cell.error
        assert vault.list([CELL]) == []
        assert not list((tmp_path / "backup" / CELL).glob("*.tar.zst"))
