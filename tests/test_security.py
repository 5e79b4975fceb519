"""Hostile archives: nothing escapes the destination, the live data stays as it was.

Each archive here is made by hand with tarfile and zstandard and committed into
the local target's layout with a matching sidecar and manifest copy, so it
passes the digest check: only its content can be refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import zstandard

from cellvault import ArchiveCorrupt, ArchiveId, UnsafeArchive
from cellvault.extract import ArchiveStream, StagedTree, safe_member_path
from cellvault.manifest import Entry

from .archive_helpers import (
    all_paths,
    build_tar,
    dir_entry,
    file_entry,
    hardlink_entry,
    link_entry,
    make_vault,
    member,
    plant_archive,
    snapshot,
)

IDENT = ArchiveId("crm", dt.datetime(2020, 1, 1, 2, 0, tzinfo=dt.UTC))
ARCHIVE = str(IDENT)
OK = b"a legitimate file\n"


@attrs.frozen
class Setup:
    tmp: Path
    src: Path
    backup: Path
    outside: Path


@pytest.fixture
def env(tmp_path: Path) -> Setup:
    src = tmp_path / "cells" / "crm"
    src.mkdir(parents=True)
    (src / "live.txt").write_text("the live data\n")
    (src / "sub").mkdir()
    (src / "sub" / "more.txt").write_text("more\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("do not touch\n")
    return Setup(tmp_path, src, tmp_path / "backup", outside)


def base_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [member("data/crm", kind=tarfile.DIRTYPE, mode=0o755), member("data/crm/ok.txt", OK)]


def base_entries() -> list[Entry]:
    return [dir_entry("data/crm"), file_entry("data/crm/ok.txt", OK, ARCHIVE)]


# Each case: (tar members after the base ones, extra manifest entries, the member named).
Case = Callable[[Setup], tuple[list[tuple[tarfile.TarInfo, bytes | None]], list[Entry], str]]


def abs_path(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name = str(env.outside / "x")
    return [member(name, b"pwned")], [], name


def abs_path_listed(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name = str(env.outside / "x")
    return [member(name, b"pwned")], [file_entry(name, b"pwned", ARCHIVE)], name


def dotdot(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name = "data/crm/../../x"
    return [member(name, b"pwned")], [], name


def dotdot_listed(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name = "data/crm/../../x"
    return [member(name, b"pwned")], [file_entry(name, b"pwned", ARCHIVE)], name


def dotdot_manifest_only(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    return [], [file_entry("data/crm/../../../x", b"pwned", ARCHIVE)], "data/crm/../../../x"


def link_then_file(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    members = [
        member("data/crm/evil", kind=tarfile.SYMTYPE, linkname=str(env.outside), mode=0o777),
        member("data/crm/evil/passwd", b"root::0:0::/:/bin/sh\n"),
    ]
    entries = [
        link_entry("data/crm/evil", str(env.outside)),
        file_entry("data/crm/evil/passwd", b"root::0:0::/:/bin/sh\n", ARCHIVE),
    ]
    return members, entries, "data/crm/evil/passwd"


def relative_link_then_file(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    target = "../../../outside"
    members = [
        member("data/crm/evil", kind=tarfile.SYMTYPE, linkname=target, mode=0o777),
        member("data/crm/evil/passwd", b"x"),
    ]
    entries = [
        link_entry("data/crm/evil", target),
        file_entry("data/crm/evil/passwd", b"x", ARCHIVE),
    ]
    return members, entries, "data/crm/evil/passwd"


def hard_link(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name = "data/crm/hl"
    return [member(name, kind=tarfile.LNKTYPE, linkname=str(env.outside / "target"))], [], name


def hard_link_dotdot(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name, target = "data/crm/hl", "data/crm/../../outside/target"
    members = [member(name, kind=tarfile.LNKTYPE, linkname=target)]
    return members, [hardlink_entry(name, target)], name


def hard_link_to_a_link(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    # A hard link to a symbolic link of the archive would give a second name to
    # a link pointing outside: only files may be linked to.
    members = [
        member("data/crm/abs", kind=tarfile.SYMTYPE, linkname=str(env.outside / "target")),
        member("data/crm/hl", kind=tarfile.LNKTYPE, linkname="data/crm/abs"),
    ]
    entries = [
        link_entry("data/crm/abs", str(env.outside / "target")),
        hardlink_entry("data/crm/hl", "data/crm/abs"),
    ]
    return members, entries, "data/crm/hl"


def hard_link_not_in_archive(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name = "data/crm/hl"
    members = [member(name, kind=tarfile.LNKTYPE, linkname="data/crm/nothing")]
    return members, [hardlink_entry(name, "data/crm/nothing")], name


def device_under_dumps(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    info, _ = member("dumps/pg/null", kind=tarfile.CHRTYPE, mode=0o666)
    info.devmajor, info.devminor = 1, 3
    return [(info, None)], [], "dumps/pg/null"


def link_dir_then_file(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    # A link listed before a directory of the same name's files: the file would
    # be written through the link if links were made first.
    members = [
        member("data/crm/d", kind=tarfile.SYMTYPE, linkname=str(env.outside), mode=0o777),
        member("data/crm/d/x", b"pwned"),
    ]
    entries = [
        link_entry("data/crm/d", str(env.outside)),
        file_entry("data/crm/d/x", b"pwned", ARCHIVE),
    ]
    return members, entries, "data/crm/d/x"


def duplicate(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    return [member("data/crm/ok.txt", b"second copy")], [], "data/crm/ok.txt"


def link_escape(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name, target = "data/crm/up", "../../.."
    members = [member(name, kind=tarfile.SYMTYPE, linkname=target, mode=0o777)]
    return members, [link_entry(name, target)], name


def link_escape_deep(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name, target = "data/crm/sub/up", "../../outside/target"
    members = [
        member("data/crm/sub", kind=tarfile.DIRTYPE, mode=0o755),
        member(name, kind=tarfile.SYMTYPE, linkname=target, mode=0o777),
    ]
    return members, [dir_entry("data/crm/sub"), link_entry(name, target)], name


def link_escape_through_link(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    # d/l1 -> .. stays inside (it is the cell root), but l2 -> d/l1/../outside does not:
    # read lexically, "d/l1/.." is "d"; followed, it is the cell root's parent.
    members = [
        member("data/crm/d", kind=tarfile.DIRTYPE, mode=0o755),
        member("data/crm/d/l1", kind=tarfile.SYMTYPE, linkname="..", mode=0o777),
        member("data/crm/l2", kind=tarfile.SYMTYPE, linkname="d/l1/../outside", mode=0o777),
    ]
    entries = [
        dir_entry("data/crm/d"),
        link_entry("data/crm/d/l1", ".."),
        link_entry("data/crm/l2", "d/l1/../outside"),
    ]
    return members, entries, "data/crm/l2"


def outside_data(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    return [member("etc/cron.d/x", b"* * * * * root sh")], [], "etc/cron.d/x"


def pax_path(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    """An innocent ustar name that a pax ``path`` record overrides with *name*."""
    info, data = member("data/crm/innocent", b"pwned")
    info.pax_headers = {"path": name}
    return info, data


def pax_path_dotdot(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name = "data/crm/../../x"
    return [pax_path(name)], [file_entry("data/crm/innocent", b"pwned", ARCHIVE)], name


def pax_path_absolute(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name = str(env.outside / "x")
    return [pax_path(name)], [file_entry("data/crm/innocent", b"pwned", ARCHIVE)], name


def pax_path_nul(env: Setup) -> tuple[list, list, str]:  # type: ignore[type-arg]
    name = "data/crm/x\0/../../../x"
    return [pax_path(name)], [], name


CASES: list[Case] = [
    abs_path,
    abs_path_listed,
    dotdot,
    dotdot_listed,
    dotdot_manifest_only,
    link_then_file,
    relative_link_then_file,
    hard_link,
    hard_link_dotdot,
    hard_link_to_a_link,
    hard_link_not_in_archive,
    device_under_dumps,
    link_dir_then_file,
    duplicate,
    outside_data,
    pax_path_dotdot,
    pax_path_absolute,
    pax_path_nul,
]
#: Cases refused while the tar stream is read, so verify sees them too (the others are
#: refused when a restore plans the links it would create).
STREAM_CASES = {abs_path, dotdot, hard_link, hard_link_dotdot, device_under_dumps}
STREAM_CASES |= {duplicate, outside_data, pax_path_dotdot, pax_path_absolute, pax_path_nul}


def plant(env: Setup, case: Case) -> str:
    members, entries, name = case(env)
    plant_archive(
        env.backup,
        IDENT,
        [*base_members(), *members],
        [*base_entries(), *entries],
        roots={"crm": str(env.src)},
    )
    return name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_hostile_archive_restore_in_place_is_refused(env: Setup, case: Case) -> None:
    name = plant(env, case)
    vault = make_vault(env.backup, [env.src])
    live = snapshot(env.src)
    outside = snapshot(env.outside)
    before = all_paths(env.tmp, skip=[env.backup])

    report = vault.restore(ARCHIVE)

    assert not report.ok
    (cell,) = report.cells
    assert not cell.ok
    assert cell.stage in ("fetch", "check")
    assert name in (cell.error or ""), cell.error
    assert ARCHIVE in (cell.error or "")
    # The safety backup was taken, and is named; no file was swapped.
    assert cell.safety_backup and cell.undo
    files = {k: v for k, v in cell.parts.items() if k.startswith("files:")}
    assert files and all(v.startswith("not staged") for v in files.values()), cell.parts
    assert snapshot(env.src) == live
    assert snapshot(env.outside) == outside
    assert all_paths(env.tmp, skip=[env.backup]) == before
    assert not Path("/x").exists()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_hostile_archive_restore_into_is_refused(env: Setup, case: Case) -> None:
    name = plant(env, case)
    vault = make_vault(env.backup, [env.src])
    outside = snapshot(env.outside)
    before = all_paths(env.tmp, skip=[env.backup])
    into = env.tmp / "into"

    report = vault.restore(ARCHIVE, into=into)

    assert not report.ok
    assert name in (report.cells[0].error or "")
    assert snapshot(env.outside) == outside
    new = all_paths(env.tmp, skip=[env.backup]) - before
    # At most the (empty) folders the destination would have been made in.
    assert new <= {str(into), str(into / "crm")}
    assert all(not any(Path(p).iterdir()) for p in new if p == str(into / "crm"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_hostile_archive_staged_tree_raises_naming_the_member(env: Setup, case: Case) -> None:
    name = plant(env, case)
    vault = make_vault(env.backup, [env.src])
    target = vault.targets[0]
    sidecar = target.sidecar(IDENT)
    staging = env.tmp / "staging"
    with pytest.raises(ArchiveCorrupt) as info:
        tree = StagedTree(staging=staging, manifest=target.manifest(sidecar), archive=ARCHIVE)
        tree.prepare()
        with target.open_archive(sidecar) as raw:
            tree.take(ArchiveStream(raw, sidecar, target.name))
        tree.finish()
    assert isinstance(info.value, UnsafeArchive)
    assert info.value.member == name
    assert info.value.archive == ARCHIVE
    # Whatever was staged stays in the staging folder.
    assert all(
        p.startswith(str(staging)) for p in all_paths(env.tmp) - all_paths(env.tmp, skip=[staging])
    )
    assert sorted(snapshot(env.outside)) == [".", "target"]


@pytest.mark.parametrize(
    "case", sorted(STREAM_CASES, key=lambda c: c.__name__), ids=lambda c: c.__name__
)
def test_hostile_archive_fails_verify(env: Setup, case: Case) -> None:
    name = plant(env, case)
    vault = make_vault(env.backup, [env.src])
    result = vault.verify()
    assert not result.ok
    (res,) = result.results
    assert ARCHIVE in (res.error or "")
    assert name in (res.error or "")


def test_links_are_data_absolute_relative_and_escaping_ones_restore_verbatim(env: Setup) -> None:
    (env.src / "abs").symlink_to(env.outside / "target")
    (env.src / "abs-dir").symlink_to(env.outside)
    (env.src / "up").symlink_to("../../..")
    (env.src / "dangling").symlink_to("/nonexistent/x")
    vault = make_vault(env.backup, [env.src])
    ident = vault.backup().cells[0].archive
    assert vault.verify().ok  # absolute links are data, not damage
    original = snapshot(env.src)
    outside = snapshot(env.outside)

    into = vault.restore(ident, into=env.tmp / "a")
    assert into.ok, into.cells[0].error
    restored = env.tmp / "a" / "crm" / "crm"
    assert (restored / "abs").readlink() == env.outside / "target"
    assert snapshot(restored) == original

    (env.src / "live.txt").write_text("changed")
    in_place = vault.restore(ident)
    assert in_place.ok, in_place.cells[0].error
    assert snapshot(env.src) == original
    assert snapshot(env.outside) == outside


def test_link_members_that_escape_are_restored_as_links_and_nothing_is_written_outside(
    env: Setup,
) -> None:
    for case in (link_escape, link_escape_deep, link_escape_through_link):
        members, entries, _ = case(env)
        backup = env.tmp / f"backup-{case.__name__}"
        plant_archive(
            backup,
            IDENT,
            [*base_members(), *members],
            [*base_entries(), *entries],
            roots={"crm": str(env.src)},
        )
        outside = snapshot(env.outside)
        vault = make_vault(backup, [env.src])
        report = vault.restore(ARCHIVE, into=env.tmp / f"out-{case.__name__}")
        assert report.ok, report.cells[0].error
        assert snapshot(env.outside) == outside


def test_allow_external_links_does_not_allow_writing_through_a_link(env: Setup) -> None:
    plant(env, link_then_file)
    vault = make_vault(env.backup, [env.src])
    live = snapshot(env.src)
    outside = snapshot(env.outside)
    report = vault.restore(ARCHIVE, allow_external_links=True)  # a no-op now
    assert not report.ok
    error = report.cells[0].error or ""
    assert "data/crm/evil/passwd" in error
    assert "under the symbolic link data/crm/evil" in error
    assert snapshot(env.src) == live
    assert snapshot(env.outside) == outside
    assert not (env.outside / "passwd").exists()


def test_links_that_stay_inside_are_restored(env: Setup) -> None:
    members = [
        member("data/crm/d", kind=tarfile.DIRTYPE, mode=0o755),
        member("data/crm/d/l1", kind=tarfile.SYMTYPE, linkname="..", mode=0o777),
        member("data/crm/l2", kind=tarfile.SYMTYPE, linkname="d/l1/ok.txt", mode=0o777),
        member("data/crm/l3", kind=tarfile.SYMTYPE, linkname="d/../d/./l1/d", mode=0o777),
        member("data/crm/loop", kind=tarfile.SYMTYPE, linkname="loop2", mode=0o777),
        member("data/crm/loop2", kind=tarfile.SYMTYPE, linkname="loop", mode=0o777),
    ]
    entries = [
        dir_entry("data/crm/d"),
        link_entry("data/crm/d/l1", ".."),
        link_entry("data/crm/l2", "d/l1/ok.txt"),
        link_entry("data/crm/l3", "d/../d/./l1/d"),
        link_entry("data/crm/loop", "loop2"),
        link_entry("data/crm/loop2", "loop"),
    ]
    plant_archive(
        env.backup,
        IDENT,
        [*base_members(), *members],
        [*base_entries(), *entries],
        roots={"crm": str(env.src)},
    )
    vault = make_vault(env.backup, [env.src])
    assert vault.verify().ok
    report = vault.restore(ARCHIVE, into=env.tmp / "out")
    assert report.ok, report.cells[0].error
    out = env.tmp / "out" / "crm" / "crm"
    assert (out / "l2").read_bytes() == OK
    assert (out / "l3").resolve() == (out / "d").resolve()


@pytest.mark.parametrize(
    "name",
    ["", "/", "/etc/x", "a/../b", "a/./b", "a//b", "..", ".", "a/..", "x\0y"],
)
def test_safe_member_path_refuses(name: str) -> None:
    with pytest.raises(UnsafeArchive) as info:
        safe_member_path(name, archive=ARCHIVE)
    assert info.value.member == name


def test_safe_member_path_accepts() -> None:
    assert safe_member_path("data/crm/a b/ünï", archive=ARCHIVE).parts == (
        "data",
        "crm",
        "a b",
        "ünï",
    )
    assert safe_member_path("data/crm/dir/", archive=ARCHIVE).as_posix() == "data/crm/dir"
    assert safe_member_path("data/crm/..x/x..", archive=ARCHIVE).parts[-2:] == ("..x", "x..")


def test_meta_json_must_come_first(env: Setup) -> None:
    plant_archive(env.backup, IDENT, base_members(), base_entries(), roots={"crm": str(env.src)})
    # Rewrite the tar with the file before meta.json, keeping sidecar and copy consistent.
    folder = env.backup / "crm"
    data = folder / f"{ARCHIVE}.tar.zst"
    tar = zstandard.ZstdDecompressor().stream_reader(data.read_bytes()).read()
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        items = [(i, t.extractfile(i).read() if i.isreg() else None) for i in t]  # type: ignore[union-attr]
    swapped = build_tar([items[2], items[0], items[1], items[3]])
    raw = zstandard.ZstdCompressor().compress(swapped)
    data.write_bytes(raw)
    side = json.loads((folder / f"{ARCHIVE}.json").read_text())
    side.update(size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    (folder / f"{ARCHIVE}.json").write_text(json.dumps(side))

    vault = make_vault(env.backup, [env.src])
    result = vault.verify()
    assert not result.ok
    assert "meta.json is not the first member" in (result.results[0].error or "")
    live = snapshot(env.src)
    assert not vault.restore(ARCHIVE).ok
    assert snapshot(env.src) == live


def test_path_under_a_file_is_refused(env: Setup) -> None:
    members = [member("data/crm/ok.txt/inner", b"x")]
    entries = [file_entry("data/crm/ok.txt/inner", b"x", ARCHIVE)]
    plant_archive(
        env.backup,
        IDENT,
        [*base_members(), *members],
        [*base_entries(), *entries],
        roots={"crm": str(env.src)},
    )
    vault = make_vault(env.backup, [env.src])
    live = snapshot(env.src)
    report = vault.restore(ARCHIVE)
    assert not report.ok
    assert "data/crm/ok.txt/inner" in (report.cells[0].error or "")
    assert "under the file data/crm/ok.txt" in (report.cells[0].error or "")
    assert snapshot(env.src) == live


def test_absolute_links_restore_from_the_seed_variables_and_drill_with_no_option(
    env: Setup,
) -> None:
    from click.testing import CliRunner

    from cellvault.cli import cli

    (env.src / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (env.src / "current").symlink_to(env.outside)
    backup = env.tmp / "backup"
    config = env.tmp / "backup_config.env"
    config.write_text(
        f"export BACKUP_DIR={backup}\nexport BACKUP_CELLS=crm\n"
        f"export BACKUP_CELLS_ROOT={env.src.parent}\nBACKUP_TARGETS=local\n"
    )
    runner = CliRunner()

    def run(*args: str, **extra: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["--env-file", str(config), *args], env=extra)
        assert "Traceback" not in result.output
        return result.exit_code, result.output + result.stderr

    code, out = run("backup")
    assert code == 0, out
    original = snapshot(env.src)
    code, out = run("verify", "--level", "drill")
    assert code == 0, out
    (env.src / "localtime").unlink()
    code, out = run("restore", RESTORE_DATE="latest", RESTORE_SKIP_PREBACKUP="1")
    assert code == 0, out
    assert snapshot(env.src) == original
    code, out = run("restore", "--allow-external-links", "--into", str(env.tmp / "into"))
    assert code == 0, out
    assert "--allow-external-links is no longer needed and does nothing" in out
    assert (env.tmp / "into" / "crm" / "crm" / "current").readlink() == env.outside


# -- bad input edges and dead targets (issue 18) -------------------------------------------


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    cells = tmp_path / "cells"
    (cells / "crm").mkdir(parents=True, exist_ok=True)
    (cells / "crm" / "a.txt").write_text("a\n")
    return {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(cells),
        **extra,
    }


@pytest.mark.parametrize(
    ("args", "extra", "says"),
    [
        (["prune"], {"BACKUP_KEEP_FULL_DAYS": "nan"}, "BACKUP_KEEP_FULL_DAYS='nan'"),
        (["prune"], {"BACKUP_KEEP_INCREMENTAL_DAYS": "inf"}, "not a finite number"),
        (["prune"], {"BACKUP_KEEP_LAST": "-1"}, "BACKUP_KEEP_LAST='-1'"),
        (
            ["restore"],
            {"RESTORE_DATE": "0001-01-01T00:00:00+14:00", "RESTORE_CELL": "crm"},
            "outside the range of dates",
        ),
        (
            ["restore"],
            {"RESTORE_DATE": "9999-12-31T23:59:59-14:00", "RESTORE_CELL": "crm"},
            "outside the range of dates",
        ),
    ],
)
def test_bad_input_edges_exit_2_with_a_clear_line(
    tmp_path: Path, args: list[str], extra: dict[str, str], says: str
) -> None:
    from click.testing import CliRunner

    from cellvault.cli import cli

    result = CliRunner().invoke(cli, args, env=_cli_env(tmp_path, **extra))
    assert result.exit_code == 2, result.output
    assert says in result.stderr
    assert "Traceback" not in result.stderr and "bug" not in result.stderr


def test_an_unreachable_target_fails_alone_and_the_others_proceed(tmp_path: Path) -> None:
    from cellvault import TargetSpec

    from .archive_helpers import make_vault as vault_on

    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    (cell / "a.txt").write_text("a\n")
    # An FTP server that is not there: fsspec connects when the file system is built.
    vault = vault_on(
        tmp_path / "backup",
        [cell],
        targets=[
            TargetSpec("local", str(tmp_path / "backup")),
            TargetSpec("dead", "ftp://127.0.0.1:1/backups"),
        ],
    )
    report = vault.backup()
    assert not report.ok
    (result,) = report.cells
    outcomes = {o.target: o for o in result.targets}
    assert outcomes["local"].ok
    assert not outcomes["dead"].ok and "cannot reach" in (outcomes["dead"].error or "")
    assert [a.id for a in vault.list(targets=["local"])] == [result.archive]
