"""The Prometheus textfile: written atomically after every run, parsed with prometheus_client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cellvault import TargetSpec, Vault, load_env
from tests.helpers import SAMPLE, clock, make_vault, utc, write_tree


def _metrics(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _key(cell: str, target: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"cell": cell, "target": target, **more}.items()))


def _vault(tmp_path: Path, **kwargs: Any) -> Vault:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    return make_vault(
        tmp_path / "backup",
        {"crm": [crm]},
        targets=[
            TargetSpec("local", str(tmp_path / "backup")),
            TargetSpec("nas", str(tmp_path / "nas")),
        ],
        metrics_file=tmp_path / "textfile" / "cellvault.prom",
        extra={"BACKUP_ALERT_LOG": "off"},
        clock=clock(),
        **kwargs,
    )


def test_metrics_after_backup_verify_and_drill(tmp_path: Path) -> None:
    vault = _vault(tmp_path)
    report = vault.backup()
    assert report.ok
    prom = tmp_path / "textfile" / "cellvault.prom"
    m = _metrics(prom)
    when = utc(2025, 1, 1, 2).timestamp()
    for target in ("local", "nas"):
        key = _key("crm", target)
        assert m["cellvault_last_success_timestamp_seconds"][key] == when
        assert m["cellvault_last_run_timestamp_seconds"][key] == when
        assert m["cellvault_last_run_success"][key] == 1
        assert m["cellvault_last_duration_seconds"][key] > 0
        assert m["cellvault_bytes_read"][key] == report.cells[0].bytes_read > 0
        assert m["cellvault_bytes_stored"][key] == report.cells[0].archive_size
        assert m["cellvault_failures_total"][key] == 0
        assert m["cellvault_last_verify_success"][_key("crm", target, level="read")] == 1
    assert vault.verify(level="drill", targets=["nas"]).ok
    m = _metrics(prom)
    assert m["cellvault_last_drill_success"] == {_key("crm", "nas"): 1}
    (rto,) = m["cellvault_drill_rto_seconds"].values()
    assert 0 < rto < 30
    # Nothing but the file itself: the temporary file was renamed into place.
    assert [p.name for p in prom.parent.iterdir()] == ["cellvault.prom"]


def test_failures_are_counted_across_runs(tmp_path: Path) -> None:
    vault = _vault(tmp_path)
    assert vault.backup().ok
    (tmp_path / "nas" / "crm").rename(tmp_path / "nas" / "crm.moved")
    (tmp_path / "nas" / "crm").write_text("a file where the cell's folder should be")
    for _ in range(2):
        assert not vault.backup().ok
    m = _metrics(tmp_path / "textfile" / "cellvault.prom")
    assert m["cellvault_failures_total"][_key("crm", "nas")] == 2
    assert m["cellvault_failures_total"][_key("crm", "local")] == 0
    assert m["cellvault_last_run_success"][_key("crm", "nas")] == 0
    # The last success stays the first run's; the last run is the newest.
    assert (
        m["cellvault_last_success_timestamp_seconds"][_key("crm", "nas")]
        == utc(2025, 1, 1, 2).timestamp()
    )
    assert (
        m["cellvault_last_run_timestamp_seconds"][_key("crm", "nas")]
        > m["cellvault_last_success_timestamp_seconds"][_key("crm", "nas")]
    )
    # A fresh vault on the same backup directory keeps counting.
    again = _vault(tmp_path)
    assert not again.backup().ok
    m = _metrics(tmp_path / "textfile" / "cellvault.prom")
    assert m["cellvault_failures_total"][_key("crm", "nas")] == 3


def test_metrics_file_from_the_environment(tmp_path: Path) -> None:
    config = load_env({"BACKUP_DIR": str(tmp_path), "BACKUP_METRICS_FILE": "textfile/cv.prom"})
    assert config.metrics_file == Path.cwd() / "textfile" / "cv.prom"


def test_unwritable_metrics_file_does_not_fail_the_run(tmp_path: Path) -> None:
    (tmp_path / "textfile").write_text("a file, not a directory")
    assert _vault(tmp_path).backup().ok


def test_write_metrics_on_demand(tmp_path: Path) -> None:
    vault = _vault(tmp_path, verify_after_backup=False)
    assert vault.backup().ok
    out = vault.write_metrics(tmp_path / "elsewhere.prom")
    assert out == tmp_path / "elsewhere.prom"
    names = {f.name for f in text_string_to_metric_families(out.read_text())}
    assert {"cellvault_last_success_timestamp_seconds", "cellvault_failures"} <= names
