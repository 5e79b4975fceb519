"""Signed sidecars: a forged, re-signed or stripped archive is refused before it is read.

Every case runs on a real local target: archives are backed up with a site
key, then an attacker's hand changes what is stored (a swapped archive and
sidecar pair, a sidecar signed by another key, an altered field, a stripped
signature), and restore, every verify level and the listing are asked to use
it. Nothing of a refused archive may be extracted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cellvault import ArchiveCorrupt, ConfigError, Sidecar, Vault
from cellvault.archive import canonical_json
from cellvault.cli import cli
from cellvault.errors import SignatureError
from cellvault.signing import (
    DOMAIN,
    SigningKeys,
    generate_keypair,
    key_id,
    load_private_key,
    parse_public_key,
    public_key_text,
)
from tests.system_tools import import_module

from .archive_helpers import TickingClock, make_vault

UTC = dt.UTC


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Two key pairs: the site's, and an attacker's."""
    (tmp_path / "keys").mkdir()
    site = generate_keypair(tmp_path / "keys" / "site.key")
    other = generate_keypair(tmp_path / "keys" / "other.key")
    return {"site": site.private, "other": other.private}


class Site:
    """One cell backed up (full, then incremental) with the site key into a local target."""

    def __init__(self, tmp: Path, key: Path) -> None:
        self.tmp = tmp
        self.key = key
        self.cell = tmp / "cells" / "crm"
        self.cell.mkdir(parents=True)
        (self.cell / "a.txt").write_text("first\n")
        self.backup = tmp / "backup"
        vault = self.vault(signing_key=key)
        self.full = vault.backup(kind="full").cells[0].archive
        (self.cell / "b.txt").write_text("second\n")
        self.incr = vault.backup(kind="incremental").cells[0].archive

    def vault(self, **config: Any) -> Vault:
        return make_vault(
            self.backup,
            [self.cell],
            clock=TickingClock(dt.datetime(2025, 1, 1, 2, 0, tzinfo=UTC)),
            **config,
        )

    def checker(self, **config: Any) -> Vault:
        """A vault that trusts the site key's public half alone (as a restoring site would)."""
        public = (self.key.parent / (self.key.name + ".pub")).read_text().strip()
        return self.vault(verify_keys=[public], **config)

    def sidecar_path(self, ident: str) -> Path:
        return self.backup / "crm" / f"{ident}.json"

    def body(self, ident: str) -> dict[str, Any]:
        return dict(json.loads(self.sidecar_path(ident).read_bytes()))

    def write(self, ident: str, body: dict[str, Any]) -> None:
        self.sidecar_path(ident).write_text(json.dumps(body, indent=2, sort_keys=True))


def test_a_backup_signs_its_sidecar_over_every_field(tmp_path: Path, keys: dict[str, Path]) -> None:
    site = Site(tmp_path, keys["site"])
    body = site.body(site.full)
    sig = body.pop("signature")
    public = load_private_key(keys["site"]).public_key()
    assert sig["alg"] == "ed25519" and sig["key"] == key_id(public)
    # The manifest copy's digest is in the signed body, and the signature covers it all.
    assert len(body["manifest_sha256"]) == 64
    import base64

    public.verify(base64.b64decode(sig["sig"]), DOMAIN + canonical_json(body))
    sidecar = Sidecar.from_json(site.sidecar_path(site.full).read_bytes(), name=site.full)
    assert SigningKeys(trusted={key_id(public): public}).check(sidecar) == "signed"
    # Round trip: what is written again is what was read.
    assert json.loads(sidecar.to_json()) == json.loads(site.sidecar_path(site.full).read_bytes())


