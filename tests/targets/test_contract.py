"""The built-in targets pass cellvault.testing's TargetContract, as a plugin's target must.

Local and NAS directories, any fsspec URL (``memory://``), S3 (moto's server),
OSS (the OSS-protocol test server) and an rsync daemon: each class only says
how to make a fresh, empty target of its type.
"""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from cellvault import Config, Target, TargetSpec, Vault
from cellvault.testing import TargetContract
from tests.servers.fixtures import OssBucket, S3Bucket
from tests.servers.rsyncd import RsyncModule


def make_target(spec: TargetSpec, tmp_path: Path) -> Target:
    """The target the built-in plugins make for *spec*, as a vault makes it."""
    config = Config(backup_dir=tmp_path / "unused", targets=[spec])
    return Vault(config, load_entry_points=False).target(spec.name)


class TestLocal(TargetContract):
    @pytest.fixture
    def target(self, tmp_path: Path) -> Target:
        return make_target(TargetSpec("local", str(tmp_path / "local")), tmp_path)


class TestMemoryFsspec(TargetContract):
    @pytest.fixture
    def target(self, tmp_path: Path) -> Target:
        spec = TargetSpec("mem", f"memory://cv-contract-{uuid.uuid4().hex}")
        return make_target(spec, tmp_path)


class TestS3(TargetContract):
    @pytest.fixture
    def target(self, tmp_path: Path, s3_bucket: S3Bucket) -> Target:
        spec = TargetSpec("s3", f"{s3_bucket.url}/backups", s3_bucket.storage_options)
        return make_target(spec, tmp_path)


class TestOss(TargetContract):
    @pytest.fixture
    def target(self, tmp_path: Path, oss_bucket: OssBucket) -> Target:
        options = {**oss_bucket.storage_options, "skip_instance_cache": True}
        return make_target(TargetSpec("oss", f"{oss_bucket.url}/backups", options), tmp_path)


class TestRsync(TargetContract):
    # The rsync target copies whole files: a smaller payload keeps the class quick.
    large_size = 512 * 1024

    @pytest.fixture
    def target(self, tmp_path: Path, rsync_module: RsyncModule) -> Target:
        return make_target(TargetSpec("nas", rsync_module.url_for("nas")), tmp_path)


def _plugin_guide_module(tmp_path: Path) -> ModuleType:
    """The plugin guide's complete example, ``cellvault_simpledir.py``, imported from the page."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    start = text.index("`cellvault_simpledir.py`:\n\n```python\n") + len(
        "`cellvault_simpledir.py`:\n\n```python\n"
    )
    path = tmp_path / "cellvault_simpledir.py"
    path.write_text(text[start : text.index("\n```\n", start)])
    spec = importlib.util.spec_from_file_location("cellvault_simpledir_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestThePluginGuidesExample(TargetContract):
    """A third-party target, the plugin guide's simpledir://, passes the contract as written."""

    @pytest.fixture
    def target(self, tmp_path: Path) -> Target:
        module = _plugin_guide_module(tmp_path)
        target: Target = module.SimpleDirTarget(
            TargetSpec("usb", f"simpledir://{tmp_path / 'usb'}")
        )
        return target
