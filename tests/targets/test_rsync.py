"""The rsync target: a real rsync daemon (read-only module) and rsync over a real sshd on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cellvault import TargetSpec
from tests.ops.test_incremental import snapshot
from tests.servers.rsyncd import RsyncModule
from tests.targets.helpers import make_cell, vault_for


def test_rsync_read_only_module_fails_that_target_only(
    tmp_path: Path, rsync_module: RsyncModule
) -> None:
    live = make_cell(tmp_path)
    vault = vault_for(tmp_path, live, TargetSpec("nas", rsync_module.url_for("nas")))
    assert vault.backup().ok
    rsync_module.set_read_only(True)
    try:
        report = vault.backup()
    finally:
        rsync_module.set_read_only(False)
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert outcomes["local"].ok
    assert not outcomes["nas"].ok and "target nas" in (outcomes["nas"].error or "")
    assert len(list((rsync_module.root / "nas" / "crm").glob("*.json"))) == 1


def test_rsync_over_ssh_backs_up_verifies_and_restores(tmp_path: Path, ssh_server) -> None:  # type: ignore[no-untyped-def]
    """``BACKUP_NAS_RSYNC=user@host:path``: rsync through a real sshd on 127.0.0.1."""
    from cellvault.config import _rsync_url

    live = make_cell(tmp_path)
    nas_dir = tmp_path / "nas-over-ssh"
    url = _rsync_url(f"{ssh_server.user}@127.0.0.1:{nas_dir}")
    assert url == f"rsync+ssh://{ssh_server.user}@127.0.0.1/{nas_dir}"
    # The seed's form carries no port; the test server's is given in the URL.
    url = url.replace("@127.0.0.1/", f"@127.0.0.1:{ssh_server.port}/")
    spec = TargetSpec("nas", url, {"ssh_options": ssh_server.ssh_options})
    vault = vault_for(tmp_path, live, spec)
    report = vault.backup()
    assert report.ok, report
    archive = report.cells[0].archive
    assert (nas_dir / "crm" / f"{archive}.json").is_file()
    (live / "docs" / "b.txt").write_text("beta")
    assert vault.backup(kind="incremental").ok
    assert vault.verify(targets=["nas"]).ok
    out = tmp_path / "out"
    assert vault.restore("latest", into=out, source=["nas"]).ok
    assert snapshot(out / "crm" / "crm") == snapshot(live)
    assert vault.prune(targets=["nas"]).ok


def test_the_ssh_control_socket_lives_in_a_private_directory(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import stat as stat_

    from cellvault.targets import rsync as rsync_mod

    monkeypatch.setattr(rsync_mod.tempfile, "tempdir", str(tmp_path))
    private = rsync_mod.private_socket_dir()
    st = os.lstat(private)
    assert stat_.S_ISDIR(st.st_mode) and stat_.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.getuid()
    # A planted, open directory (or a link) at that name is not used.
    private.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o777)
    private.symlink_to(tmp_path / "elsewhere")
    other = rsync_mod.private_socket_dir()
    assert other != private and stat_.S_IMODE(os.lstat(other).st_mode) == 0o700
