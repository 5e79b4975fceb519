"""The operator kit in examples/: every file runs as it stands, as cron would run it.

The scripts are copied into a platform checkout of their own (``<tmp>/platform/deploy/
scripts``, as an operator copies them), configured from the example env file, and run
with no terminal, a minimal environment (cron's PATH plus the folder of the
``cellvault`` executable, a scratch HOME) and another current directory.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from cellvault import load_env, load_toml
from cellvault.config import KNOWN_ENV, read_env_file, unknown_env
from cellvault.notify import alert_settings
from tests.helpers import SAMPLE, write_tree
from tests.servers.fixtures import S3Bucket
from tests.system_tools import import_module, require, unavailable

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SCRIPTS = EXAMPLES / "deploy" / "scripts"
ENV_EXAMPLE = SCRIPTS / "backup_config.env.example"
TOML_EXAMPLE = SCRIPTS / "cellvault.toml.example"
PLACEHOLDER = "/path/to/paas-platform"

#: The variables the operations manual names (section 2.1).
SEED_VARIABLES = (
    "BACKUP_TYPE",
    "BACKUP_TARGETS",
    "BACKUP_DIR",
    "BACKUP_S3_BUCKET",
    "BACKUP_S3_PREFIX",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "BACKUP_S3_ENDPOINT",
    "BACKUP_NAS_PATH",
    "BACKUP_NAS_RSYNC",
    "BACKUP_ALERT_WEBHOOK",
    "BACKUP_CELLS",
)
#: The manual's scripts, at the manual's paths under deploy/scripts/.
SEED_SCRIPTS = (
    "backup_runner.sh",
    "backup_cells.sh",
    "restore_full.sh",
    "verify_backup.sh",
    "dr_dual_active/sync_backup_to_dr.sh",
    "dr_dual_active/prepare_dr_site.sh",
    "dr_dual_active/dr_failover.sh",
)


def cellvault_bin() -> Path:
    """The ``cellvault`` console script of this interpreter (not a pyenv shim)."""
    path = Path(sys.executable).parent / "cellvault"
    if not path.exists():
        unavailable("the cellvault console script is not installed next to this Python")
    return path


def cron_env(home: Path, **extra: str) -> dict[str, str]:
    """What cron gives a job: a short PATH (plus cellvault's folder), HOME, nothing else."""
    return {"PATH": f"/usr/bin:/bin:{cellvault_bin().parent}", "HOME": str(home), **extra}


def configure(text: str, values: dict[str, str]) -> str:
    """*text* (an env file) with ``[export] KEY=...`` lines set to *values*, others appended."""
    done = set()
    out = []
    for line in text.splitlines():
        match = re.match(r"(export )?([A-Z0-9_]+)=", line)
        if match and match[2] in values:
            key = match[2]
            out.append(f"export {key}={shlex.quote(values[key])}")
            done.add(key)
        else:
            out.append(line)
    out += [f"export {k}={shlex.quote(v)}" for k, v in values.items() if k not in done]
    return "\n".join(out) + "\n"


class Platform:
    """A platform checkout with the example scripts copied into ``deploy/scripts``."""

    def __init__(self, tmp: Path, name: str = "platform", **values: str) -> None:
        self.tmp = tmp
        self.root = tmp / name
        self.scripts = self.root / "deploy" / "scripts"
        shutil.copytree(EXAMPLES / "deploy", self.root / "deploy")
        self.cells = tmp / f"{name}-cells"
        self.backup_dir = tmp / f"{name}-backup"
        self.home = tmp / f"{name}-home"
        self.home.mkdir()
        self.elsewhere = tmp / f"{name}-cwd"
        self.elsewhere.mkdir()
        self.env_file = self.scripts / "backup_config.env"
        self.configure(BACKUP_DIR=str(self.backup_dir), BACKUP_CELLS_ROOT=str(self.cells), **values)

    def configure(self, **values: str) -> None:
        self.env_file.write_text(configure(ENV_EXAMPLE.read_text(), values))

    def seed_cells(self) -> None:
        write_tree(self.cells / "crm", SAMPLE)
        write_tree(self.cells / "billing", {"ledger.csv": "a,b\n1,2\n"})

    def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run deploy/scripts/<script> as cron would."""
        return subprocess.run(
            [str(self.scripts / script), *args],
            env=cron_env(self.home, **env),
            cwd=self.elsewhere,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def shell(self, command: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a cron line's command with /bin/sh, as cron does."""
        return subprocess.run(
            ["/bin/sh", "-c", command.replace(PLACEHOLDER, str(self.root))],
            env=cron_env(self.home, **env),
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def archives(self, where: Path | None = None) -> list[str]:
        root = where or self.backup_dir
        return sorted(
            p.name.removesuffix(".json") for p in root.glob("*/cell_*_????????_??????.json")
        )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


# -- the configuration examples -------------------------------------------------------------


def test_env_example_names_every_seed_and_cellvault_variable() -> None:
    text = ENV_EXAMPLE.read_text()
    assigned = set(re.findall(r"^(?:# )?(?:export )?([A-Z][A-Z0-9_]*)=", text, re.M))
    missing_seed = [name for name in SEED_VARIABLES if name not in assigned]
    assert not missing_seed, f"the manual's variables missing from the example: {missing_seed}"
    missing = [name for name in KNOWN_ENV if name not in assigned]
    assert not missing, f"config.KNOWN_ENV names missing from {ENV_EXAMPLE.name}: {missing}"
    # Every active line is a seed variable or a path of the cells: cellvault's own are commented.
    active = set(re.findall(r"^(?:export )?([A-Z][A-Z0-9_]*)=", text, re.M))
    assert active == {*SEED_VARIABLES, "BACKUP_CELLS_ROOT"}


def test_env_example_loads_and_names_no_unknown_variable() -> None:
    values = read_env_file(ENV_EXAMPLE)
    assert unknown_env(values) == []
    config = load_env({}, ENV_EXAMPLE)
    assert [c.name for c in config.cells] == ["crm", "billing"]
    assert [t.name for t in config.target_specs] == ["local"]
    assert config.backup_type == "full"
    # The commented lines are valid too: uncommented, they load and are all known.
    uncommented = re.sub(r"^# ([A-Z][A-Z0-9_]*=)", r"\1", ENV_EXAMPLE.read_text(), flags=re.M)
    assert not unknown_env({k: "" for k in re.findall(r"^([A-Z][A-Z0-9_]*)=", uncommented, re.M)})


def _toml_with(*blocks: str) -> str:
    """The TOML example with its ``# >>> name`` ... ``# <<< name`` blocks uncommented."""
    text = TOML_EXAMPLE.read_text()
    for name in blocks:
        pattern = re.compile(rf"^# >>> {name}\b.*?^# <<< {name}$", re.M | re.S)
        block = pattern.search(text)
        assert block, f"no '# >>> {name}' block in {TOML_EXAMPLE.name}"
        body = "\n".join(
            line[2:] if line.startswith("# ") else line for line in block[0].splitlines()[1:-1]
        )
        text = text[: block.start()] + body + text[block.end() :]
    return text


def _same(env_config: Any, toml_config: Any) -> None:
    # The alerts are BACKUP_ALERT_* in one and an [alerts] table in the other: compare
    # what they configure.
    assert alert_settings(env_config) == alert_settings(toml_config)
    assert attrs.evolve(env_config, extra={}) == attrs.evolve(toml_config, extra={})


def test_toml_example_is_the_env_example(tmp_path: Path) -> None:
    _same(load_env({}, ENV_EXAMPLE), load_toml(TOML_EXAMPLE))
    # With the S3 and NAS targets too (commented out in both, as they need a bucket and a mount).
    # Both files in one folder, as an operator keeps them (relative paths start there).
    folder = tmp_path / "deploy" / "scripts"
    folder.mkdir(parents=True)
    toml = folder / "cellvault.toml"
    toml.write_text(_toml_with("s3", "nas"))
    env_file = folder / "backup_config.env"
    shutil.copyfile(ENV_EXAMPLE, env_file)
    env = load_env({"BACKUP_TARGETS": "local,s3,nas"}, env_file)
    assert [t.name for t in env.target_specs] == ["local", "s3", "nas"]
    _same(env, load_toml(toml))


# -- the scripts ----------------------------------------------------------------------------


@pytest.mark.parametrize("script", SEED_SCRIPTS)
def test_scripts_are_thin_strict_bash(script: str) -> None:
    path = SCRIPTS / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    code = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(code) <= 12, f"{script} is not thin: {len(code)} lines of code"
    assert code[-1].startswith('exec "${cv[@]}" '), code[-1]
    subprocess.run(["bash", "-n", str(path)], check=True)
    require("shellcheck")
    subprocess.run(["shellcheck", str(path)], check=True)


def test_backup_verify_restore_as_cron_runs_them(tmp_path: Path) -> None:
    nas = tmp_path / "nas"
    nas.mkdir()
    p = Platform(tmp_path, BACKUP_TARGETS="local,nas", BACKUP_NAS_PATH=str(nas))
    p.seed_cells()

    out = ok(p.run("backup_runner.sh", BACKUP_TYPE="full"))
    assert re.search(r"^ok   cell_crm_\d{8}_\d{6}  full  .* stored on local, nas$", out, re.M)
    assert "prune: 0 archive(s) deleted; ok" in out
    full = p.archives()
    assert len(full) == 2 and p.archives(nas) == full
    # The run log the manual names: <backup_dir>/logs/backup_*.log.
    assert list((p.backup_dir / "logs").glob("backup_*.log"))

    (p.cells / "crm" / "config.yaml").write_text("service: crm\nreplicas: 3\n")
    out = ok(p.run("backup_runner.sh", BACKUP_TYPE="incremental"))
    assert re.search(r"^ok   cell_crm_\d{8}_\d{6}  incremental  1 files", out, re.M)

    out = ok(p.run("backup_cells.sh", "crm"))
    assert "cell_crm_" in out and "cell_billing_" not in out

    out = ok(p.run("verify_backup.sh"))
    assert out.count("ok   cell_") == 4  # the newest of two cells on two targets

    out = ok(p.run("verify_backup.sh", "--level", "drill", "--cell", "billing"))
    assert "(RTO)" in out

    # One-click restore of one cell as of the full backup; a safety backup first.
    shutil.rmtree(p.cells / "crm" / "uploads")
    crm_full = next(a for a in full if a.startswith("cell_crm_"))
    # The manual's RESTORE_DATE is a date prefix (20250101_0200); the runs of this test are
    # seconds apart, so the prefix goes down to the second.
    date = crm_full.removeprefix("cell_crm_")
    out = ok(p.run("restore_full.sh", RESTORE_DATE=date, RESTORE_CELL="crm"))
    assert f"ok   crm: {crm_full} from local -> {p.cells / 'crm'}" in out
    assert "; safety backup cell_crm_" in out
    assert (p.cells / "crm" / "uploads" / "2025" / "logo.bin").read_bytes() == SAMPLE[
        "uploads/2025/logo.bin"
    ]
    assert (p.cells / "crm" / "config.yaml").read_text() == SAMPLE["config.yaml"]

    out = ok(p.run("restore_full.sh", RESTORE_CELL="billing", RESTORE_SKIP_PREBACKUP="1"))
    assert "ok   billing: cell_billing_" in out and "; safety backup cell_" not in out
    # The report says that no safety backup was taken, and why.
    assert "safety backup: skipped (RESTORE_SKIP_PREBACKUP=1)" in out

    bad = p.run("restore_full.sh", RESTORE_DATE="20251301")
    assert bad.returncode == 2
    assert "error: malformed restore date '20251301'" in bad.stderr


def test_failures_exit_non_zero_and_alert(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the NAS mount should be\n")
    p = Platform(tmp_path, BACKUP_TARGETS="local,nas", BACKUP_NAS_PATH=str(blocked))
    p.seed_cells()
    result = p.run("backup_runner.sh")
    assert result.returncode == 1
    assert re.search(r"^FAIL cell crm: \w+ to target nas failed: target nas: ", result.stderr, re.M)
    assert "prune:" not in result.stdout  # set -e: no prune after a failed backup
    # The manual's alert log, under the platform's root whatever the current directory.
    alerts = p.root / "deploy" / "backup" / "backup_alerts.log"
    lines = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert {(a["cell"], a["target"], a["status"]) for a in lines} >= {("crm", "nas", "failed")}

    missing = p.run("backup_runner.sh", BACKUP_CONFIG=str(tmp_path / "nope.env"))
    assert missing.returncode == 2
    assert f"error: env file {tmp_path / 'nope.env'} does not exist" in missing.stderr

    # A corrupted archive fails verify_backup.sh.
    p.configure(BACKUP_DIR=str(p.backup_dir), BACKUP_CELLS_ROOT=str(p.cells))
    ok(p.run("backup_runner.sh"))
    data = sorted(p.backup_dir.glob("crm/cell_crm_*.tar.zst"))[-1]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    result = p.run("verify_backup.sh")
    assert result.returncode == 1
    assert re.search(rf"^FAIL {data.name.removesuffix('.tar.zst')} on local: ", result.stderr, re.M)


def cron_entries(text: str) -> list[tuple[str, str]]:
    """(schedule, command) of every cron line, the commented-out alternatives included."""
    out = []
    for line in text.splitlines():
        line = line.removeprefix("# ") if re.match(r"# [0-9*]", line) else line
        fields = line.split(None, 5)
        if line.startswith("#") or len(fields) < 6 or "=" in fields[0]:
            continue
        out.append((" ".join(fields[:5]), fields[5]))
    return out


def test_cron_example_schedules_the_manuals_jobs(tmp_path: Path) -> None:
    entries = cron_entries((SCRIPTS / "cron_backup.example").read_text())
    by_script: dict[str, list[tuple[str, str]]] = {}
    for schedule, command in entries:
        script = next(w for w in command.split() if w.endswith(".sh"))
        by_script.setdefault(Path(script).name, []).append((schedule, command))
    runner = dict(by_script["backup_runner.sh"])
    assert "BACKUP_TYPE=full" in runner["0 2 * * *"]
    assert "BACKUP_TYPE=incremental" in runner["0 8,14,20 * * *"]
    pulls = [s for s, c in by_script["sync_backup_to_dr.sh"] if "DR_PULL_ONLY=1" in c]
    assert pulls == ["*/15 * * * *"]
    for _, command in entries:
        assert f"{PLACEHOLDER}/deploy/scripts/" in command

    # The primary's active lines run as they stand (the pull runs in the DR test).
    p = Platform(tmp_path)
    p.seed_cells()
    active = [
        c
        for s, c in cron_entries(
            "\n".join(
                line
                for line in (SCRIPTS / "cron_backup.example").read_text().splitlines()
                if not line.startswith("#")
            )
        )
    ]
    assert len(active) == 3
    outputs = [ok(p.shell(command)) for command in active]
    assert "  full  " in outputs[0] and "  incremental  " in outputs[1]
    assert "(RTO)" in outputs[2]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def run_unit(p: Platform, service: Path, instance: str = "", **env: str) -> str:
    """Run a oneshot service's ExecStart lines with its Environment=, as systemd would."""
    parser = unit(service)
    section = parser["Service"]
    assert section["Type"] == "oneshot"
    variables = dict(
        item.split("=", 1)
        for item in shlex.split(section.get("Environment", "").replace("%i", instance))
    )
    command = section["ExecStart"].replace(PLACEHOLDER, str(p.root)).replace("%i", instance)
    result = subprocess.run(
        shlex.split(command),
        env=cron_env(p.home, **variables, **env),
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return ok(result)


def test_systemd_units(tmp_path: Path) -> None:
    folder = EXAMPLES / "systemd"
    full, incremental = (
        folder / "cellvault-backup-full.timer",
        folder / "cellvault-backup-incremental.timer",
    )
    assert unit(full)["Timer"]["OnCalendar"] == "*-*-* 02:00:00"
    assert unit(full)["Timer"]["Unit"] == "cellvault-backup@full.service"
    assert unit(incremental)["Timer"]["OnCalendar"] == "*-*-* 08,14,20:00:00"
    assert unit(incremental)["Timer"]["Unit"] == "cellvault-backup@incremental.service"
    pull = unit(folder / "cellvault-dr-pull.timer")["Timer"]
    assert (pull["OnCalendar"], pull["Unit"]) == ("*:0/15", "cellvault-dr-pull.service")

    p = Platform(tmp_path)
    p.seed_cells()
    service = folder / "cellvault-backup@.service"
    assert "  full  " in run_unit(p, service, "full")
    assert "  incremental  " in run_unit(p, service, "incremental")

    require("systemd-analyze")
    units = tmp_path / "units"
    units.mkdir()
    for path in folder.iterdir():
        (units / path.name).write_text(path.read_text().replace(PLACEHOLDER, str(p.root)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(u) for u in units.iterdir())],
        capture_output=True,
        text=True,
        cwd=units,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_kubernetes_backup_cronjobs(tmp_path: Path) -> None:
    yaml = import_module("yaml", ".[test]")  # PyYAML (the test extra) reads the example
    docs = list(yaml.safe_load_all((EXAMPLES / "k8s" / "backup-cronjob.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["CronJob", "CronJob"]
    schedules = {d["metadata"]["name"]: d["spec"]["schedule"] for d in docs}
    assert schedules == {
        "cellvault-backup-full": "0 2 * * *",
        "cellvault-backup-incremental": "0 8,14,20 * * *",
    }
    p = Platform(tmp_path)
    p.seed_cells()
    for doc in docs:
        assert doc["spec"]["concurrencyPolicy"] == "Forbid"
        pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        container = pod["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/etc/cellvault"] == "config"
        secret = next(v for v in pod["volumes"] if v["name"] == "config")["secret"]
        assert secret["secretName"] == "cellvault-config"
        # The container's command, with the Secret's file and the volume at this test's paths.
        command = [
            part.replace("/etc/cellvault/backup_config.env", str(p.env_file))
            for part in container["command"]
        ]
        env = {
            e["name"]: e["value"].replace("/backup/paas", str(p.backup_dir))
            for e in container.get("env", [])
        }
        result = subprocess.run(
            command,
            env=cron_env(p.home, **env),
            cwd=p.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        out = ok(result)
        kind = "full" if doc["metadata"]["name"].endswith("full") else "incremental"
        assert f"  {kind}  " in out and "prune:" in out


# -- disaster recovery ----------------------------------------------------------------------


def test_dr_scripts_primary_to_standby(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    server: Any = s3_bucket.server
    storage = {
        "BACKUP_TARGETS": "local,s3",
        "BACKUP_S3_BUCKET": s3_bucket.name,
        "BACKUP_S3_PREFIX": "prod/backup",
        "BACKUP_S3_ENDPOINT": s3_bucket.endpoint,
        "BACKUP_S3_REGION": server.region,
        "AWS_ACCESS_KEY_ID": s3_bucket.key,
        "AWS_SECRET_ACCESS_KEY": s3_bucket.secret,
        "DR_TARGET": "s3",
    }
    primary = Platform(tmp_path, "primary", DR_SITE_ID="primary", **storage)
    standby = Platform(tmp_path, "standby", DR_SITE_ID="dr", DR_PULL_ONLY="1", **storage)
    primary.seed_cells()

    ok(primary.run("backup_runner.sh", BACKUP_TYPE="full"))
    out = ok(primary.run("dr_dual_active/sync_backup_to_dr.sh"))
    assert "sync (push, site primary): ok, 0 archive(s) copied" in out

    out = ok(standby.run("dr_dual_active/prepare_dr_site.sh"))
    assert "ok   target s3: reachable, probe written, read and removed" in out
    assert "prepare site dr: ok" in out
    assert standby.archives() == primary.archives()

    # The standby's cron line: the pull every 15 minutes.
    (primary.cells / "crm" / "config.yaml").write_text("service: crm\nreplicas: 4\n")
    ok(primary.run("backup_runner.sh", BACKUP_TYPE="incremental"))
    pull = next(
        c
        for s, c in cron_entries((SCRIPTS / "cron_backup.example").read_text())
        if s == "*/15 * * * *"
    )
    out = ok(standby.shell(pull))
    assert "sync (pull, site dr): ok, 2 archive(s) copied" in out
    assert standby.archives() == primary.archives()
    # ... or its systemd form.
    out = run_unit(standby, EXAMPLES / "systemd" / "cellvault-dr-pull.service")
    assert "sync (pull, site dr): ok, 0 archive(s) copied" in out

    # The manual's 5.4 on the standby: restore the newest, then mark the failover.
    out = ok(standby.run("restore_full.sh", RESTORE_DATE="latest", RESTORE_SKIP_PREBACKUP="1"))
    assert (standby.cells / "crm" / "config.yaml").read_text() == "service: crm\nreplicas: 4\n"
    out = ok(standby.run("dr_dual_active/dr_failover.sh", DR_SITE_ID="dr"))
    assert "failover to site dr: ok" in out
    marker = json.loads((standby.backup_dir / ".cellvault" / "dr" / "failover.json").read_text())
    assert marker["site_id"] == "dr"
    # The primary may not push any more.
    refused = primary.run("dr_dual_active/sync_backup_to_dr.sh")
    assert refused.returncode == 1 and "must not push" in refused.stderr
