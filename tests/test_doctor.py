"""``cellvault doctor``: a healthy setup passes; each broken item fails on its own line alone."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cellvault import Cell, Config, TargetSpec, Vault, hookimpl
from cellvault.cli import cli
from cellvault.doctor import PROBE_PREFIX, Check, DoctorReport, run_checks
from tests.helpers import SAMPLE, write_tree
from tests.servers.fixtures import OssBucket, S3Bucket
from tests.servers.rsyncd import RsyncModule
from tests.servers.webhook import WebhookServer, closed_port


class Setup:
    """Two cells with data, a backup directory, and vaults over them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.crm = write_tree(tmp / "cells" / "crm", SAMPLE)
        self.billing = write_tree(tmp / "cells" / "billing", {"ledger.csv": "a,b\n1,2\n"})
        self.backup_dir = tmp / "backup"
        self.cells = [Cell("crm", [self.crm]), Cell("billing", [self.billing])]

    def config(self, *targets: TargetSpec, **fields: Any) -> Config:
        specs = [TargetSpec("local", str(self.backup_dir)), *targets]
        return Config(backup_dir=self.backup_dir, cells=self.cells, targets=specs, **fields)

    def vault(self, *targets: TargetSpec, clock: Any = None, **fields: Any) -> Vault:
        kwargs: dict[str, Any] = {"load_entry_points": False}
        if clock is not None:
            kwargs["clock"] = clock
        return Vault(self.config(*targets, **fields), **kwargs)

    def healthy(self, *targets: TargetSpec, **fields: Any) -> Vault:
        """Backed up, verified and drilled just now, on every target."""
        vault = self.vault(*targets, **fields)
        assert vault.backup().ok
        assert vault.verify(level="drill").ok
        return vault


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def failing(report: DoctorReport) -> list[str]:
    return [c.name for c in report.failures()]


def show(report: DoctorReport) -> str:
    return "\n".join(f"{c.mark} {c.name}: {c.detail} | {c.fix}" for c in report.checks)


def s3_spec(bucket: S3Bucket, **options: Any) -> TargetSpec:
    return TargetSpec(
        "s3",
        f"{bucket.url}/backups",
        {**bucket.storage_options, "skip_instance_cache": True, **options},
    )


def oss_spec(bucket: OssBucket, **options: Any) -> TargetSpec:
    return TargetSpec(
        "oss",
        f"{bucket.url}/backups",
        {**bucket.storage_options, "skip_instance_cache": True, **options},
    )


# -- healthy -----------------------------------------------------------------------------


def test_a_healthy_setup_passes_every_check(
    s: Setup, s3_bucket: S3Bucket, oss_bucket: OssBucket, receiver: WebhookServer
) -> None:
    vault = s.healthy(
        s3_spec(s3_bucket),
        oss_spec(oss_bucket),
        extra={"BACKUP_ALERT_WEBHOOK": receiver.url("/cgi-bin/webhook/send?key=SECRET123")},
    )
    environ = {"BACKUP_DIR": str(s.backup_dir), "BACKUP_TARGETS": "local,s3,oss"}
    report = run_checks(vault, environ=environ, source="test")

    assert report.ok, show(report)
    # The one reservation: these credentials may delete what they wrote (docs/security.md).
    assert [c.name for c in report.warnings()] == ["target s3 deletion", "target oss deletion"]
    assert "can delete objects in" in report.check("target s3 deletion").detail
    names = [c.name for c in report.checks]
    assert names == [
        "configuration",
        "variables",
        "cell crm",
        "cell billing",
        "target local",
        "target s3",
        "target oss",
        "target s3 deletion",
        "target oss deletion",
        "leftovers",
        "alert webhook",
        "alert log",
        "backup crm",
        "backup billing",
        "drill crm",
        "drill billing",
    ]
    assert all(c.mark == "[ok]" for c in report.checks if "deletion" not in c.name)
    assert "probe .cellvault-doctor-" in report.check("target oss").detail
    assert "verified" in report.check("backup crm").detail
    assert "RTO" in report.check("drill crm").detail
    assert report.check("leftovers").detail == "no leftovers of killed restores or drills"
    # No alert was posted (only a HEAD request), and the robot's key is never shown.
    assert receiver.received == []
    assert "SECRET123" not in json.dumps(report.to_dict())
    # The probe objects are gone from every target.
    assert not any(PROBE_PREFIX in k for k in s3_bucket.objects())
    assert not any(PROBE_PREFIX in k for k in oss_bucket.objects())
    assert not list(s.backup_dir.glob(f"{PROBE_PREFIX}*"))


