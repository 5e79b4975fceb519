"""Encryption at rest with age (cellvault.crypt): nothing in clear on a target, stock tools restore.

Real keys (pyrage, ssh-keygen), real files, the real ``age``, ``zstd`` and
``tar`` programs, moto's S3. Without a tool the test is skipped, except on CI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cellvault import Cell, Config, TargetSpec
from cellvault.crypt import Keyring, fingerprint, parse_recipients
from cellvault.errors import ArchiveCorrupt, ConfigError, KeyMissing
from cellvault.hookspecs import hookimpl
from cellvault.log import redact_text
from tests.helpers import clock, make_vault, write_tree
from tests.servers.fixtures import S3Bucket
from tests.system_tools import import_module, require

pyrage = import_module("pyrage", "'cellvault[crypt]'")

#: Known plaintext, in a cell file and in a dump: random and larger than a zstd block,
#: so that a plain archive holds its middle verbatim (the search is shown to find it there).
FILE_MARK = random.Random(19).randbytes(300_000)
DUMP_MARK = random.Random(20).randbytes(300_000)
#: What is searched for: slices of both (a zstd block header may split one of them).
MARKS = [m[i : i + 48] for m in (FILE_MARK, DUMP_MARK) for i in (10_000, 100_000, 200_000)]


class Key:
    """An age X25519 key pair, its identity in a file."""

    def __init__(self, folder: Path, name: str) -> None:
        identity = pyrage.x25519.Identity.generate()
        self.recipient = str(identity.to_public())
        self.secret = str(identity)
        self.path = folder / f"{name}.key"
        self.path.write_text(f"# {name}\n{self.secret}\n")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Key, Key]:
    folder = tmp_path / "keys"
    folder.mkdir()
    return Key(folder, "old"), Key(folder, "new")


def _cell(tmp_path: Path) -> Cell:
    crm = tmp_path / "cells" / "crm"
    if not crm.exists():
        files = {"config.yaml": "service: crm\n", "db/ledger.db": FILE_MARK, "notes.txt": "n\n"}
        write_tree(crm, files)
    dumper = {
        "type": "command",
        "name": "ledger",
        "command": [
            sys.executable,
            "-c",
            "import random, sys; sys.stdout.buffer.write(random.Random(20).randbytes(300_000))",
        ],
        "restore_command": [sys.executable, "-c", "import sys; sys.stdin.buffer.read()"],
    }
    return Cell("crm", [crm], dumpers=[dumper])


def _vault(tmp_path: Path, recipients: Sequence[str], **kwargs: Any) -> Any:
    kwargs.setdefault("clock", clock())
    return make_vault(
        tmp_path / "backup",
        [_cell(tmp_path)],
        encrypt_recipients=tuple(recipients),
        extra={"BACKUP_ALERT_LOG": "off"},
        **kwargs,
    )


def _stored(root: Path) -> dict[str, bytes]:
    """Every object a local target holds (its own bookkeeping folder aside)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cellvault" not in p.parts and "logs" not in p.parts
    }


def _no_plaintext(objects: dict[str, bytes]) -> None:
    assert any(k.endswith(".tar.zst.age") for k in objects), sorted(objects)
    for key, data in objects.items():
        for mark in MARKS:
            assert mark not in data, f"{mark!r} in clear in {key}"


