"""Verify levels: quick (no download), read (read once, nothing unpacked), full (read back), drill."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import tarfile
import time
import types
from pathlib import Path
from typing import IO, Any, ClassVar

import hypothesis
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cellvault import ArchiveId, ArchiveMeta, Cell, Event, Selector, TargetSpec, Vault, hookimpl
from cellvault.cli import cli
from cellvault.errors import ConfigError
from cellvault.targets.base import ObjectStat, Target
from cellvault.targets.local import LocalTarget
from tests.helpers import SAMPLE, MemTarget, clock, logged, make_vault, snapshot, write_tree
from tests.servers.fixtures import OssBucket, S3Bucket


def _two_targets(tmp_path: Path, **kwargs: Any) -> Vault:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    billing = write_tree(tmp_path / "cells" / "billing", {"ledger.csv": "a,b\n1,2\n" * 100})
    return make_vault(
        tmp_path / "backup",
        {"crm": [crm], "billing": [billing]},
        targets=[
            TargetSpec("local", str(tmp_path / "backup")),
            TargetSpec("nas", str(tmp_path / "nas")),
        ],
        clock=clock(),
        extra={"BACKUP_ALERT_LOG": str(tmp_path / "alerts.log")},
        **kwargs,
    )


def _data(root: Path, cell: str) -> Path:
    (path,) = (root / cell).glob("cell_*.tar.zst")
    return path


def _own_copy(path: Path) -> None:
    """Give *path* an inode of its own: local targets on one file system hard-link the archive."""
    tmp = path.with_name(path.name + ".copy")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)


def _flip_a_byte(path: Path) -> None:
    _own_copy(path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _alerts(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "alerts.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_corrupt_copy_on_one_target_fails_full_verify_there_only(tmp_path: Path) -> None:
    events: list[Event] = []
    vault = _two_targets(tmp_path, on_event=events.append)
    assert vault.backup().ok
    _flip_a_byte(_data(tmp_path / "nas", "crm"))

    events.clear()
    report = vault.verify(level="full")
    # A check that stopped mid-read still counts its archive whole: the run reaches its total.
    last = [e.data for e in events if e.name == "progress"][-1]
    assert (last["fraction"], last["bytes_done"]) == (1.0, last["bytes_total"])
    outcome = {(r.archive.split("_")[1], r.target): r.ok for r in report.results}
    assert outcome == {
        ("crm", "local"): True,
        ("billing", "local"): True,
        ("crm", "nas"): False,
        ("billing", "nas"): True,
    }
    failed = next(r for r in report.results if not r.ok)
    assert "on target nas" in (failed.error or "")
    (alert,) = _alerts(tmp_path)
    assert (alert["operation"], alert["stage"], alert["cell"], alert["target"]) == (
        "verify",
        "verify",
        "crm",
        "nas",
    )
    assert alert["archive"] == failed.archive
    assert alert["run"] == report.run

    # The command line says the same, and exits 1.
    env = {"BACKUP_DIR": str(tmp_path / "backup"), "BACKUP_ALERT_LOG": str(tmp_path / "alerts.log")}
    env |= {"BACKUP_TARGETS": "local,nas", "BACKUP_NAS_PATH": str(tmp_path / "nas")}
    result = CliRunner().invoke(cli, ["verify", "--level", "full"], env=env)
    assert result.exit_code == 1
    assert "FAIL cell_crm_" in result.stderr and "on nas" in result.stderr
    assert result.stdout.count("ok   ") == 3
    assert [a["target"] for a in _alerts(tmp_path)] == ["nas", "nas"]

    # quick cannot see a flipped byte on a plain directory (same size): that is full's job.
    assert vault.verify(level="quick").ok


def _no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Archive data and manifest copies may not be read (sidecars, a few hundred bytes, may)."""
    original = LocalTarget.open_read

    def refuse(self: LocalTarget, key: str) -> Any:
        if key.endswith((".tar.zst", ".manifest.json.zst")):
            raise AssertionError(f"quick verify read {key}")
        return original(self, key)

    monkeypatch.setattr(LocalTarget, "open_read", refuse)


def test_quick_catches_a_truncated_object_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = _two_targets(tmp_path)
    assert vault.backup().ok
    data = _data(tmp_path / "nas", "crm")
    _own_copy(data)
    os.truncate(data, data.stat().st_size - 100)
    _no_reads(monkeypatch)
    report = vault.verify(level="quick")
    bad = [(r.target, r.error) for r in report.results if not r.ok]
    assert len(bad) == 1
    assert bad[0][0] == "nas"
    assert "truncated or replaced" in (bad[0][1] or "")
    assert all(r.checks == ("size",) for r in report.results if r.ok)


def test_quick_catches_a_swapped_or_missing_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = _two_targets(tmp_path)
    assert vault.backup().ok
    crm, billing = _data(tmp_path / "nas", "crm"), _data(tmp_path / "nas", "billing")
    _own_copy(crm)
    crm.write_bytes(billing.read_bytes())
    (tmp_path / "backup" / "billing" / f"{billing.name.split('.')[0]}.manifest.json.zst").unlink()
    _no_reads(monkeypatch)
    report = vault.verify(level="quick")
    errors = {(r.target, r.archive.split("_")[1]): r.error for r in report.results if not r.ok}
    assert set(errors) == {("nas", "crm"), ("local", "billing")}
    assert "sidecar says" in (errors["nas", "crm"] or "")
    assert "manifest copy is missing" in (errors["local", "billing"] or "")


def test_quick_after_backup_reads_nothing_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = _two_targets(tmp_path, verify_level="quick")
    _no_reads(monkeypatch)
    report = vault.backup()
    assert report.ok
    assert all(t.verified for c in report.cells for t in c.targets)
    entry = vault.state.entry("crm", "nas")
    assert entry["verify"]["quick"]["ok"] is True
    assert "full" not in entry["verify"]


def test_oss_quick_compares_the_crc64_oss_reports(tmp_path: Path, oss_bucket: OssBucket) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    vault = make_vault(
        tmp_path / "backup",
        {"crm": [crm]},
        targets=[TargetSpec("oss", oss_bucket.url, oss_bucket.storage_options)],
        extra={"BACKUP_ALERT_LOG": "off"},
    )
    report = vault.backup()
    assert report.ok
    (sidecar,) = vault.target("oss").archives("crm")
    assert set(sidecar.checksums) == {"crc64ecma"}
    ok = vault.verify(level="quick")
    assert ok.ok and ok.results[0].checks == ("size", "crc64ecma")
    # Same size, other bytes: only the store's own checksum can tell.
    key = f"crm/{sidecar.data_name}"
    original = oss_bucket.objects()[key]
    oss_bucket.oss2_bucket().put_object(key, bytes(b ^ 1 for b in original))
    bad = vault.verify(level="quick")
    assert not bad.ok
    assert "crc64ecma" in (bad.results[0].error or "")
    assert not vault.verify(level="full").ok