def test_a_locked_bucket_or_a_put_only_credential_passes_the_deletion_line(
    s: Setup, s3_bucket: S3Bucket
) -> None:
    from cellvault.targets.local import LocalTarget

    locked = run_checks(s.vault(s3_spec(s3_bucket), object_lock="compliance"))
    deletion = locked.check("target s3 deletion")
    assert (
        deletion.status == "ok" and "archives are locked (Object Lock compliance" in deletion.detail
    )

    class PutOnly(LocalTarget):
        """A store whose credential may put but not delete (a WORM share)."""

        object_store = True

        def delete(self, key: str) -> None:
            raise PermissionError(13, "AccessDenied", key)

    class Plugin:
        @hookimpl(tryfirst=True)
        def cellvault_make_target(self, spec: TargetSpec) -> Any:
            return PutOnly(spec) if spec.name == "worm" else None

    config = s.config(TargetSpec("worm", str(s.tmp / "worm")))
    report = run_checks(Vault(config, load_entry_points=False, plugins=[Plugin()]))
    assert report.check("target worm deletion").status == "ok", show(report)
    assert "cannot delete" in report.check("target worm deletion").detail
    assert "left (its delete was refused)" in report.check("target worm").detail
    assert "target local deletion" not in [c.name for c in report.checks]


def test_the_report_as_json_and_text() -> None:
    report = DoctorReport(
        (
            Check("configuration", True, "fine"),
            Check("alert webhook", True, "none", fix="set it", warn=True),
            Check("target s3", False, "refused", fix="check the key"),
        )
    )
    data = report.to_dict()
    assert data["ok"] is False and data["failed"] == 1 and data["warnings"] == 1
    assert [c["status"] for c in data["checks"]] == ["ok", "warn", "fail"]
    assert [c.mark for c in report.checks] == ["[ok]", "[warn]", "[FAIL]"]


# -- each broken item fails on its line alone ---------------------------------------------


def test_an_unreachable_target_fails_its_line_alone(s: Setup) -> None:
    s.healthy()
    port = closed_port()
    dead = TargetSpec(
        "s3",
        "s3://paas-backup/prod",
        {
            "key": "k",
            "secret": "s",
            "skip_instance_cache": True,
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
        },
    )
    vault = s.vault(dead)
    started = time.monotonic()
    report = run_checks(vault, timeout=3)
    assert time.monotonic() - started < 10
    assert failing(report) == ["target s3"], show(report)
    check = report.check("target s3")
    assert "reachable" in (check.fix or "")


@pytest.mark.tools("rsync")
def test_an_unreachable_rsync_nas_fails_its_line_alone(s: Setup) -> None:
    s.healthy()
    vault = s.vault(TargetSpec("nas", f"rsync://127.0.0.1:{closed_port()}/backup"))
    report = run_checks(vault, timeout=10)
    assert failing(report) == ["target nas"], show(report)
    assert "Connection refused" in report.check("target nas").detail


def test_a_stopped_object_store_fails_its_line_alone(s: Setup, s3_bucket: S3Bucket) -> None:
    s.healthy(s3_spec(s3_bucket))
    s3_bucket.server.stop()
    try:
        report = run_checks(s.vault(s3_spec(s3_bucket)), timeout=3)
    finally:
        s3_bucket.server.start()
    assert failing(report) == ["target s3"], show(report)