def test_nothing_is_in_clear_on_a_local_target(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    vault = _vault(tmp_path, [keys[0].recipient])
    assert vault.backup().ok
    (tmp_path / "cells" / "crm" / "notes.txt").write_text("changed\n")
    report = vault.backup(kind="incremental")
    assert report.ok and report.cells[0].kind == "incremental"  # the host kept the manifest
    objects = _stored(tmp_path / "backup")
    _no_plaintext(objects)
    sidecar = json.loads(next(v for k, v in objects.items() if k.endswith("020000.json")))
    assert sidecar["data"].endswith(".tar.zst.age")
    assert sidecar["encryption"] == {"scheme": "age", "recipients": [keys[0].recipient]}
    stored = next(v for k, v in objects.items() if k.endswith("020000.tar.zst.age"))
    assert sidecar["size"] == len(stored)
    assert sidecar["sha256"] == hashlib.sha256(stored).hexdigest()
    assert stored.startswith(b"age-encryption.org/v1\n")


def test_nothing_is_in_clear_on_s3(
    tmp_path: Path, keys: tuple[Key, Key], s3_bucket: S3Bucket
) -> None:
    spec = TargetSpec("s3", f"{s3_bucket.url}/backups", s3_bucket.storage_options)
    vault = _vault(tmp_path, [keys[0].recipient], targets=[spec])
    assert vault.backup().ok
    objects = s3_bucket.objects()
    _no_plaintext({k: v for k, v in objects.items() if "/crm/" in k})
    assert vault.verify(level="read").ok  # digests of the ciphertext, without a key
    keyed = _vault(tmp_path, [keys[0].recipient], targets=[spec], age_identity=keys[0].path)
    assert keyed.verify(level="full").ok  # decrypted from S3 as it streams
    assert keyed.restore(into=tmp_path / "out", skip_prebackup=True).ok
    assert (tmp_path / "out" / "crm" / "crm" / "db" / "ledger.db").read_bytes() == FILE_MARK


def test_stock_age_zstd_tar_restore_an_archive(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    require("age")
    require("zstd")
    require("tar")
    vault = _vault(tmp_path, [keys[0].recipient])
    report = vault.backup()
    assert report.ok
    (archive,) = (tmp_path / "backup" / "crm").glob("*.tar.zst.age")
    out = tmp_path / "out"
    out.mkdir()
    # age -d -i key.txt X.tar.zst.age | zstd -d | tar -x
    age = subprocess.Popen(
        [shutil.which("age") or "age", "-d", "-i", str(keys[0].path), str(archive)],
        stdout=subprocess.PIPE,
    )
    assert age.stdout is not None
    unzstd = subprocess.Popen(
        [shutil.which("zstd") or "zstd", "-d", "-q"], stdin=age.stdout, stdout=subprocess.PIPE
    )
    age.stdout.close()
    assert unzstd.stdout is not None
    untar = subprocess.run(
        [shutil.which("tar") or "tar", "-x", "-f", "-", "-C", str(out)],
        stdin=unzstd.stdout,
        capture_output=True,
        check=False,
    )
    unzstd.stdout.close()
    assert age.wait(60) == 0 and unzstd.wait(60) == 0
    assert untar.returncode == 0, untar.stderr
    assert (out / "data" / "crm" / "db" / "ledger.db").read_bytes() == FILE_MARK
    assert DUMP_MARK in b"".join(p.read_bytes() for p in (out / "dumps").rglob("*") if p.is_file())


def test_restore_verify_and_drill_with_the_identity(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    vault = _vault(tmp_path, [keys[0].recipient], age_identity=keys[0].path)
    assert vault.backup().ok
    (tmp_path / "cells" / "crm" / "notes.txt").write_text("second\n")
    assert vault.backup(kind="incremental").ok
    for level in ("quick", "read", "full", "drill"):
        report = vault.verify(level=level)
        assert report.ok, (level, [r.error for r in report.results])
    read = vault.verify(level="read").results[0].checks
    assert "decompress" in read and "manifest" in read
    out = vault.restore(into=tmp_path / "out", skip_prebackup=True)
    assert out.ok
    assert (tmp_path / "out" / "crm" / "crm" / "db" / "ledger.db").read_bytes() == FILE_MARK
    assert (tmp_path / "out" / "crm" / "crm" / "notes.txt").read_text() == "second\n"
    _point, entries = vault.ls("crm")
    assert "crm/notes.txt" in {e.path for e in entries}


def test_without_an_identity_quick_and_read_work_the_rest_is_refused(
    tmp_path: Path, keys: tuple[Key, Key]
) -> None:
    vault = _vault(tmp_path, [keys[0].recipient])
    assert vault.backup().ok
    quick = vault.verify(level="quick")
    read = vault.verify(level="read")
    assert quick.ok and read.ok
    assert read.results[0].checks[:3] == ("size", "sha256", "sealed")
    with pytest.raises(KeyMissing) as full:
        vault.verify(level="full")
    assert "cell_crm_20250101_020000" in str(full.value) and keys[0].recipient in str(full.value)
    drill = vault.verify(level="drill")
    assert not drill.ok and "no identity is given" in (drill.results[0].error or "")
    live = tmp_path / "cells" / "crm" / "notes.txt"
    live.write_text("live\n")
    with pytest.raises(KeyMissing, match="BACKUP_AGE_IDENTITY"):
        vault.restore(skip_prebackup=True)
    assert live.read_text() == "live\n"  # nothing touched
    assert len(list((tmp_path / "backup" / "crm").glob("*.json"))) == 1  # no safety backup


def test_without_an_identity_read_compares_the_sealed_manifest_copy_and_the_chain(
    tmp_path: Path, keys: tuple[Key, Key], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyless host's check after backup: the sealed manifest copy stored is the one written."""
    from cellvault.targets.local import LocalTarget

    vault = _vault(tmp_path, [keys[0].recipient])
    assert vault.backup().ok
    (tmp_path / "cells" / "crm" / "notes.txt").write_text("second\n")
    original = LocalTarget.put_file

    def damaging(self: LocalTarget, local: Path, key: str) -> None:
        original(self, local, key)
        if key.endswith(".manifest.json.zst"):
            stored = tmp_path / "backup" / key
            stored.unlink()  # a local target may hard-link the spool's file: an inode of its own
            stored.write_bytes(local.read_bytes() + b"\0")

    monkeypatch.setattr(LocalTarget, "put_file", damaging)
    report = vault.backup(kind="incremental")
    assert not report.ok
    (failed,) = report.cells[0].targets
    assert failed.stage == "verify"
    assert ": the stored manifest copy differs from the one written (" in (failed.error or "")
    monkeypatch.undo()
    inc = vault.backup(kind="incremental")
    assert inc.ok and inc.cells[0].kind == "incremental"
    read = vault.verify(level="read", all_archives=True)
    sealed = ("size", "sha256", "sealed", "chain")
    assert [r.checks for r in read.results] == [sealed, (*sealed, "chain-digest")]
    full, newest = sorted((tmp_path / "backup" / "crm").glob("cell_*.manifest.json.zst"))
    # A manifest copy gone, or the full archive the incremental needs: refused without a key.
    newest.rename(tmp_path / "newest")
    (result,) = vault.verify(level="read").results
    assert not result.ok
    assert (result.error or "").startswith(
        f"archive {newest.name.removesuffix('.manifest.json.zst')}, on target local: "
        "manifest copy is missing ("
    ), result.error
    (tmp_path / "newest").rename(newest)
    sidecar = full.with_name(full.name.replace(".manifest.json.zst", ".json"))
    sidecar.unlink()
    (result,) = vault.verify(level="read").results
    assert not result.ok
    assert f"its chain needs archive {sidecar.stem}" in (result.error or "")


def test_a_wrong_identity_is_named_with_the_key_needed(
    tmp_path: Path, keys: tuple[Key, Key]
) -> None:
    old, new = keys
    assert _vault(tmp_path, [old.recipient]).backup().ok
    wrong = _vault(tmp_path, [old.recipient], age_identity=new.path)
    with pytest.raises(KeyMissing) as exc:
        wrong.restore(into=tmp_path / "out", skip_prebackup=True)
    text = str(exc.value)
    assert "cell_crm_20250101_020000" in text and old.recipient in text
    assert "none of the identities given matches" in text
    assert new.secret not in text and old.secret not in text
    assert not (tmp_path / "out").exists()


def test_a_mixed_chain_needs_every_identity(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    old, new = keys
    ticks = clock()
    assert _vault(tmp_path, [old.recipient], clock=ticks).backup().ok
    (tmp_path / "cells" / "crm" / "notes.txt").write_text("rotated\n")
    # The recipients rotated: the new incremental is sealed to the new key only.
    inc = _vault(tmp_path, [new.recipient], clock=ticks).backup(kind="incremental")
    assert inc.ok and inc.cells[0].kind == "incremental"
    full_id, inc_id = "cell_crm_20250101_020000", inc.cells[0].archive or ""
    only_new = _vault(tmp_path, [new.recipient], age_identity=new.path)
    with pytest.raises(KeyMissing) as exc:
        only_new.restore(into=tmp_path / "a", skip_prebackup=True)
    assert full_id in str(exc.value) and old.recipient in str(exc.value)
    only_old = _vault(tmp_path, [new.recipient], age_identity=old.path)
    with pytest.raises(KeyMissing) as exc:
        only_old.restore(into=tmp_path / "a", skip_prebackup=True)
    assert inc_id in str(exc.value) and new.recipient in str(exc.value)
    both = tmp_path / "both.key"
    both.write_text(old.path.read_text() + new.path.read_text())
    report = _vault(tmp_path, [new.recipient], age_identity=both).restore(
        into=tmp_path / "a", skip_prebackup=True
    )
    assert report.ok
    assert (tmp_path / "a" / "crm" / "crm" / "notes.txt").read_text() == "rotated\n"


def _reseal_truncated(backup: Path) -> None:
    """Cut the sealed data in half and rewrite its sidecar to match (a forger's pair)."""
    (data,) = (backup / "crm").glob("*.tar.zst.age")
    cut = data.read_bytes()[: data.stat().st_size // 2]
    data.write_bytes(cut)
    (side,) = (backup / "crm").glob("cell_*.json")
    body = json.loads(side.read_text())
    body.update(size=len(cut), sha256=hashlib.sha256(cut).hexdigest(), checksums={})
    side.write_text(json.dumps(body))


def test_a_truncated_ciphertext_is_refused(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    vault = _vault(tmp_path, [keys[0].recipient], age_identity=keys[0].path)
    assert vault.backup().ok
    (data,) = (tmp_path / "backup" / "crm").glob("*.tar.zst.age")
    data.write_bytes(data.read_bytes()[:-100])
    assert not vault.verify(level="quick").ok  # the size differs from the sidecar's
    with pytest.raises(ArchiveCorrupt, match="truncated or replaced"):
        vault.restore(into=tmp_path / "out", skip_prebackup=True)  # refused when planned
    assert not (tmp_path / "out").exists()
    _reseal_truncated(tmp_path / "backup")
    assert vault.verify(level="quick").ok  # the pair agrees: only decrypting tells
    read = vault.verify(level="read")
    assert not read.ok and "does not decompress" in (read.results[0].error or "")
    full = vault.verify(level="full")
    assert not full.ok and "age stream does not decrypt" in (full.results[0].error or "")
    report = vault.restore(into=tmp_path / "out", skip_prebackup=True)
    assert not report.ok
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.db"))


def test_ssh_recipients_and_identities(tmp_path: Path) -> None:
    require("ssh-keygen")
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", str(key)], check=True
    )
    public = (tmp_path / "id_ed25519.pub").read_text().strip()
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(key) + ".pub"], capture_output=True, text=True, check=True
    )
    assert fingerprint(public).split()[1] == listed.stdout.split()[1]  # SHA256:... as ssh-keygen
    vault = _vault(tmp_path, [public], age_identity=key)
    assert vault.backup().ok
    assert vault.verify(level="full").ok
    assert vault.restore(into=tmp_path / "out", skip_prebackup=True).ok


class SecretStore:
    """A secret-store plugin: hands out the identity through the hook."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0

    @hookimpl
    def cellvault_age_identities(self, config: Config) -> list[str]:
        self.calls += 1
        return [self.text]


def test_a_secret_store_plugin_supplies_the_identity(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    store = SecretStore(keys[0].path.read_text())
    vault = _vault(tmp_path, [keys[0].recipient], plugins=[store])
    assert vault.backup().ok
    assert store.calls == 0  # a backup needs no identity
    assert vault.restore(into=tmp_path / "out", skip_prebackup=True).ok
    assert vault.verify(level="full").ok
    assert store.calls == 1  # fetched once per vault


def test_bad_keys_are_config_errors_that_show_no_secret(
    tmp_path: Path, keys: tuple[Key, Key]
) -> None:
    with pytest.raises(ConfigError, match="recipient 2"):
        parse_recipients([keys[0].recipient, "age1notakey"], "BACKUP_ENCRYPT_RECIPIENTS")
    bad = tmp_path / "bad.key"
    bad.write_text(keys[0].secret[:-4] + "QQQQ\n")
    with pytest.raises(ConfigError) as exc:
        Keyring(files=(bad,)).identities()
    assert "line 1" in str(exc.value) and "AGE-SECRET-KEY-1" in str(exc.value)
    assert keys[0].secret[20:40] not in str(exc.value)
    assert redact_text(f"oops {keys[0].secret}") == "oops ***"
    with pytest.raises(ConfigError, match="cannot read the identity file"):
        Keyring(files=(tmp_path / "missing.key",)).identities()


def test_recipients_come_from_env_a_file_and_toml(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    from cellvault.config import load_env, load_toml

    listed = tmp_path / "recipients.txt"
    listed.write_text(f"# the DR site\n{keys[1].recipient}\n")
    env = {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_ENCRYPT_RECIPIENTS": f"{keys[0].recipient}, {keys[1].recipient}",
        "BACKUP_ENCRYPT_RECIPIENTS_FILE": str(listed),
        "BACKUP_AGE_IDENTITY": str(keys[0].path),
    }
    config = load_env(env)
    assert config.encrypt_recipients == (keys[0].recipient, keys[1].recipient)
    assert config.encrypt_recipients_file == listed
    assert config.age_identity == keys[0].path
    toml = tmp_path / "cellvault.toml"
    toml.write_text(
        f'backup_dir = "{tmp_path / "backup"}"\n'
        f'encrypt_recipients = ["{keys[0].recipient}"]\n'
        f'encrypt_recipients_file = "{listed}"\n'
        f'age_identity = "{keys[0].path}"\n'
    )
    assert load_toml(toml).encrypt_recipients == (keys[0].recipient,)
    from cellvault import Vault

    vault = Vault(config, load_entry_points=False)
    assert vault.recipients is not None
    assert vault.recipients.fingerprints == (keys[0].recipient, keys[1].recipient)


def test_the_ssh_public_key_of_a_private_key_is_read_in_clear(tmp_path: Path) -> None:
    require("ssh-keygen")
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ring = Keyring(files=(key,))
    assert len(ring.identities()[0]) == 1
    public = (tmp_path / "k.pub").read_text().split()
    blob = base64.b64decode(public[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert ring.known() == {f"ssh-ed25519 SHA256:{digest}"}


# -- rekey -------------------------------------------------------------------------------------


def test_rekey_moves_a_chain_to_the_new_key(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    old, new = keys
    ticks = clock()
    assert _vault(tmp_path, [old.recipient], clock=ticks).backup().ok
    (tmp_path / "cells" / "crm" / "notes.txt").write_text("second\n")
    assert _vault(tmp_path, [old.recipient], clock=ticks).backup(kind="incremental").ok
    folder = tmp_path / "backup" / "crm"
    before = sorted(p.name for p in folder.glob("*.age"))
    rotated = _vault(tmp_path, [new.recipient], age_identity=old.path)
    report = rotated.rekey(select="20250101", all_archives=True)
    assert report.ok and [r.outcome for r in report.results] == ["rekeyed", "rekeyed"]
    after = sorted(p.name for p in folder.glob("*.age"))
    assert after == [n.replace(".tar.zst.age", ".k1.tar.zst.age") for n in before]
    for side in folder.glob("cell_*.json"):
        body = json.loads(side.read_text())
        assert body["encryption"]["recipients"] == [new.recipient]
        assert body["data"].endswith(".k1.tar.zst.age")
    _no_plaintext(_stored(tmp_path / "backup"))
    # The old identity can go: the new one alone restores the chain and verifies it.
    only_new = _vault(tmp_path, [new.recipient], age_identity=new.path)
    assert only_new.verify(level="full", all_archives=True).ok
    assert only_new.restore(into=tmp_path / "out", skip_prebackup=True).ok
    assert (tmp_path / "out" / "crm" / "crm" / "notes.txt").read_text() == "second\n"
    again = only_new.rekey(all_archives=True, select="20250101")
    assert again.ok and {r.outcome for r in again.results} == {"current"}


def test_rekey_seals_an_archive_stored_in_the_clear(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    plain = make_vault(tmp_path / "backup", [_cell(tmp_path)], extra={"BACKUP_ALERT_LOG": "off"})
    assert plain.backup().ok
    clear = b"".join(_stored(tmp_path / "backup").values())
    assert (
        sum(mark in clear for mark in MARKS) >= 4
    )  # the search finds plain data  # the search finds it
    vault = _vault(tmp_path, [keys[0].recipient], age_identity=keys[0].path)
    report = vault.rekey()
    assert report.ok and report.results[0].data.endswith(".tar.zst.age")  # type: ignore[union-attr]
    objects = _stored(tmp_path / "backup")
    assert not any(k.endswith(".tar.zst") for k in objects)
    _no_plaintext(objects)
    assert vault.restore(into=tmp_path / "out", skip_prebackup=True).ok


def test_rekey_without_the_identity_fails_and_changes_nothing(
    tmp_path: Path, keys: tuple[Key, Key]
) -> None:
    old, new = keys
    assert _vault(tmp_path, [old.recipient]).backup().ok
    folder = tmp_path / "backup" / "crm"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    report = _vault(tmp_path, [new.recipient], age_identity=new.path).rekey()
    assert not report.ok
    assert old.recipient in (report.results[0].error or "")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_rekey_on_the_command_line(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    from click.testing import CliRunner

    from cellvault.cli import cli

    old, new = keys
    assert _vault(tmp_path, [old.recipient]).backup().ok
    env_file = tmp_path / "backup_config.env"
    env_file.write_text(
        f"BACKUP_DIR={tmp_path / 'backup'}\n"
        f"BACKUP_CELL_CRM_PATHS={tmp_path / 'cells' / 'crm'}\n"
        "BACKUP_CELLS=crm\n"
        f"BACKUP_ENCRYPT_RECIPIENTS={new.recipient}\n"
        f"BACKUP_AGE_IDENTITY={old.path}\n"
        "BACKUP_ALERT_LOG=off\n"
    )
    result = CliRunner().invoke(cli, ["--env-file", str(env_file), "rekey"])
    assert result.exit_code == 0, result.output
    assert "re-encrypted as cell_crm_20250101_020000.k1.tar.zst.age" in result.stdout
    assert old.secret not in result.output and new.secret not in result.output


def test_sync_copies_encrypted_archives_and_verifies_them_with_the_identity(
    tmp_path: Path, keys: tuple[Key, Key]
) -> None:
    from cellvault.dr import Site

    backup = tmp_path / "backup"
    storage = TargetSpec("nas", str(tmp_path / "storage"))
    where = [TargetSpec("local", str(backup)), storage]
    ticks = clock()
    keyless = _vault(tmp_path, [keys[0].recipient], targets=where, clock=ticks)
    assert keyless.backup(targets=["local"]).ok
    pushed = Site(keyless, "primary").push()
    assert pushed.ok and len(pushed.copied) == 1  # a host without the identity copies them
    _no_plaintext(_stored(tmp_path / "storage"))
    assert keyless.backup(targets=["local"]).ok
    refused = Site(keyless, "primary").push(verify=True)
    assert not refused.ok and keys[0].recipient in str(refused.to_dict())
    keyed = _vault(tmp_path, [keys[0].recipient], targets=where, age_identity=keys[0].path)
    checked = Site(keyed, "primary").push(verify=True)
    assert checked.ok and len(checked.copied) == 1, checked
    assert keyed.verify(level="full", targets=["nas"], all_archives=True).ok


def test_a_failed_encrypted_pack_leaves_no_thread_and_nothing_in_the_spool(
    tmp_path: Path, keys: tuple[Key, Key]
) -> None:
    import threading

    crm = write_tree(tmp_path / "cells" / "crm", {"a.bin": FILE_MARK})
    failing = {"type": "command", "name": "db", "command": [sys.executable, "-c", "exit(3)"]}
    vault = make_vault(
        tmp_path / "backup",
        [Cell("crm", [crm], dumpers=[failing])],
        encrypt_recipients=(keys[0].recipient,),
        extra={"BACKUP_ALERT_LOG": "off"},
        clock=clock(),
    )
    report = vault.backup()
    assert not report.ok and report.cells[0].stage == "dump"  # failed while packing
    assert not [t for t in threading.enumerate() if t.name == "cellvault-seal"]
    spool = tmp_path / "backup" / ".cellvault" / "spool"
    assert not [p for p in spool.rglob("*") if p.is_file()]
    assert not list((tmp_path / "backup").glob("crm/*.age"))


def test_a_sealed_stream_leaves_no_thread_read_whole_or_stopped_early(
    tmp_path: Path, keys: tuple[Key, Key]
) -> None:
    """Its decryption thread is stopped with it, whether it was read to the end or not."""
    import threading

    from cellvault.crypt import using
    from cellvault.extract import ArchiveStream

    def sealing() -> list[str]:
        return [
            t.name
            for t in threading.enumerate()
            if t.name in ("cellvault-age", "cellvault-decompress")
        ]

    vault = _vault(tmp_path, [keys[0].recipient])
    # More than a pipe holds: the thread is still writing when the reader stops.
    (tmp_path / "cells" / "crm" / "big.bin").write_bytes(random.Random(1).randbytes(4 << 20))
    assert vault.backup().ok
    target = vault.targets[0]
    (sidecar,) = target.archives("crm")
    with using(Keyring(files=(keys[0].path,))):
        with target.open_archive(sidecar) as raw:
            stream = ArchiveStream(raw, sidecar, target.name)
            names = [name for _, name, _ in stream.members()]
        assert "data/crm/notes.txt" in names and stream.meta is not None
        assert stream.digest_mismatch is None
        assert sealing() == []
        with target.open_archive(sidecar) as raw:
            stream = ArchiveStream(raw, sidecar, target.name)
            members = stream.members()
            next(members)
            members.close()
        assert sealing() == []
