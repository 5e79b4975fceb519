"""Real incrementals: only changed bytes are stored, and every point restores exactly."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cellvault import ArchiveNotFound, Cell, Config, Vault
from cellvault.archive import ArchiveId


def fake_clock(start: dt.datetime | None = None):
    """A clock that moves a minute per call, so tests never wait for the next second."""
    start = start or dt.datetime(2025, 1, 1, 2, 0, tzinfo=dt.UTC)
    counter = itertools.count()
    return lambda: start + dt.timedelta(minutes=next(counter))


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a restore must reproduce, by path relative to *root*."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st_ = path.lstat()
            mode = stat.S_IMODE(st_.st_mode)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("symlink", os.readlink(path), st_.st_mtime_ns)
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", mode, st_.st_mtime_ns)
            else:
                out[rel] = ("file", mode, path.read_bytes(), st_.st_mtime_ns)
    return out


def age(root: Path, seconds: int) -> None:
    """Move every mtime *seconds* into the past, out of the racy window of the next scan."""
    for path in [root, *(root.rglob("*") if root.is_dir() else ())]:
        st_ = path.lstat()
        shift = seconds * 1_000_000_000
        os.utime(path, ns=(st_.st_atime_ns - shift, st_.st_mtime_ns - shift), follow_symlinks=False)


def make_vault(tmp: Path, live: Path, **config) -> Vault:
    cfg = Config(backup_dir=tmp / "backup", cells=[Cell("crm", [live])], **config)
    return Vault(cfg, load_entry_points=False, clock=fake_clock())


def test_incremental_stores_only_changed_files(tmp_path: Path) -> None:
    live = tmp_path / "crm"
    live.mkdir()
    rnd = __import__("random").Random(7)
    for i in range(100):
        (live / f"f{i:03d}.bin").write_bytes(rnd.randbytes(256 * 1024))
    age(live, 10)
    vault = make_vault(tmp_path, live)
    full = vault.backup(kind="full").cells[0]
    assert full.ok and full.kind == "full"

    # 1% of the files change.
    changed = live / "f042.bin"
    changed.write_bytes(rnd.randbytes(256 * 1024))
    old = os.stat(changed)
    os.utime(changed, ns=(old.st_atime_ns, old.st_mtime_ns - 5_000_000_000))
    inc = vault.backup(kind="incremental").cells[0]
    assert inc.ok and inc.kind == "incremental", inc
    assert inc.parent == full.archive
    assert inc.files == 1
    assert inc.bytes_read == 256 * 1024
    # Random data does not compress: the changed file's compressed size is about
    # its size. The archive holds it plus meta and manifest, within a few percent.
    assert inc.archive_size < 256 * 1024 * 1.05, inc.archive_size
    assert full.archive_size > 100 * 256 * 1024 * 0.99

    # Nothing changed: the incremental holds no file at all.
    quiet = vault.backup(kind="incremental").cells[0]
    assert quiet.ok and quiet.files == 0 and quiet.bytes_read == 0
    assert quiet.archive_size < 16 * 1024


def test_incremental_without_a_full_becomes_full_and_says_so(tmp_path: Path) -> None:
    live = tmp_path / "crm"
    live.mkdir()
    (live / "a").write_text("a")
    vault = make_vault(tmp_path, live)
    report = vault.backup(kind="incremental").cells[0]
    assert report.ok and report.kind == "full"
    assert report.note and "full" in report.note


def test_chain_is_capped_by_max_chain(tmp_path: Path) -> None:
    live = tmp_path / "crm"
    live.mkdir()
    (live / "a").write_text("a")
    vault = make_vault(tmp_path, live, max_chain=3)
    kinds = [vault.backup(kind="incremental").cells[0] for _ in range(6)]
    assert [k.kind for k in kinds] == [
        "full",
        "incremental",
        "incremental",
        "full",
        "incremental",
        "incremental",
    ]
    assert "max_chain=3" in (kinds[3].note or "")


def test_racy_file_is_stored_again(tmp_path: Path) -> None:
    """A file modified at or after the start of the parent's scan is not trusted."""
    live = tmp_path / "crm"
    live.mkdir()
    vault = make_vault(tmp_path, live)
    # The parent's scan starts after this line: a file modified at (or after) its start
    # is racy, one modified ten minutes before it is not.
    racy_ns = time.time_ns() + 60_000_000_000
    calm_ns = time.time_ns() - 600_000_000_000
    for name, ns in (("racy", racy_ns), ("calm", calm_ns)):
        (live / name).write_text("v1")
        os.utime(live / name, ns=(ns, ns))
    assert vault.backup(kind="full").ok
    # Both change, keeping size and mtime: only the racy rule can catch the change, and
    # only for the file modified within the tick of the parent's scan.
    for name, ns in (("racy", racy_ns), ("calm", calm_ns)):
        (live / name).write_text("v2")
        os.utime(live / name, ns=(ns, ns))
    first = vault.backup(kind="incremental").cells[0]
    assert (first.kind, first.files) == ("incremental", 1)
    out = tmp_path / "out"
    assert vault.restore("latest", into=out).ok
    restored = out / "crm" / "crm"
    assert ((restored / "racy").read_text(), (restored / "calm").read_text()) == ("v2", "v1")