def test_a_read_only_nas_fails_its_line_alone(s: Setup, rsync_module: RsyncModule) -> None:
    nas = TargetSpec("nas", rsync_module.url_for("paas"))
    # One cell at a time: two first locks at once on a fresh rsync destination can
    # race in rsync's --mkpath ("File exists"), which is not what this test is about.
    s.healthy(nas, jobs=1)
    assert run_checks(s.vault(nas, jobs=1)).ok
    rsync_module.set_read_only()
    report = run_checks(s.vault(nas, jobs=1))
    assert failing(report) == ["target nas"], show(report)
    assert "write the probe object" in report.check("target nas").detail
    assert not any(PROBE_PREFIX in p.name for p in rsync_module.root.rglob("*"))


def test_bad_credentials_fail_the_targets_line_alone(s: Setup, oss_bucket: OssBucket) -> None:
    s.healthy(oss_spec(oss_bucket))
    vault = s.vault(oss_spec(oss_bucket, secret="not-the-secret"))
    report = run_checks(vault)
    assert failing(report) == ["target oss"], show(report)
    check = report.check("target oss")
    assert "credentials" in (check.fix or "")
    assert "OSS_ACCESS_KEY_SECRET" in (check.fix or "")
    assert "not-the-secret" not in check.detail + (check.fix or "")


def test_a_stale_backup_fails_its_cells_line_alone(s: Setup) -> None:
    days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    old = s.vault(clock=lambda: days_ago)
    assert old.backup(["crm"]).ok
    vault = s.vault()
    assert vault.backup(["billing"]).ok
    assert vault.verify(level="drill").ok
    report = run_checks(vault)
    assert failing(report) == ["backup crm"], show(report)
    check = report.check("backup crm")
    assert "more than max_age 26 h" in check.detail
    assert "schedule" in (check.fix or "") or "cron" in (check.fix or "")
    # A looser limit lets it pass.
    assert run_checks(vault, max_age=100).ok


def test_a_typo_in_a_variable_fails_that_line_alone(s: Setup) -> None:
    vault = s.healthy()
    environ = {"BACKUP_DIR": str(s.backup_dir), "BACKUP_TARGET": "local"}
    report = run_checks(vault, environ=environ)
    assert failing(report) == ["variables"], show(report)
    check = report.check("variables")
    assert "BACKUP_TARGET" in check.detail
    assert "did you mean BACKUP_TARGETS?" in (check.fix or "")


def test_a_missing_cell_path_fails_that_cells_line_alone(s: Setup) -> None:
    vault = s.healthy()
    (s.billing / "ledger.csv").unlink()
    s.billing.rmdir()
    report = run_checks(vault)
    assert failing(report) == ["cell billing"], show(report)
    assert "does not exist" in report.check("cell billing").detail


def test_a_missing_or_old_drill_fails_the_drill_lines(s: Setup) -> None:
    vault = s.vault()
    assert vault.backup().ok
    report = run_checks(vault)
    assert failing(report) == ["drill crm", "drill billing"], show(report)
    assert "verify --level drill" in (report.check("drill crm").fix or "")

    assert vault.verify(level="drill").ok
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    future = s.vault(clock=lambda: later)
    report = run_checks(future, max_age=24 * 30)
    assert failing(report) == ["drill crm", "drill billing"], show(report)
    assert "more than 7 days" in report.check("drill crm").detail
    assert run_checks(future, max_age=24 * 30, drill_max_age=10).ok


def test_a_webhook_that_does_not_answer_fails_its_line_alone(s: Setup) -> None:
    vault = s.healthy(extra={"BACKUP_ALERT_WEBHOOK": f"http://127.0.0.1:{closed_port()}/hook"})
    report = run_checks(vault, timeout=3)
    assert failing(report) == ["alert webhook"], show(report)
    assert "connection refused" in report.check("alert webhook").detail


def test_no_webhook_is_a_warning_and_a_test_alert_is_posted_on_request(
    s: Setup, receiver: WebhookServer
) -> None:
    vault = s.healthy()
    report = run_checks(vault)
    assert report.ok
    assert [c.name for c in report.warnings()] == ["alert webhook"]

    vault = s.vault(extra={"BACKUP_ALERT_WEBHOOK": receiver.url()})
    report = run_checks(vault, send_test_alert=True)
    assert report.ok, show(report)
    assert "test alert was posted" in report.check("alert webhook").detail
    assert len(receiver.received) == 1
    assert "doctor test alert" in receiver.received[0].body["text"]

    receiver.status = 400
    receiver.reply = {"errcode": 93000, "errmsg": "invalid webhook url"}
    report = run_checks(vault, send_test_alert=True)
    assert failing(report) == ["alert webhook"]
    assert "not delivered" in report.check("alert webhook").detail