def test_s3_quick_compares_the_single_part_etag(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    vault = make_vault(
        tmp_path / "backup",
        {"crm": [crm]},
        targets=[TargetSpec("s3", s3_bucket.url, s3_bucket.storage_options)],
        extra={"BACKUP_ALERT_LOG": "off"},
    )
    assert vault.backup().ok
    (sidecar,) = vault.target("s3").archives("crm")
    assert set(sidecar.checksums) == {"md5"}
    assert vault.verify(level="quick").results[0].checks == ("size", "md5")
    fs = s3_bucket.fs()
    path = f"{s3_bucket.name}/crm/{sidecar.data_name}"
    fs.pipe_file(path, bytes(b ^ 1 for b in fs.cat_file(path)))
    bad = vault.verify(level="quick")
    assert not bad.ok and "md5" in (bad.results[0].error or "")


class HealthCheck:
    """Records what each drill restored; fails for the cells in *sick*."""

    def __init__(self, sick: frozenset[str] = frozenset()) -> None:
        self.seen: dict[str, Any] = {}
        self.sick = sick

    @hookimpl
    def cellvault_health_check(self, cell: Cell, meta: ArchiveMeta, root: Path) -> None:
        self.seen[cell.name] = (str(meta.id), root, snapshot(root))
        if cell.name in self.sick:
            raise RuntimeError(f"{cell.name}: ledger does not open")


def test_drill_restores_checks_and_measures(tmp_path: Path) -> None:
    health = HealthCheck()
    vault = _two_targets(tmp_path, plugins=[health])
    backup = vault.backup()
    assert backup.ok
    report = vault.verify(level="drill", targets=["nas"])
    assert report.ok, report
    assert {r.level for r in report.results} == {"drill"}
    crm = next(r for r in report.results if r.archive.startswith("cell_crm_"))
    assert crm.target == "nas"
    assert crm.files == 4 and crm.bytes == sum(len(v) for v in _bytes(SAMPLE).values())
    assert crm.rto is not None and 0 < crm.rto < 30
    archive, root, tree = health.seen["crm"]
    assert archive == crm.archive
    assert str(root).startswith(str(tmp_path / "backup" / ".cellvault" / "drill"))
    assert any(k.endswith("/config.yaml") for k in tree)
    # Cleaned up, and remembered.
    assert not (tmp_path / "backup" / ".cellvault" / "drill").exists()
    drill = vault.state.entry("crm", "nas")["drill"]
    assert drill["ok"] is True and drill["rto"] == round(crm.rto, 3)
    assert drill["archive"] == crm.archive
    assert drill == {
        "ok": True,
        "at": drill["at"],
        "archive": crm.archive,
        "error": None,
        "duration": round(crm.duration, 3),
        "rto": round(crm.rto, 3),
        "files": 4,
        "bytes": crm.bytes,
    }


def _bytes(files: dict[str, bytes | str]) -> dict[str, bytes]:
    return {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}


def test_drill_tree_matches_the_live_data(tmp_path: Path) -> None:
    health = HealthCheck()
    vault = _two_targets(tmp_path, plugins=[health])
    assert vault.backup().ok
    assert vault.verify(level="drill", cells=["crm"], targets=["local"]).ok
    _, _, tree = health.seen["crm"]
    (name,) = {k.split("/")[0] for k in tree}
    restored = {k.removeprefix(f"{name}/"): v for k, v in tree.items() if "/" in k}
    assert restored == snapshot(tmp_path / "cells" / "crm")


def test_failing_health_check_or_corrupt_copy_fails_the_drill(tmp_path: Path) -> None:
    vault = _two_targets(tmp_path, plugins=[HealthCheck(sick=frozenset({"billing"}))])
    assert vault.backup().ok
    _flip_a_byte(_data(tmp_path / "nas", "crm"))
    report = vault.verify(level="drill")
    result = {(r.archive.split("_")[1], r.target): r for r in report.results}
    assert result["crm", "local"].ok
    assert not result["crm", "nas"].ok
    assert "drill failed at fetch" in (result["crm", "nas"].error or "")
    assert not result["billing", "local"].ok
    assert "health check" in (result["billing", "local"].error or "")
    assert "ledger does not open" in (result["billing", "local"].error or "")
    alerts = {(a["cell"], a["target"]): a for a in _alerts(tmp_path)}
    assert set(alerts) == {("crm", "nas"), ("billing", "local"), ("billing", "nas")}
    assert {a["stage"] for a in alerts.values()} == {"drill"}
    failed = vault.state.entry("crm", "nas")["drill"]
    assert (failed["ok"], failed["rto"], failed["error"]) == (
        False,
        None,
        result["crm", "nas"].error,
    )
    assert not (tmp_path / "backup" / ".cellvault" / "drill").exists()


def test_drill_of_an_incremental_restores_its_chain(tmp_path: Path) -> None:
    health = HealthCheck()
    vault = _two_targets(tmp_path, plugins=[health])
    assert vault.backup(["crm"]).ok
    write_tree(tmp_path / "cells" / "crm", {"uploads/new.txt": "new\n"})
    inc = vault.backup(["crm"], kind="incremental")
    assert inc.cells[0].kind == "incremental"
    report = vault.verify(level="drill", cells=["crm"], targets=["nas"])
    assert report.ok
    assert report.results[0].archive == inc.cells[0].archive
    _, _, tree = health.seen["crm"]
    assert any(k.endswith("uploads/new.txt") for k in tree)


def test_cli_levels(tmp_path: Path) -> None:
    vault = _two_targets(tmp_path)
    assert vault.backup().ok
    env = {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_TARGETS": "local,nas",
        "BACKUP_NAS_PATH": str(tmp_path / "nas"),
    }
    runner = CliRunner()
    quick = runner.invoke(cli, ["verify", "--level", "quick", "--cell", "crm"], env=env)
    assert quick.exit_code == 0, quick.output
    assert quick.stdout.count("size as recorded") == 2
    read = runner.invoke(cli, ["verify", "--level", "read", "--cell", "crm"], env=env)
    assert read.exit_code == 0, read.output
    assert read.stdout.count("size, sha256, decompress, meta.json, manifest, chain") == 2
    drill = runner.invoke(
        cli, ["--json", "verify", "--level", "drill", "--target", "nas", "--cell", "crm"], env=env
    )
    assert drill.exit_code == 0, drill.output
    data = json.loads(drill.stdout)
    (result,) = data["results"]
    assert (result["level"], result["target"], result["files"]) == ("drill", "nas", 4)
    assert result["rto"] > 0
    text = runner.invoke(cli, ["verify", "--level", "drill", "--cell", "billing"], env=env)
    assert "(RTO)" in text.stdout
    bad = runner.invoke(cli, ["verify", "--level", "deep"], env=env)
    assert bad.exit_code == 2
    with pytest.raises(ConfigError) as unknown:
        vault.verify(level="deep")
    assert str(unknown.value) == (
        "unknown verify level 'deep' (use one of quick, read, full, drill)"
    )


# -- read: every byte once, decompressed to the end, nothing unpacked --------------


def _resign(root: Path, cell: str) -> None:
    """Make the sidecar of *cell* on *root* agree with its (damaged) data again.

    So that only the checks after the sha256 can catch the damage: as if the
    data had been damaged before it was hashed.
    """
    import hashlib

    data = _data(root, cell)
    (sidecar,) = (root / cell).glob("cell_*.json")
    body = json.loads(sidecar.read_text())
    raw = data.read_bytes()
    body["size"], body["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    sidecar.write_text(json.dumps(body))


def test_read_is_the_default_after_backup_and_unpacks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cellvault import extract

    def no_unpacking(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the read level parsed the members")

    monkeypatch.setattr(extract, "verify_archive", no_unpacking)
    monkeypatch.setattr("cellvault.ops.verify.verify_archive", no_unpacking)
    vault = _two_targets(tmp_path)
    report = vault.backup()
    assert report.ok, report
    assert all(t.verified for c in report.cells for t in c.targets)
    entry = vault.state.entry("crm", "nas")
    assert entry["verify"]["read"]["ok"] is True
    checks = vault.verify(level="read")
    assert checks.ok
    assert all(r.checks[:3] == ("size", "sha256", "decompress") for r in checks.results)


def test_read_catches_a_flipped_byte(tmp_path: Path) -> None:
    vault = _two_targets(tmp_path)
    assert vault.backup().ok
    _flip_a_byte(_data(tmp_path / "nas", "crm"))
    report = vault.verify(level="read")
    (bad,) = [r for r in report.results if not r.ok]
    assert (bad.target, bad.archive.split("_")[1]) == ("nas", "crm")
    # The codec's checksum fails first, as the data is read; the sha256 at its end.
    assert "Restored data doesn't match checksum" in (bad.error or "")
    assert "the stored copy is damaged" in (bad.error or "")


def test_read_catches_damage_the_sidecar_agrees_with(tmp_path: Path) -> None:
    """Damage inside the compressed data: the codec's content checksum refuses it."""
    big = tmp_path / "cells" / "crm"
    write_tree(big, {f"f{i}.txt": f"line {i} of some text\n" * 2000 for i in range(20)})
    vault = make_vault(tmp_path / "backup", {"crm": [big]}, clock=clock())
    assert vault.backup().ok
    data = _data(tmp_path / "backup", "crm")
    _flip_a_byte(data)
    _resign(tmp_path / "backup", "crm")
    report = vault.verify(level="read")
    (bad,) = report.results
    assert not bad.ok
    assert "does not decompress" in (bad.error or "")


def test_read_catches_a_truncated_stream_and_a_bad_meta(tmp_path: Path) -> None:
    import zstandard

    vault = _two_targets(tmp_path)
    assert vault.backup().ok
    # A whole zstd frame of a tar stream cut short: decompresses, but the tar has no end.
    data = _data(tmp_path / "nas", "crm")
    tar = zstandard.ZstdDecompressor().stream_reader(data.read_bytes()).read()
    _own_copy(data)
    data.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(tar[:-10240]))
    _resign(tmp_path / "nas", "crm")
    # The first member of billing's archive renamed: meta.json is no longer first.
    other = _data(tmp_path / "nas", "billing")
    tar = bytearray(zstandard.ZstdDecompressor().stream_reader(other.read_bytes()).read())
    at = tar.find(b"meta.json")
    tar[at : at + 9] = b"meta.jsoN"
    _own_copy(other)
    other.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(bytes(tar)))
    _resign(tmp_path / "nas", "billing")
    report = vault.verify(level="read", targets=["nas"])
    errors = {r.archive.split("_")[1]: r.error or "" for r in report.results if not r.ok}
    assert "no end-of-archive blocks" in errors["crm"]
    assert "meta.json" in errors["billing"]
    damaged = "(the stored copy is damaged; verify other targets and restore from a good one)"
    for r in report.results:
        assert (
            r.error
            == {
                "crm": f"archive {r.archive}, on target nas: the tar stream has no end-of-archive "
                f"blocks (truncated) {damaged}",
                "billing": f"archive {r.archive}, member meta.json, on target nas: meta.json is not "
                f"the first member {damaged}",
            }[r.archive.split("_")[1]]
        )


def test_read_after_backup_compares_the_manifest_copy_byte_for_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = _two_targets(tmp_path)
    original = LocalTarget.put_file

    def damaging(self: LocalTarget, local: Path, key: str) -> None:
        original(self, local, key)
        if self.name == "nas" and key.endswith(".manifest.json.zst"):
            dest = tmp_path / "nas" / key
            _own_copy(dest)
            dest.write_bytes(dest.read_bytes() + b"\0")

    monkeypatch.setattr(LocalTarget, "put_file", damaging)
    report = vault.backup()
    assert not report.ok
    failed = {(c.cell, t.target): t for c in report.cells for t in c.targets if not t.ok}
    assert set(failed) == {("crm", "nas"), ("billing", "nas")}
    assert all(t.stage == "verify" for t in failed.values())
    assert all("manifest copy differs" in (t.error or "") for t in failed.values())
    # The copy that did not verify was uncommitted there, and only there.
    assert vault.target("nas").archive_ids("crm") == []
    assert len(vault.target("local").archive_ids("crm")) == 1


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@given(
    damage=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3
    ),
    cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)),
)
def test_read_refuses_any_damage_its_sidecar_agrees_with(
    tmp_path_factory: pytest.TempPathFactory,
    damage: list[tuple[float, int]],
    cut: float | None,
) -> None:
    """Flipped bits and truncations anywhere: ArchiveCorrupt, or the very same content."""
    import zstandard

    tmp_path = tmp_path_factory.mktemp("fuzz")
    vault = make_vault(
        tmp_path / "backup",
        {"crm": [write_tree(tmp_path / "cells" / "crm", SAMPLE)]},
        clock=clock(),
    )
    assert vault.backup().ok
    data = _data(tmp_path / "backup", "crm")
    good = data.read_bytes()
    raw = bytearray(good)
    for where, bits in damage:
        raw[int(where * len(raw))] ^= bits
    if cut is not None:
        del raw[int(cut * len(raw)) :]
    _own_copy(data)
    data.write_bytes(bytes(raw))
    _resign(tmp_path / "backup", "crm")
    (result,) = vault.verify(level="read").results
    if result.ok:
        original = zstandard.ZstdDecompressor().stream_reader(good).read()
        damaged = zstandard.ZstdDecompressor().stream_reader(bytes(raw)).read()
        assert damaged == original
    else:
        assert "archive cell_crm_" in (result.error or "")