def test_checksum_mode_catches_changes_that_keep_size_and_mtime(tmp_path: Path) -> None:
    live = tmp_path / "crm"
    live.mkdir()
    target = live / "same.txt"
    target.write_text("AAAA")
    age(live, 10)
    plain = make_vault(tmp_path / "p", live)
    summed = make_vault(tmp_path / "s", live, checksum=True)
    plain.backup(kind="full")
    summed.backup(kind="full")
    before = target.stat()
    # Rewrite in place: same inode, same size, mtime put back.
    with open(target, "r+b") as f:
        f.write(b"BBBB")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert plain.backup(kind="incremental").cells[0].files == 0
    assert summed.backup(kind="incremental").cells[0].files == 1
    out = tmp_path / "out"
    assert summed.restore("latest", into=out).ok
    assert (out / "crm" / "crm" / "same.txt").read_text() == "BBBB"


def _chain(tmp_path: Path) -> tuple[Vault, Path, list[str]]:
    live = tmp_path / "crm"
    live.mkdir()
    (live / "base").write_text("base")
    age(live, 100)
    vault = make_vault(tmp_path, live)
    ids = [vault.backup(kind="full").cells[0].archive]
    for n in range(3):
        (live / f"step{n}").write_text(str(n))
        age(live / f"step{n}", 10)
        ids.append(vault.backup(kind="incremental").cells[0].archive)
    return vault, live, ids


def test_deleted_middle_link_is_named_before_anything_is_touched(tmp_path: Path) -> None:
    vault, live, ids = _chain(tmp_path)
    before = snapshot(live)
    middle = ArchiveId.parse(ids[1])
    (tmp_path / "backup" / "crm" / f"{middle}.json").unlink()
    with pytest.raises(ArchiveNotFound, match=str(middle)):
        vault.restore("latest", skip_prebackup=True)
    assert snapshot(live) == before
    # Verify says the same.
    report = vault.verify()
    assert not report.ok
    assert str(middle) in (report.results[0].error or "")


def test_corrupted_parent_fails_the_restore_and_leaves_live_data(tmp_path: Path) -> None:
    vault, live, ids = _chain(tmp_path)
    before = snapshot(live)
    data = tmp_path / "backup" / "crm" / f"{ids[0]}.tar.zst"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    report = vault.restore("latest", skip_prebackup=True)
    assert not report.ok
    assert ids[0] in (report.cells[0].error or "")
    assert snapshot(live) == before
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".cellvault-restore")]
    assert leftovers == []


