"""Prometheus metrics as a textfile for node_exporter's textfile collector.

Set ``BACKUP_METRICS_FILE`` (or ``metrics_file``) to a path inside the
collector's directory (``--collector.textfile.directory``), ending in
``.prom``. After every backup, verify and drill run the vault rewrites it
from the state file, atomically (a temporary file renamed into place), so
node_exporter never reads half a file. Every series is labelled with
``cell`` and ``target``; see ``docs/monitoring.md`` for the list and sample
PromQL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["StateCollector", "render", "write_textfile"]

_LABELS = ["cell", "target"]


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or _LABELS)


class StateCollector(Collector):
    """Turns a state document (see :mod:`cellvault.state`) into metric families."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        families = _families()
        cells = self.state.get("cells", {})
        for cell in sorted(cells):
            for target in sorted(cells[cell]):
                _add_entry(families, [cell, target], cells[cell][target])
        yield from families.values()


def _families() -> dict[str, Metric]:
    """The metric families, empty, in the order the textfile lists them."""
    level = [*_LABELS, "level"]
    return {
        "success": _gauge(
            "cellvault_last_success_timestamp_seconds",
            "When the newest successful backup of the cell to the target was taken (Unix time).",
        ),
        "last_run": _gauge(
            "cellvault_last_run_timestamp_seconds",
            "When the last backup run of the cell to the target was taken, successful or not.",
        ),
        "last_ok": _gauge(
            "cellvault_last_run_success",
            "1 if the last backup run succeeded on the target, else 0.",
        ),
        "duration": _gauge(
            "cellvault_last_duration_seconds",
            "How long the last backup of the cell took (packing, upload and verify), in seconds.",
        ),
        "read": _gauge(
            "cellvault_bytes_read", "Bytes of the cell's files read by the last successful backup."
        ),
        "stored": _gauge(
            "cellvault_bytes_stored",
            "Bytes stored on the target by the last successful backup (the archive's size).",
        ),
        "failures": CounterMetricFamily(
            "cellvault_failures",
            "Failed backup runs of the cell on the target, counted since the state file was made.",
            labels=_LABELS,
        ),
        "verify_ok": _gauge(
            "cellvault_last_verify_success",
            "1 if the last verify at this level passed, else 0.",
            level,
        ),
        "verify_at": _gauge(
            "cellvault_last_verify_timestamp_seconds",
            "When the last verify at this level ran (Unix time).",
            level,
        ),
        "drill_ok": _gauge(
            "cellvault_last_drill_success", "1 if the last restore drill passed, else 0."
        ),
        "drill_rto": _gauge(
            "cellvault_drill_rto_seconds",
            "How long the last successful restore drill took: fetch, extract, check and health checks.",
        ),
        "drill_at": _gauge(
            "cellvault_last_drill_timestamp_seconds", "When the last restore drill ran (Unix time)."
        ),
    }


def _add_entry(families: Mapping[str, Any], labels: list[str], entry: Mapping[str, Any]) -> None:
    """Add the samples of one cell at one target (a state entry)."""
    f = families
    backup = entry.get("backup") or {}
    if entry.get("last_success") is not None:
        f["success"].add_metric(labels, float(entry["last_success"]))
    if backup:
        f["last_run"].add_metric(labels, float(backup.get("at", 0)))
        f["last_ok"].add_metric(labels, 1.0 if backup.get("ok") else 0.0)
        f["duration"].add_metric(labels, float(backup.get("duration", 0)))
    good = entry.get("last_good") or {}
    if good:
        f["read"].add_metric(labels, float(good.get("bytes_read", 0)))
        f["stored"].add_metric(labels, float(good.get("bytes_stored", 0)))
    f["failures"].add_metric(labels, float(entry.get("failures_total", 0)))
    for level, result in sorted((entry.get("verify") or {}).items()):
        f["verify_ok"].add_metric([*labels, level], 1.0 if result.get("ok") else 0.0)
        f["verify_at"].add_metric([*labels, level], float(result.get("at", 0)))
    drill = entry.get("drill") or {}
    if drill:
        f["drill_ok"].add_metric(labels, 1.0 if drill.get("ok") else 0.0)
        f["drill_at"].add_metric(labels, float(drill.get("at", 0)))
        if drill.get("ok") and drill.get("rto") is not None:
            f["drill_rto"].add_metric(labels, float(drill["rto"]))


def _registry(state: Mapping[str, Any]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    return registry


def render(state: Mapping[str, Any]) -> str:
    """The metrics of *state* in Prometheus's text format."""
    from prometheus_client import generate_latest

    return generate_latest(_registry(state)).decode()


def write_textfile(path: Path, state: Mapping[str, Any]) -> None:
    """Write the metrics of *state* to *path*, atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), _registry(state))