def test_zstd_frame_walk_accepts_whole_streams_and_refuses_every_cut() -> None:
    import os as _os

    import zstandard

    from cellvault.integrity import ZstdFrames as _ZstdFrames

    def walk(data: bytes, step: int) -> None:
        frames = _ZstdFrames()
        for i in range(0, len(data), step):
            frames.feed(data[i : i + step])
        frames.finish()

    text = b"".join(b"line %d of a text\n" % i for i in range(40_000))
    noise = _os.urandom(300_000)
    params = zstandard.ZstdCompressionParameters.from_level(
        3, threads=2, job_size=1 << 20, write_checksum=True
    )
    threaded = zstandard.ZstdCompressor(compression_params=params).compress(text + noise)
    plain = zstandard.ZstdCompressor(write_checksum=False).compress(noise[:5000])
    skippable = (0x184D2A53).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    for whole in (threaded, plain, threaded + plain, skippable + plain):
        for step in (1, 7, 4096, len(whole)):
            walk(whole, step)
    for whole in (threaded, plain + threaded):
        for cut in sorted({1, 4, 5, 9, len(whole) // 2, len(whole) - 4, len(whole) - 1}):
            with pytest.raises(EOFError):
                walk(whole[:cut], 997)
    with pytest.raises(EOFError):
        walk(b"", 1)
    with pytest.raises(zstandard.ZstdError):
        walk(plain + b"garbage!", 4096)


def test_read_memory_stays_bounded_on_a_very_compressible_archive(tmp_path: Path) -> None:
    """300 MB of zeros is a few kB of zstd: the check must not decompress it in one piece."""
    import subprocess
    import sys

    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    with open(cell / "sparse.img", "wb") as f:
        f.truncate(300 << 20)
    vault = make_vault(
        tmp_path / "backup", {"crm": [cell]}, clock=clock(), verify_after_backup=False
    )
    assert vault.backup().ok
    script = (
        "import sys; from pathlib import Path\n"
        "from tests.helpers import make_vault\n"
        "v = make_vault(Path(sys.argv[1]), {'crm': [Path(sys.argv[2])]})\n"
        "r = v.verify(level='read')\n"
        "assert r.ok, r\n"
        # VmHWM: this process's own peak (ru_maxrss would carry pytest's across exec).
        "print(next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "backup"), str(cell)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    peak_mib = int(out.stdout.split()[-1]) / 1024
    assert peak_mib < 150, f"{peak_mib:.0f} MiB"


# -- what each result leaves: events, state, the copy of the manifest -------------------


def test_each_result_is_logged_and_remembered_per_cell_target_and_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[Event] = []
    vault = _two_targets(tmp_path, on_event=events.append)
    write_tree(tmp_path / "cells" / "crm", {"big.bin": os.urandom(3 << 19)})  # read in blocks
    assert vault.backup().ok
    caplog.set_level(logging.INFO, logger="cellvault.ops.verify")
    before = time.time()
    events.clear()
    report = vault.verify(level="read", cells=["crm"], targets=["nas"])
    assert report.ok and report.level == "read"
    (result,) = report.results
    # Progress: the checks, and the bytes and files of the archives read.
    (sidecar,) = vault.target("nas").archives("crm")
    last = [e.data for e in events if e.name == "progress"][-1]
    assert (last["unit"], last["cells_done"], last["cells_total"]) == ("checks", 1, 1)
    assert last["bytes_done"] == last["bytes_total"] == sidecar.size
    assert last["files_done"] == last["files_total"] == sidecar.files > 0
    records = [r.msg for r in caplog.records if r.name == "cellvault.ops.verify"]
    assert isinstance(records[0], dict)
    assert [r["event"] for r in records] == ["verify.started", "verify.ok", "verify.finished"]  # type: ignore[index]
    started, ok, finished = records
    assert {k: started[k] for k in ("run", "verify_level", "cells", "targets")} == {  # type: ignore[index]
        "run": report.run,
        "verify_level": "read",
        "cells": ["crm"],
        "targets": ["nas"],
    }
    assert (ok["run"], ok["verify_level"], ok["cell"], ok["target"]) == (  # type: ignore[index]
        report.run,
        "read",
        "crm",
        "nas",
    )
    assert (ok["archive"], ok["members"], ok["checks"]) == (  # type: ignore[index]
        result.archive,
        0,
        list(result.checks),
    )
    assert (finished["run"], finished["verify_level"], finished["ok"]) == (report.run, "read", True)  # type: ignore[index]
    assert finished["duration"] == round(report.duration, 3) > 0  # type: ignore[index]
    entry = vault.state.entry("crm", "nas")["verify"]
    assert entry["read"] == {
        "ok": True,
        "at": entry["read"]["at"],
        "archive": result.archive,
        "error": None,
        "duration": round(result.duration, 3),
    }
    assert before <= entry["read"]["at"] <= time.time()

    # A target whose listing fails: a failed result for the cell, remembered without an archive.
    shutil.rmtree(tmp_path / "nas" / "crm")
    (tmp_path / "nas" / "crm").write_text("not a folder\n")
    events.clear()
    report = vault.verify(level="quick", cells=["crm"])
    assert not report.ok
    last = [e.data for e in events if e.name == "progress"][-1]
    assert (last["cells_done"], last["cells_total"], last["bytes_total"]) == (2, 2, 0)  # reads none
    results = {r.target: r for r in report.results}
    assert results["local"].ok
    bad = results["nas"]
    assert (bad.ok, bad.archive, bad.level) == (False, "cell_crm", "quick")
    assert "list archives of cell crm" in (bad.error or "")
    entry = vault.state.entry("crm", "nas")["verify"]
    assert (entry["quick"]["ok"], entry["quick"]["archive"]) == (False, None)
    assert entry["quick"]["error"] == bad.error
    assert entry["read"]["ok"] is True  # each level keeps its own last result
    alert = _alerts(tmp_path)[-1]
    assert (alert["stage"], alert["cell"], alert["target"]) == ("verify", "crm", "nas")
    assert alert["error"] == bad.error
    # The bytes count as they are read, not only when the check ends: with a run clock
    # that moves a second a call, each step is an event.
    import cellvault.run

    ticks = itertools.count(time.monotonic())
    clock = types.SimpleNamespace(**(vars(time) | {"monotonic": lambda: float(next(ticks))}))
    monkeypatch.setattr(cellvault.run, "time", clock)
    for level in ("quick", "read", "full"):
        events.clear()
        assert vault.verify(level=level, cells=["crm"], targets=["local"]).ok
        progress = [e.data for e in events if e.name == "progress" and not e.data["cells_done"]]
        steps = [(e["bytes_done"], e["files_done"]) for e in progress]
        if level == "quick":  # reads nothing: counts checks alone
            assert steps == []
        else:  # the bytes as they are read, then the archive's files, of totals known at once
            assert {(sidecar.size, 0), (sidecar.size, sidecar.files)} <= set(steps), level
            totals = {(e["bytes_total"], e["files_total"]) for e in progress}
            assert totals == {(sidecar.size, sidecar.files)}, level
    # Every archive checked adds its files to the cell's count.
    write_tree(tmp_path / "cells" / "crm", {"more.txt": "more\n"})
    assert vault.backup(["crm"], kind="incremental", targets=["local"]).ok
    first, second = vault.target("local").archives("crm")
    events.clear()
    assert vault.verify(level="read", cells=["crm"], targets=["local"], all_archives=True).ok
    files = {
        e.data["files_done"] for e in events if e.name == "progress" and not e.data["cells_done"]
    }
    assert {first.files, first.files + second.files} <= files


def test_full_refuses_a_manifest_copy_that_differs_from_the_archives_own(tmp_path: Path) -> None:
    """Restores plan from the copy: full compares it with the manifest.json inside the archive."""
    import zstandard

    vault = _two_targets(tmp_path)
    assert vault.backup().ok
    folder = tmp_path / "nas" / "crm"
    (copy,) = folder.glob("*.manifest.json.zst")
    (sidecar,) = folder.glob("cell_*.json")
    body = json.loads(sidecar.read_text())
    del body["manifest_sha256"], body["manifest_size"]  # unsigned: rewritten as easily as the copy
    sidecar.write_text(json.dumps(body))
    manifest = json.loads(zstandard.ZstdDecompressor().stream_reader(copy.read_bytes()).read())
    (entry,) = [e for e in manifest["entries"] if e["path"].endswith("config.yaml")]
    entry["mode"] ^= 0o002
    _own_copy(copy)
    copy.write_bytes(zstandard.ZstdCompressor().compress(json.dumps(manifest).encode()))
    report = vault.verify(level="full", cells=["crm"])
    results = {r.target: r for r in report.results}
    assert results["local"].ok and results["local"].members == len(manifest["entries"])
    assert results["local"].checks == ()
    assert 0 < results["nas"].duration < 60
    assert results["nas"].error == (
        f"archive {results['nas'].archive}, on target nas: the stored manifest copy differs "
        "from the archive's manifest.json (take a new full backup; restore this archive "
        "from another target)"
    )


class HeadTarget(MemTarget):
    """A store whose HEAD reports an MD5 in capital hex and a CRC-64, as some S3-compatible ones do."""

    stat_checksums = frozenset({"md5", "crc64ecma"})

    def stat(self, key: str) -> ObjectStat:
        import crcmod

        with self._lock:
            if key not in self.data:
                raise FileNotFoundError(key)
            data = self.data[key]
        crc = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=(1 << 64) - 1)
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest().upper()
        return ObjectStat(len(data), {"md5": md5, "crc64ecma": str(crc(data))})


class HeadPlugin:
    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> Target | None:
        return HeadTarget(spec) if spec.scheme == "head" else None


def test_quick_compares_each_checksum_the_sidecar_recorded_whatever_its_case(
    tmp_path: Path,
) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    url = f"head://{tmp_path.name}-{time.monotonic_ns()}"
    vault = make_vault(
        tmp_path / "backup",
        {"crm": [crm]},
        targets=[TargetSpec("head", url)],
        plugins=[HeadPlugin()],
        extra={"BACKUP_ALERT_LOG": "off"},
        verify_level="quick",
    )
    assert vault.backup().ok
    target = vault.target("head")
    assert isinstance(target, HeadTarget)
    (sidecar,) = target.archives("crm")
    assert set(sidecar.checksums) == {"md5", "crc64ecma"}
    assert sidecar.checksums["md5"].islower()  # hashlib's; the store answers in capitals
    assert vault.verify(level="quick").results[0].checks == ("size", "crc64ecma", "md5")
    # An archive whose sidecar recorded the MD5 alone: that one is compared, and still refused.
    key = f"crm/{sidecar.data_name}"
    body = json.loads(target.data[f"crm/{sidecar.id}.json"])
    del body["checksums"]["crc64ecma"]
    target.put_bytes(f"crm/{sidecar.id}.json", json.dumps(body).encode())
    assert vault.verify(level="quick").results[0].checks == ("size", "md5")
    target.put_bytes(key, bytes(b ^ 1 for b in target.data[key]))
    (bad,) = vault.verify(level="quick").results
    assert not bad.ok
    stored = hashlib.md5(target.data[key], usedforsecurity=False).hexdigest().upper()
    assert bad.error == (
        f"archive {sidecar.id}, on target head: the store's md5 of the data is {stored}, the "
        f"sidecar recorded {sidecar.checksums['md5']} (the object was replaced or damaged) "
        "(restore from another target; run 'cellvault verify --level full' to read it back)"
    )


def test_quick_checks_each_link_of_a_chain_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = _two_targets(tmp_path)
    assert vault.backup(["crm"]).ok
    for n in (1, 2):
        write_tree(tmp_path / "cells" / "crm", {f"uploads/new{n}.txt": f"new {n}\n"})
        assert vault.backup(["crm"], kind="incremental").cells[0].kind == "incremental"
    full, inc1, inc2 = (s.id for s in vault.target("nas").archives("crm"))
    read = vault.verify(level="read", cells=["crm"], targets=["nas"], all_archives=True)
    assert [r.checks[-1] for r in read.results] == ["chain", "chain-digest", "chain-digest"]
    _no_reads(monkeypatch)
    report = vault.verify(level="quick", cells=["crm"], all_archives=True)
    assert report.ok, [r.error for r in report.results]
    checks = {(r.archive, r.target): r.checks for r in report.results}
    assert checks[str(full), "nas"] == ("size",)
    assert checks[str(inc1), "nas"] == checks[str(inc2), "nas"] == ("size", "chain-quick")
    data = _data_of(tmp_path / "nas", full)
    _own_copy(data)
    os.truncate(data, data.stat().st_size - 1)
    report = vault.verify(level="quick", cells=["crm"], targets=["nas"], all_archives=True)
    errors = {r.archive: r.error for r in report.results}
    assert errors[str(full)] == (
        f"archive {full}, on target nas: stored data is {data.stat().st_size} bytes, the sidecar "
        f"says {data.stat().st_size + 1} (truncated or replaced) (restore from another target; "
        "run 'cellvault verify --level full' to read it back)"
    )
    for inc in (inc1, inc2):
        assert errors[str(inc)] == (
            f"archive {inc}, on target nas: its chain is broken: archive {full}, which it "
            f"depends on, is damaged (stored data is {data.stat().st_size} bytes, the sidecar "
            f"says {data.stat().st_size + 1} (truncated or replaced)) (this archive cannot be "
            "restored from this target; restore from another target, and take a full backup "
            "(the next backup is a full one by itself))"
        )


def _data_of(root: Path, ident: ArchiveId) -> Path:
    (path,) = (root / ident.cell).glob(f"{ident}.tar.*")
    return path


def test_read_and_full_refuse_an_archive_whose_files_are_held_by_one_not_committed(
    tmp_path: Path,
) -> None:
    """The manifest's holders are the chain too: an archive held nowhere here cannot restore."""
    from tests.archive_helpers import dir_entry, file_entry, member, plant_archive

    live = write_tree(tmp_path / "cells" / "crm", {"a.txt": "a\n"})
    vault = make_vault(tmp_path / "backup", {"crm": [live]}, extra={"BACKUP_ALERT_LOG": "off"})
    ident = ArchiveId.parse("cell_crm_20250101_020000")
    elsewhere = "cell_crm_20240101_020000"
    plant_archive(
        tmp_path / "backup",
        ident,
        [member("data/crm", kind=tarfile.DIRTYPE, mode=0o755), member("data/crm/a.txt", b"a\n")],
        [
            dir_entry("data/crm"),
            file_entry("data/crm/a.txt", b"a\n", str(ident)),
            file_entry("data/crm/b.txt", b"b\n", elsewhere),
        ],
        roots={"crm": str(live)},
    )
    assert vault.verify(level="quick").ok  # names no holder: the meta's chain is empty
    for level in ("read", "full"):
        (result,) = vault.verify(level=level).results
        assert result.error == (
            f"archive {ident}, on target local: its chain needs archive {elsewhere}, which is "
            "not committed on this target (restore from another target, or take a full backup)"
        ), level


def test_quick_and_read_name_exactly_what_differs_from_the_sidecar(tmp_path: Path) -> None:
    vault = _two_targets(tmp_path)
    assert vault.backup().ok
    nas = tmp_path / "nas"
    data = _data(nas, "crm")
    ident = data.name.split(".")[0]
    (sidecar,) = (nas / "crm").glob("cell_*.json")
    _own_copy(sidecar)
    body = json.loads(sidecar.read_text())
    damaged = "(the stored copy is damaged; verify other targets and restore from a good one)"

    def error(level: str) -> str | None:
        (result,) = vault.verify(level=level, cells=["crm"], targets=["nas"]).results
        return result.error

    # An unsigned sidecar edited: the stored bytes no longer match what it records.
    sidecar.write_text(json.dumps(body | {"sha256": "0" * 64}))
    assert error("read") == (
        f"archive {ident}, on target nas: sha256 of the stored data differs from the sidecar "
        + damaged
    )
    size = body["size"]
    sidecar.write_text(json.dumps(body | {"size": size + 1}))
    assert error("read") == (
        f"archive {ident}, on target nas: stored data is {size} bytes, the sidecar says "
        f"{size + 1} " + damaged
    )
    sidecar.write_text(json.dumps(body))
    assert error("read") is None
    (copy,) = (nas / "crm").glob("*.manifest.json.zst")
    copy.rename(tmp_path / "copy")
    assert error("quick") == f"archive {ident}, on target nas: manifest copy is missing"
    (tmp_path / "copy").rename(copy)
    data.unlink()
    assert error("quick") == (
        f"archive {ident}, on target nas: data is missing although the sidecar exists "
        "(restore from another target; the next backup stores a new copy)"
    )


def test_a_forged_record_fails_its_own_cell_on_its_own_target_alerted_once(
    tmp_path: Path,
) -> None:
    import datetime as dt

    vault = _two_targets(tmp_path)
    assert vault.backup().ok
    folder = tmp_path / "nas" / "crm"
    (sidecar,) = folder.glob("cell_*.json")
    real = ArchiveId.parse(sidecar.stem)
    older = ArchiveId("crm", real.when - dt.timedelta(seconds=1))
    body = json.loads(sidecar.read_text()) | {"id": str(older), "size": -1}
    (folder / f"{older}.json").write_text(json.dumps(body))
    for _ in range(2):
        report = vault.verify()
        failed = [(r.archive, r.target) for r in report.results if not r.ok]
        assert failed == [(str(older), "nas")]
        assert len(report.results) == 5  # each cell's newest on each target, and the forged one
    checks = [a for a in _alerts(tmp_path) if a["stage"] == "check"]
    assert len(checks) == 1
    assert (checks[0]["cell"], checks[0]["target"]) == ("crm", "nas")
    assert checks[0]["error"].startswith(f"ignored crm/{older}.json: ")
    # Another cell's forged record, listed first, hides nothing of this one's.
    (other,) = (tmp_path / "nas" / "billing").glob("cell_*.json")
    billing = ArchiveId("billing", ArchiveId.parse(other.stem).when - dt.timedelta(seconds=1))
    (other.parent / f"{billing}.json").write_bytes(b"{")
    report = vault.verify(["billing", "crm"], targets=["nas"])
    assert [r.archive for r in report.results if not r.ok] == [str(billing), str(older)]


def test_read_checks_the_digest_of_a_parent_larger_than_a_block(tmp_path: Path) -> None:
    live = write_tree(tmp_path / "cells" / "crm", {"big.bin": os.urandom(3 << 19), "a.txt": "a"})
    vault = make_vault(tmp_path / "backup", {"crm": [live]}, clock=clock())
    assert vault.backup().ok
    write_tree(live, {"a.txt": "b"})
    assert vault.backup(kind="incremental").cells[0].kind == "incremental"
    full, inc = vault.target("local").archives("crm")
    assert full.size > 1 << 20  # read in more than one block
    (result,) = vault.verify(level="read").results
    assert result.ok and result.checks[-1] == "chain-digest"
    data = _data_of(tmp_path / "backup", full.id)
    _flip_a_byte(data)
    (result,) = vault.verify(level="read").results
    assert result.error == (
        f"archive {inc.id}, on target local: its chain is broken: archive {full.id}, which it "
        f"depends on, is damaged (its data does not match its sidecar's sha256 ({full.size} "
        "bytes read)) (this archive cannot be restored from this target; restore from another "
        "target, and take a full backup (the next backup is a full one by itself))"
    )


class _Failing(io.RawIOBase):
    """A stream whose reads fail, as a store's connection dropped mid-read would."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise PermissionError("read refused")


class FaultyTarget(MemTarget):
    """A store that fails the calls named in :attr:`faults`, (call, key suffix) -> error, once or always."""

    faults: ClassVar[dict[tuple[str, str], tuple[type[Exception], bool]]] = {}

    def _fault(self, call: str, key: str) -> None:
        for (name, suffix), (error, always) in list(self.faults.items()):
            if name == call and key.endswith(suffix):
                if not always:
                    del self.faults[name, suffix]
                raise error(f"{call} refused")

    def stat(self, key: str) -> ObjectStat:
        self._fault("stat", key)
        return super().stat(key)

    def open_read(self, key: str) -> IO[bytes]:
        self._fault("open", key)
        f = super().open_read(key)
        try:
            self._fault("read", key)
        except PermissionError:
            return io.BufferedReader(_Failing())
        return f


class FaultyPlugin:
    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> Target | None:
        return FaultyTarget(spec) if spec.scheme == "faulty" else None


def test_a_store_that_fails_a_call_is_named_and_retried_not_taken_for_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FaultyTarget, "faults", {})
    faults = FaultyTarget.faults
    crm = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    url = f"faulty://{tmp_path.name}-{time.monotonic_ns()}"
    vault = make_vault(
        tmp_path / "backup",
        {"crm": [crm]},
        targets=[TargetSpec("store", url)],
        plugins=[FaultyPlugin()],
        extra={"BACKUP_ALERT_LOG": "off"},
    )
    # The check after the backup reads the manifest copy back: a transient failure is retried.
    faults["open", ".manifest.json.zst"] = (ConnectionError, False)
    assert vault.backup().ok
    assert not faults
    # Refused for good: the backup names the call that failed, not a damaged copy.
    for call in ("open", "read"):
        faults[call, ".manifest.json.zst"] = (PermissionError, True)
        report = vault.backup()
        (outcome,) = report.cells[0].targets
        assert outcome.stage == "verify", call
        assert f"cannot read manifest of {report.cells[0].archive} (PermissionError: " in (
            outcome.error or ""
        ), call
        del faults[call, ".manifest.json.zst"]
    (sidecar,) = vault.target("store").archives("crm")

    def error(level: str) -> str:
        (result,) = vault.verify(level=level).results
        return result.error or ""

    for suffix, what in ((".tar.zst", "stat archive"), (".manifest.json.zst", "stat manifest of")):
        faults["stat", suffix] = (ConnectionError, False)
        assert error("quick") == ""  # retried
        faults["stat", suffix] = (PermissionError, True)
        assert error("quick").startswith(
            f"target store: cannot {what} {sidecar.id} (PermissionError: stat refused)"
        )
        del faults["stat", suffix]
    faults["read", ".tar.zst"] = (PermissionError, True)
    assert error("read").startswith(
        f"target store: cannot read archive {sidecar.id} (PermissionError: read refused)"
    )


def test_a_check_that_fails_before_reading_still_brings_progress_to_its_total(
    tmp_path: Path,
) -> None:
    events: list[Event] = []
    vault = _two_targets(tmp_path, on_event=events.append)
    assert vault.backup().ok
    _data(tmp_path / "nas", "crm").unlink()
    events.clear()
    assert not vault.verify(level="read").ok
    last = [e.data for e in events if e.name == "progress"][-1]
    assert (last["fraction"], last["bytes_done"]) == (1.0, last["bytes_total"])


def test_a_verify_reports_its_run_level_durations_progress_and_alerts_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    events: list[Event] = []
    vault = _two_targets(tmp_path, on_event=events.append)
    assert vault.backup().ok
    _flip_a_byte(_data(tmp_path / "nas", "crm"))
    events.clear()
    caplog.clear()
    started = time.monotonic()
    report = vault.verify(level="read")  # not the default level of a report or a result
    took = time.monotonic() - started
    assert not report.ok and report.level == "read" and 0 < report.duration <= took
    assert len(report.results) == 4
    assert all(r.level == "read" and 0 < r.duration <= took for r in report.results)
    (began,) = logged(caplog, "verify.started")
    assert report.run and began["run"] == report.run
    oks = logged(caplog, "verify.ok")
    assert len(oks) == 3 and {e["run"] for e in oks} == {report.run}
    # Two cells on two targets: four checks, known from the start and all reached.
    progress = [dict(e.data) for e in events if e.name == "progress"]
    assert (progress[0]["cells_total"], progress[-1]["cells_done"]) == (4, 4)
    # The alert says what the result says.
    (failed,) = [r for r in report.results if not r.ok]
    (alert,) = _alerts(tmp_path)
    assert failed.error and alert["error"] == failed.error
    # A selector given as an object, not as text, picks the same archive.
    newest = vault.list("crm", targets=["local"])[-1].id
    picked = vault.verify(["crm"], targets=["local"], select=Selector.parse(str(newest)))
    assert [r.archive for r in picked.results] == [str(newest)] and picked.ok


def test_a_drill_loads_the_dumps_of_the_cell(tmp_path: Path) -> None:
    import sqlite3

    crm = write_tree(tmp_path / "cells" / "crm", {"config.yaml": "x\n"})
    db = sqlite3.connect(crm / "app.sqlite")
    db.execute("CREATE TABLE t (a)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.close()
    dumper = {"type": "sqlite", "name": "app", "path": str(crm / "app.sqlite")}
    vault = make_vault(tmp_path / "backup", [Cell("crm", [crm], dumpers=[dumper])], clock=clock())
    assert vault.backup().ok
    report = vault.verify(level="drill")
    assert report.ok, report.to_dict()
    (result,) = report.results
    assert dict(result.dumps) == {"app": "loaded into the drill tree, then dropped"}


def test_ignored_records_are_alerted_for_their_own_cell_once_each(tmp_path: Path) -> None:
    import datetime as dt

    vault = _two_targets(tmp_path)
    assert vault.backup().ok

    real = {
        c: ArchiveId.parse(next((tmp_path / "nas" / c).glob("cell_*.json")).stem)
        for c in ("billing", "crm")
    }

    def forge(cell: str, seconds: int) -> ArchiveId:
        forged = ArchiveId(cell, real[cell].when - dt.timedelta(seconds=seconds))
        (tmp_path / "nas" / cell / f"{forged}.json").write_bytes(b"{")
        return forged

    billing, first = forge("billing", 1), forge("crm", 2)
    assert not vault.status().ok  # both listed (and distrusted) by the same target objects
    assert not vault.verify(["crm"], targets=["nas"]).ok
    # Only crm's record is alerted, and as crm's: billing's sorts before it.
    alerted = [(a["cell"], a["error"].split(":")[0]) for a in _alerts(tmp_path)]
    assert alerted == [("crm", f"ignored crm/{first}.json")]
    second = forge("crm", 1)  # sorts after the first, which was alerted already
    assert not vault.verify(["crm"], targets=["nas"]).ok
    alerted = [(a["cell"], a["error"].split(":")[0]) for a in _alerts(tmp_path)]
    assert alerted[1:] == [("crm", f"ignored crm/{second}.json")]
    assert str(billing) not in json.dumps(_alerts(tmp_path))


def test_a_quick_check_reads_no_member(tmp_path: Path) -> None:
    vault = _two_targets(tmp_path)
    assert vault.backup().ok
    report = vault.verify(level="quick")
    assert report.ok and len(report.results) == 4
    assert {r.members for r in report.results} == {0}  # no data read, so no member counted
    full = vault.verify(["crm"], targets=["local"], level="full")
    assert full.results[0].members > 0


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("recompressed", "the stored manifest copy differs from the one written"),
        ("deleted", "manifest copy is missing"),
    ],
)
def test_a_backup_refuses_a_stored_manifest_copy_that_is_not_the_one_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str, problem: str
) -> None:
    """The check after backup compares the manifest copy's bytes, not only what they parse to.

    Recompressed, the copy stored on nas is the same manifest, valid and naming this
    archive: only the byte comparison with the copy written can refuse it.
    """
    import zstandard

    vault = _two_targets(tmp_path)
    original = LocalTarget.put_file
    damaged: list[str] = []

    def damaging(self: LocalTarget, local: Path, key: str) -> None:
        original(self, local, key)
        if self.name == "nas" and key.endswith(".manifest.json.zst"):
            stored = tmp_path / "nas" / key
            body = zstandard.ZstdDecompressor().stream_reader(local.read_bytes()).read()
            stored.unlink()  # a local target may hard-link the spool's file
            if damage == "recompressed":
                stored.write_bytes(zstandard.ZstdCompressor(level=19).compress(body))
            damaged.append(key)

    monkeypatch.setattr(LocalTarget, "put_file", damaging)
    manifests: list[str] = []
    reading = Target.manifest

    def counted(self: Target, sidecar: Any) -> Any:
        manifests.append(self.name)
        return reading(self, sidecar)

    monkeypatch.setattr(Target, "manifest", counted)
    report = vault.backup(["crm"])
    assert not report.ok and len(damaged) == 1
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert outcomes["local"].ok and outcomes["local"].verified
    nas = outcomes["nas"]
    assert (nas.ok, nas.stage) == (False, "verify")
    ident = report.cells[0].archive
    assert nas.error == (
        f"archive {ident}, on target nas: {problem} (the stored copy is damaged; "
        "verify other targets and restore from a good one)"
    )
    # The check used the manifest it was given: no manifest was read back from a target.
    assert manifests == []
    # The copy that did not verify is not committed there; the good one is.
    assert [s.id for s in vault.target("nas").archives("crm")] == []
    assert [str(s.id) for s in vault.target("local").archives("crm")] == [ident]


def test_read_needs_every_link_of_the_chain_even_one_that_holds_no_file_of_the_newest(
    tmp_path: Path,
) -> None:
    """The chain the meta names counts, as well as the archives holding the manifest's files."""
    vault = _two_targets(tmp_path)
    assert vault.backup(["crm"]).ok
    extra = write_tree(tmp_path / "cells" / "crm", {"tmp/scratch.txt": "gone soon\n"})
    assert vault.backup(["crm"], kind="incremental").ok
    (extra / "tmp" / "scratch.txt").unlink()
    write_tree(tmp_path / "cells" / "crm", {"uploads/kept.txt": "kept\n"})
    assert vault.backup(["crm"], kind="incremental").ok
    full, inc1, inc2 = vault.target("nas").archives("crm")
    assert [str(a) for a in inc2.meta.chain] == [str(full.id), str(inc1.id)]
    assert vault.target("nas").manifest(inc2).holders() == {str(full.id), str(inc2.id)}
    (tmp_path / "nas" / "crm" / f"{inc1.id}.json").unlink()  # inc1 no longer committed on nas
    report = vault.verify(level="read", cells=["crm"], targets=["nas"])
    (result,) = report.results
    assert (result.archive, result.ok) == (str(inc2.id), False)
    assert result.error == (
        f"archive {inc2.id}, on target nas: its chain needs archive {inc1.id}, which is not "
        "committed on this target (restore from another target, or take a full backup)"
    )
