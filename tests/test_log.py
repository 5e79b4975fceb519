"""Logging: secrets never reach a log, and the library is silent unless its host configures it."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellvault.log import MASK, configure_logging, get_logger, redact, redact_text


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        (
            "s3://AKIA:wJalrXUtn@s3.example.com/bucket",
            "wJalrXUtn",
            "s3://AKIA:***@s3.example.com/bucket",
        ),
        (
            "failed: https://admin:hunter2@nas.local:8443/x",
            "hunter2",
            "https://admin:***@nas.local:8443/x",
        ),
        ("s3://user:p@ss@host/b", "p@ss", "s3://user:***@host/b"),
        (
            "rsync://backup:rsyncpw@nas.local/module",
            "rsyncpw",
            "rsync://backup:***@nas.local/module",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAX%2F20250101"
            "&X-Amz-Signature=deadbeef&X-Amz-Security-Token=FwoGZX",
            "deadbeef",
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAX%2F20250101&X-Amz-Signature=deadbeef",
            "AKIAX",
            "X-Amz-Credential=***",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Signature=deadbeef&X-Amz-Security-Token=FwoGZX",
            "FwoGZX",
            "X-Amz-Security-Token=***",
        ),
        (
            "http://oss.example.com/o?OSSAccessKeyId=LTAI5t&Expires=1700000000&Signature=abc%3D",
            "abc%3D",
            "Expires=1700000000",
        ),
        (
            "http://oss.example.com/o?OSSAccessKeyId=LTAI5t&Signature=abc",
            "LTAI5t",
            "OSSAccessKeyId=***",
        ),
        (
            "POST https://oapi.dingtalk.com/robot/send?access_token=0123abcd&timestamp=1&sign=zz",
            "0123abcd",
            "timestamp=1",
        ),
        (
            "POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693axxx6-7aoc",
            "693axxx6",
            "send?key=***",
        ),
        (
            "env: AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG done",
            "wJalrXUtnFEMI",
            "AWS_SECRET_ACCESS_KEY=***",
        ),
        ("OSS_ACCESS_KEY_SECRET=abc123 and DB_PASSWORD=pw1", "abc123", "DB_PASSWORD=***"),
        ("GITHUB_TOKEN=ghp_123", "ghp_123", "GITHUB_TOKEN=***"),
        # libpq's keyword=value connection strings, in any case, quoted values whole.
        ("connect to host=db user=app password=hunter2 dbname=crm", "hunter2", "password=***"),
        ("host=db password='a b c' dbname=crm", "b c", "password=*** dbname=crm"),
        ("Passwd=pw9 next", "pw9", "Passwd=*** next"),
        # age identities and private keys (BACKUP_AGE_IDENTITY, the secret-store hook).
        (
            "identity AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQY7UCCC fails",
            "QYQSZQGP",
            "identity *** fails",
        ),
        (
            "key -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
            "-----END OPENSSH PRIVATE KEY----- unusable",
            "b3BlbnNzaC1rZXktdjEAAAAA",
            "key *** unusable",
        ),
        (
            "cut -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXkt",
            "b3BlbnNzaC1rZXkt",
            "cut ***",
        ),
    ],
)
def test_redact_text(text: str, secret: str, kept: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert kept in out
    assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "cell crm: path /srv/crm does not exist",
        "https://host:8080/a@b",  # no credentials: a port and a path
        "backup@nas.local:/srv/backup",
        "s3://bucket/prefix/cell_crm_20250101_020000.tar.zst",
        "BACKUP_DIR=/backup/paas",
        "archive cell_crm_20250101_020000 is encrypted to age1gu7emptctndw7pkc05p8wzpstsruk3fmwf2h8406r7uz42gvc40qm0admj",
        "BACKUP_AGE_IDENTITY=/etc/cellvault/age.key",
    ],
)
def test_redact_text_leaves_plain_text_alone(text: str) -> None:
    assert redact_text(text) == text


def test_redact_structures() -> None:
    value = {
        "password": "hunter2",
        "db_passwd": "x",
        "aws_secret": "y",
        "token": "t",
        "api_key": "k",
        "access_key": "ak",
        "credentials": {"a": "b"},
        "empty_password": "",
        "url": "s3://u:pw@host/b",
        "nested": {"Secret": "s", "list": ["https://u:pw@h/x", 3]},
        "count": 3,
        "ok": None,
    }
    out = redact(value)
    assert out["password"] == out["db_passwd"] == out["aws_secret"] == out["token"] == MASK
    assert out["api_key"] == out["access_key"] == out["credentials"] == MASK
    assert out["empty_password"] == ""  # nothing to hide, and it tells that it is empty
    assert out["url"] == "s3://u:***@host/b"
    assert out["nested"] == {"Secret": MASK, "list": ["https://u:***@h/x", 3]}
    assert out["count"] == 3 and out["ok"] is None
    assert redact(ValueError("bad s3://u:pw@h/x")) == "bad s3://u:***@h/x"


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, list[logging.Handler]]]:
    stream = io.StringIO()
    root = logging.getLogger("cellvault")
    level = root.level
    handlers: list[logging.Handler] = []
    yield stream, handlers
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


def test_json_events_are_redacted(capture: tuple[io.StringIO, list[logging.Handler]]) -> None:
    stream, handlers = capture
    handlers.append(configure_logging("json", logging.INFO, stream))
    log = get_logger("cellvault.test")
    log.info(
        "target.configured",
        password="hunter2",
        secret="s3cr3t",
        token="tok-123",
        options={"key": "AKIA", "secret": "wJalr"},
        url="s3://AKIA:wJalr@host/bucket",
        error="AWS_SECRET_ACCESS_KEY=wJalr2 was rejected",
        cell="crm",
    )
    log.bind(api_key="bound-secret").warning("bound.event")
    lines = stream.getvalue().splitlines()
    first, second = (json.loads(line) for line in lines)
    text = stream.getvalue()
    for secret in ("hunter2", "s3cr3t", "tok-123", "wJalr", "bound-secret"):
        assert secret not in text
    assert first["event"] == "target.configured" and first["cell"] == "crm"
    assert first["password"] == first["secret"] == first["token"] == MASK
    assert first["options"] == {"key": "AKIA", "secret": MASK}
    assert first["url"] == "s3://AKIA:***@host/bucket"
    assert first["level"] == "info" and first["logger"] == "cellvault.test" and "timestamp" in first
    assert second["api_key"] == MASK and second["level"] == "warning"


def test_console_events_are_redacted(capture: tuple[io.StringIO, list[logging.Handler]]) -> None:
    stream, handlers = capture
    handlers.append(configure_logging("console", logging.WARNING, stream))
    log = get_logger("cellvault.test")
    log.info("not.shown", password="p0")
    log.error("upload.failed", target="s3", password="p1", url="https://u:p2@h/x")
    text = stream.getvalue()
    assert "not.shown" not in text
    assert "upload.failed" in text and "target=s3" in text
    assert "p1" not in text and "p2" not in text and "p0" not in text


def test_tracebacks_can_be_summarized(capture: tuple[io.StringIO, list[logging.Handler]]) -> None:
    stream, handlers = capture
    handlers.append(configure_logging("console", logging.INFO, stream, tracebacks=False))
    log = get_logger("cellvault.test")
    try:
        raise OSError("disk full at s3://u:pw@h/x")
    except OSError:
        log.exception("backup.crashed", cell="crm")
    text = stream.getvalue()
    assert "Traceback" not in text
    assert "backup.crashed" in text and "OSError: disk full" in text
    assert "pw@" not in text
    stream.truncate(0)
    handlers.append(configure_logging("json", logging.INFO, stream))  # tracebacks by default
    try:
        raise OSError("boom")
    except OSError:
        log.exception("backup.crashed")
    assert "Traceback" in stream.getvalue()


LIBRARY_USER = """
    import sys
    from pathlib import Path
    import cellvault

    root = Path(sys.argv[1])
    (root / "crm").mkdir()
    (root / "crm" / "a.txt").write_text("a")
    blocker = root / "blocker"
    blocker.write_text("x")
    config = cellvault.Config(
        backup_dir=root / "backup",
        cells=[cellvault.Cell("crm", [root / "crm"]), cellvault.Cell("ghost", [root / "missing"])],
        targets=[cellvault.TargetSpec("local", str(root / "backup")),
                 cellvault.TargetSpec("nas", str(blocker / "nas"))],
    )
    vault = cellvault.Vault(config, load_entry_points=False)
    report = vault.backup()
    assert not report.ok  # errors and warnings were logged, to nobody
    assert vault.verify(targets=["local"]).ok
    restored = vault.restore("latest", cells=["crm"], into=root / "out")
    assert restored.ok
    try:
        vault.restore("20000101", cells=["crm"])
    except cellvault.ArchiveNotFound:
        pass
"""


def test_library_prints_nothing_unless_logging_is_configured(tmp_path: Path) -> None:
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(LIBRARY_USER))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKUP_", "RESTORE_", "PYTHONWARN"))
    }
    env["CELLVAULT_LOAD_PLUGINS"] = ""
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""


def test_a_host_application_gets_the_events_through_stdlib_logging(tmp_path: Path) -> None:
    """Events go to the stdlib logging tree under 'cellvault': a host's handler sees them."""
    from tests.helpers import SAMPLE, clock, make_vault, write_tree

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.INFO)
    root = logging.getLogger("cellvault")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        crm = write_tree(tmp_path / "crm", SAMPLE)
        assert make_vault(tmp_path / "backup", {"crm": [crm]}, clock=clock()).backup().ok
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    names = [r.msg.get("event") for r in records if isinstance(r.msg, dict)]
    assert "backup.started" in names and "archive.stored" in names
    assert all(r.name.startswith("cellvault") for r in records)
