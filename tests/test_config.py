"""Configuration: the seed's variables and backup_config.env, TOML files, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellvault import Cell, Config, ConfigError, TargetSpec, load_env, load_toml
from cellvault.config import KNOWN_ENV, unknown_env, with_restore_env


@pytest.fixture(autouse=True)
def _no_cloud_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "OSS_ACCESS_KEY_ID",
        "OSS_ACCESS_KEY_SECRET",
    ):
        monkeypatch.delenv(key, raising=False)


# -- environment variables ---------------------------------------------------------


def test_seed_variables(tmp_path: Path) -> None:
    root = tmp_path / "cells"
    env = {
        "BACKUP_DIR": "/backup/paas",
        "BACKUP_TYPE": "incremental",
        "BACKUP_CELLS": "crm billing  user-center",
        "BACKUP_CELLS_ROOT": str(root),
        "BACKUP_CELL_USER_CENTER_PATHS": "/srv/uc/data:/srv/uc/uploads:",
        "BACKUP_CELL_USER_CENTER_EXCLUDE": "*.tmp cache",
        "BACKUP_EXCLUDE": "*.swp",
        "BACKUP_TARGETS": "local,s3,nas",
        "BACKUP_S3_BUCKET": "paas-backup",
        "BACKUP_S3_PREFIX": "/prod/backups/",
        "BACKUP_S3_ENDPOINT": "https://oss-cn-hangzhou.aliyuncs.com",
        "BACKUP_S3_REGION": "cn-hangzhou",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG",
        "BACKUP_NAS_PATH": "/mnt/nas/backup",
        "BACKUP_ALERT_WEBHOOK": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k",
        "RESTORE_DATE": "20250101_0200",
        "RESTORE_CELL": "crm",
        "RESTORE_SKIP_PREBACKUP": "1",
        "RESTORE_INTO": "/tmp/restored",
    }
    config = load_env(env)
    assert config.backup_dir == Path("/backup/paas")
    assert config.backup_type == "incremental"
    assert [c.name for c in config.cells] == ["crm", "billing", "user-center"]
    crm, billing, uc = config.cells
    assert crm.paths == (root / "crm",)
    assert billing.paths == (root / "billing",)
    assert uc.paths == (Path("/srv/uc/data"), Path("/srv/uc/uploads"))
    assert crm.exclude == ("*.swp",)
    assert uc.exclude == ("*.swp", "*.tmp", "cache")

    local, s3, nas = config.targets
    assert local == TargetSpec("local", "/backup/paas")
    assert s3.name == "s3"
    assert s3.url == "s3://paas-backup/prod/backups"
    assert s3.scheme == "s3"
    assert s3.options == {
        "key": "AKIAEXAMPLE",
        "secret": "wJalrXUtnFEMI/K7MDENG",
        "client_kwargs": {
            "endpoint_url": "https://oss-cn-hangzhou.aliyuncs.com",
            "region_name": "cn-hangzhou",
        },
    }
    assert nas == TargetSpec("nas", "/mnt/nas/backup")
    assert config.target_specs == config.targets

    assert config.restore_date == "20250101_0200"
    assert config.restore_cell == "crm"
    assert config.restore_skip_prebackup is True
    assert config.restore_into == Path("/tmp/restored")
    assert config.extra == {
        "BACKUP_ALERT_WEBHOOK": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"
    }


def test_minimal_environment_defaults() -> None:
    config = load_env({"BACKUP_DIR": "/backup/paas"})
    assert config.cells == ()
    assert config.targets == (TargetSpec("local", "/backup/paas"),)
    assert config.backup_type == "full"
    assert config.codec == "zstd"
    assert config.jobs == 2
    assert config.verify_after_backup is True
    assert config.restore_date is None and config.restore_cell is None
    assert config.restore_skip_prebackup is False
    assert config.restore_into is None


def test_s3_without_credentials_and_bucket_root() -> None:
    config = load_env({"BACKUP_DIR": "/b", "BACKUP_TARGETS": "s3", "BACKUP_S3_BUCKET": "bkt"})
    (s3,) = config.targets
    assert s3.url == "s3://bkt"
    assert s3.options == {}


def test_region_from_aws_default_region() -> None:
    env = {
        "BACKUP_DIR": "/b",
        "BACKUP_TARGETS": "s3",
        "BACKUP_S3_BUCKET": "bkt",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert load_env(env).targets[0].options == {"client_kwargs": {"region_name": "eu-west-1"}}


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("nas.local::backup/paas", "rsync://nas.local/backup/paas"),
        ("backup@nas.local:/srv/backup", "rsync+ssh://backup@nas.local//srv/backup"),
        ("rsync://nas.local:8873/backup", "rsync://nas.local:8873/backup"),
    ],
)
def test_nas_rsync(value: str, url: str) -> None:
    config = load_env(
        {"BACKUP_DIR": "/b", "BACKUP_TARGETS": "local nas", "BACKUP_NAS_RSYNC": value}
    )
    assert [t.name for t in config.targets] == ["local", "nas"]
    assert config.targets[1].url == url


def test_oss_and_custom_targets() -> None:
    env = {
        "BACKUP_DIR": "/b",
        "BACKUP_TARGETS": "oss, dr",
        "BACKUP_OSS_BUCKET": "paas",
        "BACKUP_OSS_PREFIX": "backups",
        "BACKUP_OSS_ENDPOINT": "https://oss-cn-shanghai.aliyuncs.com",
        "OSS_ACCESS_KEY_ID": "id",
        "OSS_ACCESS_KEY_SECRET": "secret",
        "BACKUP_TARGET_DR_URL": "memory://dr",
    }
    oss, dr = load_env(env).targets
    assert oss == TargetSpec(
        "oss",
        "oss://paas/backups",
        {"endpoint": "https://oss-cn-shanghai.aliyuncs.com", "key": "id", "secret": "secret"},
    )
    assert dr == TargetSpec("dr", "memory://dr")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "BACKUP_DIR is not set"),
        ({"BACKUP_DIR": "  "}, "BACKUP_DIR is not set"),
        ({"BACKUP_TARGETS": "s3"}, "BACKUP_S3_BUCKET"),
        ({"BACKUP_TARGETS": "oss", "BACKUP_OSS_BUCKET": "b"}, "BACKUP_OSS_ENDPOINT"),
        ({"BACKUP_TARGETS": "nas"}, "BACKUP_NAS_PATH or BACKUP_NAS_RSYNC"),
        ({"BACKUP_TARGETS": "local,ftp"}, "unknown target 'ftp'"),
        ({"BACKUP_TYPE": "weekly"}, "neither full nor incremental"),
        ({"BACKUP_CELLS": "crm"}, "cell crm: no data path"),
        ({"BACKUP_CELLS": "CRM", "BACKUP_CELLS_ROOT": "/srv"}, "invalid cell name 'CRM'"),
        ({"BACKUP_CELLS": "crm crm", "BACKUP_CELLS_ROOT": "/srv"}, "configured twice"),
        ({"BACKUP_CELLS": "crm", "BACKUP_CELL_CRM_PATHS": "relative/data"}, "not absolute"),
        ({"BACKUP_VERIFY": "maybe"}, "not a yes/no value"),
        ({"RESTORE_SKIP_PREBACKUP": "y"}, "RESTORE_SKIP_PREBACKUP"),
        ({"BACKUP_JOBS": "four"}, "not a whole number"),
        ({"BACKUP_JOBS": "0"}, "jobs must be at least 1"),
        ({"BACKUP_CODEC": "lz4"}, "unknown codec"),
    ],
)
def test_bad_environment(env: dict[str, str], message: str) -> None:
    env = {"BACKUP_DIR": "/b", **env} if "BACKUP_DIR" not in env and env != {} else env
    with pytest.raises(ConfigError, match=message):
        load_env(env)


def test_restore_skip_prebackup_values() -> None:
    for raw, expected in [
        ("1", True),
        ("yes", True),
        ("true", True),
        ("0", False),
        ("", False),
        ("no", False),
    ]:
        assert (
            load_env({"BACKUP_DIR": "/b", "RESTORE_SKIP_PREBACKUP": raw}).restore_skip_prebackup
            is expected
        )


# -- backup_config.env ---------------------------------------------------------------

SEED_ENV_FILE = """\
# 备份配置示例: 复制为 backup_config.env 后修改
# BACKUP_DIR: 本地目录
export BACKUP_DIR=/backup/paas
export BACKUP_TYPE="incremental"   # full 或 incremental
BACKUP_TARGETS='local,s3'
# 细胞列表 空格分隔
export BACKUP_CELLS="crm billing"
export BACKUP_CELLS_ROOT="${DATA_ROOT}/cells"
export BACKUP_S3_BUCKET=paas-backup
export BACKUP_S3_PREFIX=prod
export AWS_ACCESS_KEY_ID=AKIAEXAMPLE
export AWS_SECRET_ACCESS_KEY='wJalr/XUtnFEMI#K7MDENG'