def test_a_configuration_that_does_not_build_a_vault_fails_the_first_line(s: Setup) -> None:
    config = s.config(TargetSpec("odd", "nosuchscheme://x"))
    report = run_checks(config, vault_options={"load_entry_points": False})
    assert failing(report) == ["configuration"]
    assert [c.name for c in report.checks] == ["configuration"]


def test_no_cells_fails_the_configuration_line(s: Setup) -> None:
    vault = Vault(Config(backup_dir=s.backup_dir), load_entry_points=False)
    report = run_checks(vault)
    assert failing(report) == ["configuration"], show(report)
    assert "no cells" in report.check("configuration").detail


def test_no_probe_writes_nothing(s: Setup, s3_bucket: S3Bucket) -> None:
    vault = s.healthy(s3_spec(s3_bucket))
    before = set(s3_bucket.objects())
    report = run_checks(vault, probe=False)
    assert report.ok, show(report)
    assert not any(c.name.startswith("target ") for c in report.checks)
    assert set(s3_bucket.objects()) == before


# -- the command line ------------------------------------------------------------------------


def env_file(s: Setup, *extra: str) -> Path:
    path = s.tmp / "backup_config.env"
    path.write_text(
        f"export BACKUP_DIR={s.backup_dir}\n"
        'export BACKUP_CELLS="crm billing"\n'
        f"export BACKUP_CELLS_ROOT={s.tmp / 'cells'}\n" + "".join(f"{line}\n" for line in extra)
    )
    return path


def test_cli_doctor_prints_a_checklist_and_exits_by_it(s: Setup) -> None:
    s.healthy()
    runner = CliRunner()
    path = env_file(s)
    result = runner.invoke(cli, ["--env-file", str(path), "doctor"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[ok]   target local:" in result.stdout
    assert "[warn] alert webhook:" in result.stdout
    assert "ready for production" in result.stdout

    path = env_file(s, "BACKUP_TARGET=local")
    result = runner.invoke(cli, ["--env-file", str(path), "doctor"], catch_exceptions=False)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [x for x in lines if x.startswith("[FAIL]")] == [
        "[FAIL] variables: not cellvault variables, so ignored: BACKUP_TARGET"
    ]
    assert "fix: did you mean BACKUP_TARGETS? rename BACKUP_TARGET to BACKUP_TARGETS" in (
        result.stdout
    )
    # The unknown variable is the checklist's business: no duplicate warning on stderr.
    assert "config.unknown_variable" not in result.stderr


def test_cli_doctor_json(s: Setup) -> None:
    s.healthy()
    path = env_file(s)
    result = CliRunner().invoke(
        cli, ["--env-file", str(path), "doctor", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert {c["name"] for c in data["checks"]} >= {"configuration", "target local", "drill crm"}


def test_cli_doctor_without_configuration(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["doctor", "--json"], catch_exceptions=False)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["checks"][0]["name"] == "configuration"
    assert "BACKUP_DIR is not set" in data["checks"][0]["detail"]
    result = CliRunner().invoke(
        cli, ["--env-file", str(tmp_path / "missing.env"), "doctor"], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert result.stdout.startswith("[FAIL] configuration: ")
    assert "does not exist" in result.stdout


def test_cli_doctor_with_a_toml_configuration(s: Setup) -> None:
    s.healthy()
    toml = s.tmp / "cellvault.toml"
    toml.write_text(
        f'backup_dir = "{s.backup_dir}"\n'
        f'[cells.crm]\npaths = ["{s.crm}"]\n'
        f'[cells.billing]\npaths = ["{s.billing}"]\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(toml), "doctor"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"[ok]   configuration: {toml}: 2 cell(s)" in result.stdout
    assert "variables" not in result.stdout