class ChainMachine(RuleBasedStateMachine):
    """Mutate a tree through many steps, back it up between steps, restore every point."""

    # Each backup is followed by a no-change incremental, itself a point, which must
    # store no file; a fixed walk that counts its points turns this off.
    check_unchanged = True

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="cv-chain-"))
        self.live = self.tmp / "crm"
        self.live.mkdir()
        self.vault = make_vault(self.tmp, self.live, checksum=True, max_chain=6)
        self.points: list[tuple[str, dict[str, tuple]]] = []
        self.counter = itertools.count()

    def teardown(self) -> None:
        try:
            # Every point of the chain, not only the newest, still restores exactly.
            self.check_all()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.live.rglob("*") if p.is_file() and not p.is_symlink())

    def _dirs(self) -> list[Path]:
        return sorted(p for p in self.live.rglob("*") if p.is_dir() and not p.is_symlink())

    def _links(self) -> list[Path]:
        return sorted(p for p in self.live.rglob("*") if p.is_symlink())

    def _past(self, path: Path) -> None:
        """A distinct mtime well in the past: outside the racy window, so unchanged
        files really are taken from older archives of the chain."""
        ns = (1_600_000_000 + next(self.counter)) * 1_000_000_000 + 123
        os.utime(path, ns=(ns, ns), follow_symlinks=False)

    def _new_name(self, parent: Path) -> Path:
        return parent / f"n{next(self.counter)}"

    @initialize()
    def seed(self) -> None:
        (self.live / "a.txt").write_text("alpha")
        (self.live / "dir").mkdir()
        (self.live / "dir" / "b.bin").write_bytes(b"\x00\x01" * 100)
        self._past(self.live / "a.txt")
        self._past(self.live / "dir" / "b.bin")

    @rule(data=st.binary(max_size=300))
    def create(self, data: bytes) -> None:
        parent = ([self.live, *self._dirs()])[next(self.counter) % (1 + len(self._dirs()))]
        path = self._new_name(parent)
        path.write_bytes(data)
        self._past(path)

    @rule()
    def mkdir(self) -> None:
        self._new_name(self.live).mkdir()

    @precondition(lambda self: self._files())
    @rule(data=st.data())
    def modify_keeping_size_and_mtime(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(self._files()))
        st_ = path.stat()
        body = path.read_bytes()
        new = bytes((b + 1) % 256 for b in body)
        with open(path, "r+b") as f:
            f.write(new)
        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))

    @precondition(lambda self: self._files())
    @rule(data=st.data(), extra=st.binary(min_size=1, max_size=50))
    def append(self, data: st.DataObject, extra: bytes) -> None:
        path = data.draw(st.sampled_from(self._files()))
        with open(path, "ab") as f:
            f.write(extra)
        self._past(path)

    @precondition(lambda self: self._files() or self._links())
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self._files() + self._links())).unlink()

    @precondition(lambda self: self._files())
    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(self._files()))
        path.rename(self._new_name(path.parent))

    @precondition(lambda self: self._files())
    @rule(data=st.data(), mode=st.sampled_from([0o600, 0o644, 0o755, 0o400]))
    def chmod(self, data: st.DataObject, mode: int) -> None:
        data.draw(st.sampled_from(self._files())).chmod(mode)

    @precondition(lambda self: self._files())
    @rule(data=st.data())
    def symlink_retarget(self, data: st.DataObject) -> None:
        links = self._links()
        target = data.draw(st.sampled_from(self._files())).relative_to(self.live)
        if links:
            link = data.draw(st.sampled_from(links))
            link.unlink()
        else:
            link = self.live / f"link{next(self.counter)}"
        depth = len(link.relative_to(self.live).parts) - 1
        link.symlink_to("../" * depth + target.as_posix())

    @precondition(lambda self: self._files())
    @rule(data=st.data())
    def file_becomes_dir(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(self._files()))
        path.unlink()
        path.mkdir()
        (path / "inner").write_text("inside")
        self._past(path / "inner")

    @precondition(lambda self: [d for d in self._dirs() if d != self.live / "dir"])
    @rule(data=st.data())
    def dir_becomes_file(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from([d for d in self._dirs() if d != self.live / "dir"]))
        shutil.rmtree(path)
        path.write_text("was a directory")
        self._past(path)

    @rule(kind=st.sampled_from(["full", "incremental", "incremental"]))
    def backup(self, kind: str) -> None:
        report = self.vault.backup(kind=kind)
        assert report.ok, report
        self.points.append((report.cells[0].archive, snapshot(self.live)))
        if not self.check_unchanged:
            return
        # Nothing changed since (every file's mtime is well in the past): an incremental
        # now stores no file of its own, each one is held by an older archive of the chain;
        # a chain at its longest starts over with a full that stores every file.
        again = self.vault.backup(kind="incremental")
        assert again.ok, again
        cell = again.cells[0]
        assert cell.files == (0 if cell.kind == "incremental" else len(self._files()))
        self.points.append((cell.archive, snapshot(self.live)))

    @invariant()
    def every_point_restores_exactly(self) -> None:
        # Checked at each step for the newest point, and for all of them at the end.
        if self.points:
            self._check(*self.points[-1])

    def _check(self, archive: str, expected: dict[str, tuple]) -> None:
        out = self.tmp / f"restore-{next(self.counter)}"
        report = self.vault.restore(archive, into=out)
        assert report.ok, report
        got = snapshot(out / "crm" / "crm")
        assert got == expected
        shutil.rmtree(out)

    def check_all(self) -> None:
        for archive, expected in self.points:
            self._check(archive, expected)


class TestChain(ChainMachine.TestCase):  # type: ignore[name-defined]
    settings = settings(max_examples=30, stateful_step_count=20, deadline=None)


def test_every_point_of_a_long_chain_restores(tmp_path: Path) -> None:
    """A fixed walk through every kind of change, then all points restored."""
    machine = ChainMachine()
    try:
        machine.seed()
        machine.backup("full")
        machine.create(b"new file")
        machine.backup("incremental")
        f = machine._files()[0]
        st_ = f.stat()
        f.write_bytes(bytes(len(f.read_bytes())))
        os.utime(f, ns=(st_.st_atime_ns, st_.st_mtime_ns))
        machine.backup("incremental")
        (machine.live / "dir" / "b.bin").rename(machine.live / "moved.bin")
        (machine.live / "moved.bin").chmod(0o600)
        (machine.live / "ln").symlink_to("moved.bin")
        machine.backup("incremental")
        (machine.live / "ln").unlink()
        (machine.live / "ln").symlink_to("a.txt")
        (machine.live / "a.txt").unlink()
        (machine.live / "a.txt").mkdir()
        machine.backup("incremental")
        shutil.rmtree(machine.live / "a.txt")
        (machine.live / "a.txt").write_text("file again")
        machine.backup("incremental")
        machine.check_all()
    finally:
        machine.teardown()