export BACKUP_ALERT_WEBHOOK="https://oapi.dingtalk.com/robot/send?access_token=abc"
"""


def test_seed_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "backup_config.env"
    env_file.write_text(SEED_ENV_FILE, encoding="utf-8")
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data"))
    config = load_env(None, env_file)
    assert config.backup_dir == Path("/backup/paas")
    assert config.backup_type == "incremental"
    assert [c.name for c in config.cells] == ["crm", "billing"]
    assert config.cells[0].paths == (tmp_path / "data" / "cells" / "crm",)
    local, s3 = config.targets
    assert local.name == "local"
    assert s3.url == "s3://paas-backup/prod"
    assert s3.options["secret"] == "wJalr/XUtnFEMI#K7MDENG"  # quoted: '#' is no comment
    assert config.extra["BACKUP_ALERT_WEBHOOK"].endswith("access_token=abc")


def test_process_environment_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in the seed's cron line: `. backup_config.env; BACKUP_TYPE=full backup_runner.sh`."""
    env_file = tmp_path / "backup_config.env"
    env_file.write_text(SEED_ENV_FILE)
    monkeypatch.setenv("DATA_ROOT", "/data")
    monkeypatch.setenv("BACKUP_TYPE", "full")
    monkeypatch.setenv("BACKUP_CELLS", "crm")
    config = load_env(None, env_file)
    assert config.backup_type == "full"
    assert [c.name for c in config.cells] == ["crm"]
    # An explicit mapping stands for the process environment.
    assert load_env({"BACKUP_DIR": "/other"}, env_file).backup_dir == Path("/other")