def test_signed_archives_restore_and_verify_at_every_level(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    site = Site(tmp_path, keys["site"])
    vault = site.checker(require_signed=True)
    for level in ("quick", "read", "full", "drill"):
        report = vault.verify(level=level, all_archives=level != "drill")
        assert report.ok, (level, report)
    restored = vault.restore(into=tmp_path / "out", skip_prebackup=True)
    assert restored.ok
    assert (tmp_path / "out" / "crm" / "crm" / "b.txt").read_text() == "second\n"


def _refused_everywhere(site: Site, tmp_path: Path, ident: str, needle: str) -> None:
    """Restore of *ident* fails naming it and *needle*, nothing extracted; every level fails it."""
    vault = site.checker()
    out = tmp_path / "out"
    with pytest.raises(ArchiveCorrupt) as info:
        vault.restore(ident, into=out, skip_prebackup=True)
    assert ident in str(info.value) and needle in str(info.value), info.value
    assert info.value.hint
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    for level in ("quick", "read", "full"):
        report = vault.verify(level=level, select=ident)
        failed = [r for r in report.results if not r.ok]
        assert failed and any(ident == r.archive and needle in (r.error or "") for r in failed), (
            level,
            report,
        )
        assert not report.ok


def test_a_swapped_archive_and_sidecar_pair_is_refused(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    site = Site(tmp_path, keys["site"])
    # The attacker's own backup of other content, signed by their key, put in place of the full.
    evil = Site(tmp_path / "evil", keys["other"])
    for suffix in (".tar.zst", ".manifest.json.zst", ".json"):
        src = evil.backup / "crm" / f"{evil.full}{suffix}"
        shutil.copyfile(src, site.backup / "crm" / f"{site.full}{suffix}")
    _refused_everywhere(site, tmp_path, site.full, "not a trusted key")


def test_a_sidecar_signed_by_an_unknown_key_is_refused(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    site = Site(tmp_path, keys["site"])
    body = site.body(site.full)
    del body["signature"]
    forged = SigningKeys(signer=load_private_key(keys["other"])).sign(
        Sidecar.from_json(json.dumps(body).encode(), name=site.full)
    )
    site.sidecar_path(site.full).write_bytes(forged.to_json())
    _refused_everywhere(site, tmp_path, site.full, "not a trusted key")


def test_an_altered_signed_field_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    site = Site(tmp_path, keys["site"])
    body = site.body(site.full)
    body["reason"] = "demo"  # any field, even one nothing else checks
    site.write(site.full, body)
    _refused_everywhere(site, tmp_path, site.full, "does not match the sidecar")


def test_a_replaced_manifest_copy_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    site = Site(tmp_path, keys["site"])
    mine = site.backup / "crm" / f"{site.incr}.manifest.json.zst"
    shutil.copyfile(site.backup / "crm" / f"{site.full}.manifest.json.zst", mine)
    with pytest.raises(ArchiveCorrupt, match="manifest copy does not match"):
        site.checker().restore(site.incr, into=tmp_path / "out", skip_prebackup=True)


def test_verify_fails_each_refused_sidecar_once_where_its_archive_falls(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    """A refused newest archive fails first (the newest trusted one is still checked); an older after."""
    site = Site(tmp_path, keys["site"])
    signed = site.body(site.incr)
    stripped = dict(signed)
    del stripped["signature"]
    site.write(site.incr, stripped)
    vault = site.checker(require_signed=True)

    def outcome(**options: Any) -> list[tuple[str, bool]]:
        report = vault.verify(level="quick", **options)
        assert all("not signed" in (r.error or "") for r in report.results if not r.ok)
        assert {r.level for r in report.results} == {"quick"}
        return [(r.archive, r.ok) for r in report.results]

    assert outcome() == [(site.incr, False), (site.full, True)]
    assert outcome(all_archives=True) == [(site.incr, False), (site.full, True)]
    assert outcome(select=site.incr) == [(site.incr, False)]
    assert outcome(select=site.full) == [(site.full, True), (site.incr, False)]
    # A selector of both (the day's stamps): the refused newer one first, as with the newest.
    assert outcome(select="20250101", all_archives=True) == [
        (site.incr, False),
        (site.full, True),
    ]
    # A damaged record listed after the refused one is named too.
    (site.backup / "crm" / "cell_crm_20250102_000000.json").write_bytes(b"{")
    report = vault.verify(level="quick")
    assert [(r.archive, r.ok) for r in report.results] == [
        (site.incr, False),
        (site.full, True),
        ("cell_crm_20250102_000000", False),
    ]
    (site.backup / "crm" / "cell_crm_20250102_000000.json").unlink()
    site.write(site.incr, signed)
    body = site.body(site.full)
    del body["signature"]
    site.write(site.full, body)
    report = vault.verify(level="quick")
    assert [(r.archive, r.ok) for r in report.results] == [(site.incr, False), (site.full, False)]
    assert f"its chain needs archive {site.full}" in (report.results[0].error or "")
    assert "not signed" in (report.results[1].error or "")


def test_a_stripped_signature_warns_or_is_refused_when_required(
    tmp_path: Path, keys: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    site = Site(tmp_path, keys["site"])
    body = site.body(site.incr)
    del body["signature"]
    site.write(site.incr, body)
    # Required: refused, naming what to do.
    vault = site.checker(require_signed=True)
    with pytest.raises(SignatureError, match="not signed") as info:
        vault.restore(site.incr, into=tmp_path / "strict", skip_prebackup=True)
    assert "BACKUP_REQUIRE_SIGNED" in str(info.value) and site.incr in str(info.value)
    assert not (tmp_path / "strict").exists()
    assert not vault.verify(level="quick", select=site.incr).ok
    # Not required: restored, with a warning naming the archive.
    caplog.set_level(logging.WARNING, logger="cellvault")
    report = site.checker().restore(site.incr, into=tmp_path / "lax", skip_prebackup=True)
    assert report.ok
    assert any(
        "archive.unsigned" in r.getMessage() and site.incr in r.getMessage() for r in caplog.records
    )


def test_unsigned_archives_from_before_signing_still_restore(tmp_path: Path) -> None:
    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    (cell / "old.txt").write_text("old\n")
    old = make_vault(tmp_path / "backup", [cell])
    ident = old.backup(kind="full").cells[0].archive
    assert "signature" not in json.loads(
        (tmp_path / "backup" / "crm" / f"{ident}.json").read_text()
    )
    pair = generate_keypair(tmp_path / "site.key")
    new = make_vault(tmp_path / "backup", [cell], signing_key=pair.private)
    assert new.restore(into=tmp_path / "out", skip_prebackup=True).ok
    assert new.verify(level="full").ok
    strict = make_vault(tmp_path / "backup", [cell], signing_key=pair.private, require_signed=True)
    assert not strict.verify(level="read").ok


def test_key_parsing_and_configuration_errors(tmp_path: Path, keys: dict[str, Path]) -> None:
    public = load_private_key(keys["site"]).public_key()
    text = public_key_text(public)
    assert key_id(parse_public_key(text)) == key_id(public)
    from cryptography.hazmat.primitives import serialization

    ssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert key_id(parse_public_key(ssh.decode() + " ops@site")) == key_id(public)
    for bad in ("ed25519:notbase64!", "ssh-rsa AAAA", "hello"):
        with pytest.raises(ConfigError, match="not an Ed25519 public key"):
            parse_public_key(bad)
    with pytest.raises(ConfigError, match="no key to check signatures"):
        SigningKeys.load(require=True)
    (tmp_path / "junk.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
    with pytest.raises(ConfigError) as info:
        SigningKeys.load(signing_key=tmp_path / "junk.key")
    assert "not a key" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read the signing key"):
        SigningKeys.load(signing_key=tmp_path / "absent.key")
    listed = tmp_path / "trusted.pub"
    listed.write_text(f"# the primary\n{text}\n\n{ssh.decode()} dr\n")
    assert set(SigningKeys.load(verify_keys=[str(listed)]).trusted) == {key_id(public)}
    with pytest.raises(ConfigError, match="cannot read the public keys file"):
        SigningKeys.load(verify_keys=[str(tmp_path / "absent.pub")])


def test_keygen_command_writes_a_private_pair_and_never_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "site.key"
    result = runner.invoke(cli, ["keygen", str(key), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["public_key"].startswith("ed25519:")
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "site.key.pub").read_text().strip() == out["public_key"]
    again = runner.invoke(cli, ["keygen", str(key)])
    assert again.exit_code == 2 and "exists already" in again.output
    assert "Traceback" not in again.output


def test_env_configuration_of_signing(tmp_path: Path, keys: dict[str, Path]) -> None:
    from cellvault import load_env

    public = (keys["site"].parent / "site.key.pub").read_text().strip()
    config = load_env(
        {
            "BACKUP_DIR": str(tmp_path / "b"),
            "BACKUP_SIGNING_KEY": str(keys["site"]),
            "BACKUP_VERIFY_KEYS": f"{public}, {public}",
            "BACKUP_REQUIRE_SIGNED": "1",
        }
    )
    assert config.signing_key == keys["site"] and config.require_signed
    assert config.verify_keys == (public, public)


def test_the_signing_key_never_reaches_a_run_log_or_an_alert(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    from cellvault import hookimpl
    from cellvault.log import redact_text

    pem = keys["site"].read_text()
    secret_lines = [line for line in pem.splitlines() if "-----" not in line]
    assert secret_lines
    assert not any(line in redact_text(f"tool said: {pem} and more") for line in secret_lines)
    # Cut short (no END line): masked to the end all the same.
    assert secret_lines[0] not in redact_text(pem[: len(pem) // 2])

    class Leaky:
        """A hook whose error quotes the key file (a tool that echoes its input)."""

        @hookimpl
        def cellvault_before_backup(self, cell: Any, archive: str) -> None:
            raise RuntimeError(f"could not sign with {pem}")

    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    (cell / "a.txt").write_text("a\n")
    alerts = tmp_path / "alerts.jsonl"
    from cellvault import Cell, Config

    vault = Vault(
        Config(
            backup_dir=tmp_path / "backup",
            cells=[Cell("crm", [cell])],
            signing_key=keys["site"],
            extra={"BACKUP_ALERT_LOG": str(alerts)},
        ),
        load_entry_points=False,
        plugins=[Leaky()],
    )
    report = vault.backup(kind="full")
    assert not report.ok
    written = alerts.read_text() + "".join(
        p.read_text() for p in (tmp_path / "backup" / "logs").iterdir()
    )
    assert "could not sign with" in written
    assert not any(line in written for line in secret_lines)
    assert "error" in json.dumps(report.to_dict())
    assert not any(line in json.dumps(report.to_dict()) for line in secret_lines)


def test_encrypted_signed_archives_rekeyed_stay_signed_and_checked(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    pyrage = import_module("pyrage", "'cellvault[crypt]'")
    old, new = (pyrage.x25519.Identity.generate() for _ in range(2))
    for name, identity in (("old", old), ("new", new)):
        (tmp_path / f"{name}.age").write_text(f"{identity}\n")
    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    (cell / "a.txt").write_text("a\n")
    clock = TickingClock(dt.datetime(2025, 1, 1, 2, 0, tzinfo=UTC))

    def vault(recipient: Any, identity: str, **config: Any) -> Vault:
        return make_vault(
            tmp_path / "backup",
            [cell],
            clock=clock,
            encrypt_recipients=[str(recipient.to_public())],
            age_identity=tmp_path / f"{identity}.age",
            signing_key=keys["site"],
            **config,
        )

    full = vault(old, "old").backup(kind="full").cells[0].archive
    sidecar = tmp_path / "backup" / "crm" / f"{full}.json"
    body = json.loads(sidecar.read_text())
    assert "encryption" in body and "signature" in body  # the encryption field is signed too
    assert vault(new, "old").rekey().ok
    again = json.loads(sidecar.read_text())
    assert again["signature"] != body["signature"] and again["sha256"] != body["sha256"]
    checker = vault(new, "new", require_signed=True)
    assert checker.verify(level="full").ok
    assert checker.restore(into=tmp_path / "out", skip_prebackup=True).ok
    # Pointing the signed sidecar at the old recipients is a change the signature refuses.
    again["encryption"]["recipients"] = body["encryption"]["recipients"]
    sidecar.write_text(json.dumps(again))
    assert not checker.verify(level="quick").ok


def test_the_format_page_s_hand_check_of_a_signature_runs_as_written(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    import re
    import subprocess
    import sys

    page = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    script = re.search(r"python3 - (\S+) (\S+) <<'PY'\n(.*?)\nPY\n", page, re.S)
    assert script is not None
    site = Site(tmp_path, keys["site"])
    pub = keys["site"].parent / "site.key.pub"

    def check(sidecar: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-", str(sidecar), str(pub)],
            input=script[3],
            capture_output=True,
            text=True,
            check=False,
        )

    good = check(site.sidecar_path(site.full))
    assert good.returncode == 0 and good.stdout.strip() == "signature ok", good.stderr
    body = site.body(site.full)
    body["size"] += 1
    site.write(site.full, body)
    bad = check(site.sidecar_path(site.full))
    assert bad.returncode != 0 and "InvalidSignature" in bad.stderr


def test_the_command_line_refuses_a_forged_archive_without_a_traceback(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    site = Site(tmp_path, keys["site"])
    body = site.body(site.incr)
    body["files"] += 1
    site.write(site.incr, body)
    public = (keys["site"].parent / "site.key.pub").read_text().strip()
    env = {
        "BACKUP_DIR": str(site.backup),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELL_CRM_PATHS": str(site.cell),
        "BACKUP_VERIFY_KEYS": public,
    }
    runner = CliRunner()
    out = tmp_path / "out"
    restored = runner.invoke(
        cli, ["restore", "--date", site.incr, "--into", str(out), "--skip-prebackup"], env=env
    )
    assert restored.exit_code == 1, restored.output
    assert f"archive {site.incr}" in restored.output and "does not match" in restored.output
    assert "Traceback" not in restored.output
    assert not out.exists() or not any(out.rglob("*"))
    verified = runner.invoke(cli, ["verify", "--level", "quick"], env=env)
    assert verified.exit_code == 1, verified.output
    assert site.incr in verified.output