def test_missing_env_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_env({}, tmp_path / "nope.env")


def test_restore_env_over_a_config() -> None:
    config = Config(backup_dir="/b", restore_date="20250101", restore_cell="billing")
    assert with_restore_env(config, {}) is config
    changed = with_restore_env(
        config,
        {"RESTORE_DATE": "20250102_0200", "RESTORE_CELL": "crm", "RESTORE_SKIP_PREBACKUP": "1"},
    )
    assert (changed.restore_date, changed.restore_cell, changed.restore_skip_prebackup) == (
        "20250102_0200",
        "crm",
        True,
    )


# -- unknown variables ---------------------------------------------------------------


def test_unknown_env_suggests_the_known_name() -> None:
    found = dict(
        unknown_env(
            {
                "BACKUP_TARGET": "local,s3",
                "BACKUP_CELL": "crm",
                "RESTORE_CEL": "crm",
                "RESTORE_SKIP_PRE_BACKUP": "1",
                "BACKUP_S3_BUKET": "b",
                "BACKUP_CELL_CRM_PATH": "/srv/crm",
                "BACKUP_TARGET_DR": "memory://dr",
                "BACKUP_WHATEVER": "1",
                # known ones and families are not reported
                "BACKUP_TARGETS": "local",
                "BACKUP_CELL_CRM_PATHS": "/srv/crm",
                "BACKUP_CELL_USER_CENTER_EXCLUDE": "*.tmp",
                "BACKUP_TARGET_DR_URL": "memory://dr",
                "PATH": "/usr/bin",
                "AWS_ACCESS_KEY_ID": "x",
            }
        )
    )
    assert found == {
        "BACKUP_TARGET": "BACKUP_TARGETS",
        "BACKUP_CELL": "BACKUP_CELLS",
        "RESTORE_CEL": "RESTORE_CELL",
        "RESTORE_SKIP_PRE_BACKUP": "RESTORE_SKIP_PREBACKUP",
        "BACKUP_S3_BUKET": "BACKUP_S3_BUCKET",
        "BACKUP_CELL_CRM_PATH": "BACKUP_CELL_<NAME>_PATHS",
        "BACKUP_TARGET_DR": "BACKUP_TARGET_<NAME>_URL",
        "BACKUP_WHATEVER": None,
    }
    assert unknown_env(dict.fromkeys(KNOWN_ENV, "x")) == []


# -- TOML ------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cellvault.toml"
    path.write_text(text)
    return path


def test_toml_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
backup_dir = "/backup/paas"
backup_type = "incremental"
codec = "gzip"
level = 6
jobs = 4
max_chain = 10
checksum = true
verify_after_backup = false
lock_ttl = 30.5
restore_into = "/tmp/restored"

[cells.crm]
paths = ["/srv/crm/data", "/srv/crm/uploads"]
exclude = ["*.tmp", "cache/"]

[cells.billing]
paths = "/srv/billing"

[targets.local]
url = "/backup/paas"

[targets.s3]
url = "s3://paas-backup/prod"
options = { key = "id", secret = "s", client_kwargs = { endpoint_url = "http://127.0.0.1:9000" } }

[alerts]
webhook = "https://example.invalid/hook"
""",
    )
    config = load_toml(path)
    assert config.backup_dir == Path("/backup/paas")
    assert (config.backup_type, config.codec, config.level, config.jobs) == (
        "incremental",
        "gzip",
        6,
        4,
    )
    assert (config.max_chain, config.checksum, config.verify_after_backup, config.lock_ttl) == (
        10,
        True,
        False,
        30.5,
    )
    assert config.restore_into == Path("/tmp/restored")
    assert config.cells == (
        Cell("crm", ["/srv/crm/data", "/srv/crm/uploads"], exclude=["*.tmp", "cache/"]),
        Cell("billing", ["/srv/billing"]),
    )
    assert config.targets == (
        TargetSpec("local", "/backup/paas"),
        TargetSpec(
            "s3",
            "s3://paas-backup/prod",
            {
                "key": "id",
                "secret": "s",
                "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
            },
        ),
    )
    assert config.extra == {"webhook": "https://example.invalid/hook"}


def test_toml_single_exclude_string_is_one_pattern(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'backup_dir = "/b"\n[cells.crm]\npaths = ["/srv/crm"]\nexclude = "*.tmp"\n'
    )
    assert load_toml(path).cells[0].exclude == ("*.tmp",)


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ('backupdir = "/b"\n', "unknown key 'backupdir'", "did you mean 'backup_dir'?"),
        (
            'backup_dir = "/b"\nbackup_typ = "full"\n',
            "unknown key 'backup_typ'",
            "did you mean 'backup_type'?",
        ),
        (
            'backup_dir = "/b"\n[cells.crm]\npath = ["/x"]\n',
            "unknown key 'path'",
            "did you mean 'paths'?",
        ),
        (
            'backup_dir = "/b"\n[cells.crm]\npaths = ["/x"]\nexcludes = []\n',
            "unknown key 'excludes'",
            "did you mean 'exclude'?",
        ),
        (
            'backup_dir = "/b"\n[targets.s3]\nurl = "s3://b"\noption = {}\n',
            "unknown key 'option'",
            "did you mean 'options'?",
        ),
    ],
)
def test_toml_unknown_keys(tmp_path: Path, text: str, message: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_toml(write(tmp_path, text))
    assert info.value.hint == hint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backup_dir = \n", "not valid TOML"),
        ("[cells.crm]\npaths = ['/x']\n", "backup_dir is missing"),
        ('backup_dir = "/b"\njobs = "four"\n', "jobs must be a whole number"),
        ('backup_dir = "/b"\njobs = true\n', "jobs must be a whole number"),
        ('backup_dir = "/b"\njobs = 0\n', "jobs must be at least 1"),
        (
            'backup_dir = "/b"\nverify_after_backup = "no"\n',
            "verify_after_backup must be true or false",
        ),
        ('backup_dir = "/b"\nbackup_type = "weekly"\n', "backup_type"),
        ('backup_dir = "/b"\nlock_ttl = "long"\n', "lock_ttl must be a number"),
        ("backup_dir = 5\n", "backup_dir must be a string"),
        ('backup_dir = "/b"\ncells = ["crm"]\n', r"\[cells\] must be a table"),
        ('backup_dir = "/b"\ntargets = ["s3"]\n', r"\[targets\] must be a table"),
        ('backup_dir = "/b"\n[cells.crm]\npaths = 5\n', "paths must be a list of strings"),
        ('backup_dir = "/b"\n[cells.crm]\n', "no paths configured"),
        ('backup_dir = "/b"\n[cells.Crm]\npaths = ["/x"]\n', "invalid cell name 'Crm'"),
        ('backup_dir = "/b"\n[cells.crm]\npaths = ["x"]\n', "not absolute"),
        ('backup_dir = "/b"\n[targets.s3]\noptions = {}\n', r"\[targets.s3\] needs a url"),
        ('backup_dir = "/b"\n[targets.s3]\nurl = "s3://b"\noptions = "x"\n', "must be a table"),
        ('backup_dir = "/b"\n[targets."a b"]\nurl = "/x"\n', "invalid target name"),
        ('backup_dir = "/b"\nalerts = 5\n', r"\[alerts\] must be a table"),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_toml(write(tmp_path, text))


def test_toml_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_toml(tmp_path)


# -- cells and the Config object --------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "Crm", "-crm", "_crm", "crm!", "crm/x", "..", "a b", "x" * 65, "logs"]
)
def test_invalid_cell_names(name: str) -> None:
    with pytest.raises(ConfigError):
        Cell(name, ["/srv/data"])


@pytest.mark.parametrize("name", ["crm", "user-center", "c2", "0cell", "a_b", "x" * 64])
def test_valid_cell_names(name: str) -> None:
    assert Cell(name, ["/srv/data"]).name == name


def test_cell_paths_are_checked() -> None:
    with pytest.raises(ConfigError, match="not absolute"):
        Cell("crm", ["data"])
    with pytest.raises(ConfigError, match="same name"):
        Cell("crm", ["/a/data", "/b/data"])
    with pytest.raises(ConfigError, match="root"):
        Cell("crm", ["/"])
    with pytest.raises(ConfigError, match="no paths"):
        Cell("crm", [])


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="configured twice"):
        Config(backup_dir="/b", cells=[Cell("crm", ["/a"]), Cell("crm", ["/b"])])
    with pytest.raises(ConfigError, match="target local is configured twice"):
        Config(backup_dir="/b", targets=[TargetSpec("local", "/a"), TargetSpec("local", "/b")])
    config = Config(backup_dir="/b", cells=[Cell("crm", ["/a"]), Cell("billing", ["/c"])])
    assert config.cell("crm").paths == (Path("/a"),)
    with pytest.raises(ConfigError, match="unknown cell 'orders'") as info:
        config.cell("orders")
    assert info.value.hint == "configured cells: crm, billing"
    assert config.target_specs == (TargetSpec("local", "/b"),)
