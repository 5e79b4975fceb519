"""A real ``rsync --daemon`` on 127.0.0.1, for the NAS rsync target.

The daemon runs in the foreground (``--no-detach``) as a child of the test
process, with a config file the tests rewrite: rsyncd re-reads its config on
every client connection, so adding a module or making one read-only takes
effect for the next transfer without a restart.

Two ways to name a place on the daemon, both understood by ``rsync``:

* URL form, port included: ``rsync://127.0.0.1:PORT/module/path``
  (:meth:`RsyncDaemon.url_for`);
* ``host::module/path`` form, where the port must be given separately as
  ``--port PORT`` (:meth:`RsyncDaemon.host_module_for` returns both). This is
  the form the seed's ``BACKUP_NAS_RSYNC`` tends to use, on port 873.

The daemon is stopped by :meth:`RsyncDaemon.stop` (the fixture's teardown),
and, should the test process exit without teardown, by a ``weakref.finalize``
hook, which the interpreter runs at exit like ``atexit`` does.
A test process killed with SIGKILL leaves it running; it then holds only a
port on 127.0.0.1 and a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["RsyncDaemon", "RsyncModule", "rsync_binary"]


def rsync_binary() -> str | None:
    """Path of the ``rsync`` program, or None if it is not installed."""
    return shutil.which("rsync")


@dataclass
class RsyncModule:
    """One module of the daemon: its name and the directory it serves."""

    daemon: RsyncDaemon
    name: str
    #: The local directory behind the module (assert on files here).
    root: Path
    read_only: bool = False
    #: If set, the module requires this user and password (``auth users``).
    user: str | None = None
    password: str | None = None

    def url_for(self, path: str = "") -> str:
        """``rsync://[user@]127.0.0.1:PORT/<module>/<path>``."""
        return self.daemon.url_for(path, module=self.name, user=self.user)

    def host_module_for(self, path: str = "") -> tuple[str, list[str]]:
        """``("[user@]127.0.0.1::<module>/<path>", ["--port", "PORT"])``."""
        return self.daemon.host_module_for(path, module=self.name, user=self.user)

    def set_read_only(self, read_only: bool = True) -> None:
        """Refuse (or again allow) uploads from the next connection on."""
        self.read_only = read_only
        self.daemon.write_config()

    def env(self) -> dict[str, str]:
        """Environment for ``rsync`` with this module's password, if any."""
        env = dict(os.environ)
        if self.password is not None:
            env["RSYNC_PASSWORD"] = self.password
        return env


class RsyncDaemon:
    """``rsync --daemon`` serving modules out of a directory tree.

    ::

        daemon = RsyncDaemon(tmp_dir).start()
        module = daemon.add_module("backups")
        subprocess.run(["rsync", "a.tar", module.url_for("a.tar")], check=True)
        assert (module.root / "a.tar").exists()
        daemon.stop()

    A module named ``module`` serving :attr:`root` exists from the start.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        module: str = "module",
    ) -> None:
        """Set up under ``base_dir`` (a fresh temporary directory if None)."""
        self._own_base = base_dir is None
        self.base_dir = Path(
            base_dir if base_dir is not None else tempfile.mkdtemp(prefix="rsyncd-")
        )
        self.host = host
        self.port = 0
        self.config_path = self.base_dir / "rsyncd.conf"
        self.log_path = self.base_dir / "rsyncd.log"
        self.stderr_path = self.base_dir / "rsyncd.stderr"
        self._modules: dict[str, RsyncModule] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], RsyncDaemon] | None = None
        default = self.add_module(module, write=False)
        #: The default module's directory.
        self.root = default.root
        self.module = default.name

    # -- modules

    def add_module(
        self,
        name: str,
        *,
        read_only: bool = False,
        user: str | None = None,
        password: str | None = None,
        write: bool = True,
    ) -> RsyncModule:
        """Serve a new, empty directory as module ``name``."""
        if name in self._modules:
            raise ValueError(f"rsync module {name!r} exists already")
        root = self.base_dir / "modules" / name
        root.mkdir(parents=True)
        module = RsyncModule(self, name, root, read_only, user, password)
        self._modules[name] = module
        if write:
            self.write_config()
        return module

    def remove_module(self, name: str) -> None:
        """Stop serving module ``name`` and delete its directory."""
        module = self._modules.pop(name)
        self.write_config()
        shutil.rmtree(module.root, ignore_errors=True)

    def modules(self) -> dict[str, RsyncModule]:
        """The modules served, by name."""
        return dict(self._modules)

    def set_read_only(self, read_only: bool = True, module: str | None = None) -> None:
        """Make a module (the default one unless named) read-only, or not."""
        self._modules[module or self.module].set_read_only(read_only)

    def write_config(self) -> None:
        """Write rsyncd.conf; the daemon reads it on the next connection."""
        lines = [
            f"pid file = {self.base_dir / 'rsyncd.pid'}",
            f"log file = {self.log_path}",
            # The modules live in a temporary directory, not a chroot jail,
            # and the daemon needs no root for that.
            "use chroot = no",
            "max connections = 0",
            "timeout = 60",
        ]
        if os.geteuid() == 0:
            # As root the daemon would drop to "nobody" for transfers, who
            # cannot write to directories the tests created.
            lines += ["uid = 0", "gid = 0"]
        for module in self._modules.values():
            lines += [
                "",
                f"[{module.name}]",
                f"    path = {module.root}",
                f"    read only = {'true' if module.read_only else 'false'}",
                "    list = yes",
            ]
            if module.user is not None:
                secrets = self.base_dir / f"{module.name}.secrets"
                secrets.write_text(f"{module.user}:{module.password or ''}\n")
                secrets.chmod(0o600)  # rsyncd refuses world-readable secrets
                lines += [f"    auth users = {module.user}", f"    secrets file = {secrets}"]
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        # Atomic replace: a connection arriving mid-write reads old or new.
        tmp.replace(self.config_path)

    # -- life cycle

    def start(self, timeout: float = 10.0) -> RsyncDaemon:
        """Start the daemon on a free port and wait until it accepts."""
        if self._process is not None:
            if self._process.poll() is None:
                return self
            self.stop()  # it died: clean up, then start afresh
        binary = rsync_binary()
        if binary is None:
            raise FileNotFoundError("rsync is not installed (Debian package 'rsync')")
        self.write_config()
        # The free port is found by binding port 0 and letting go, so another
        # process could take it first: try a few times.
        last_error = ""
        for _ in range(5):
            port = self.port or _free_port(self.host)
            # stderr goes to a file: a pipe nobody reads could fill and block.
            with self.stderr_path.open("wb") as stderr:
                process = subprocess.Popen(
                    [
                        binary,
                        "--daemon",
                        "--no-detach",
                        f"--address={self.host}",
                        f"--port={port}",
                        f"--config={self.config_path}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            if _wait_listening(self.host, port, process, timeout):
                self.port = port
                self._process = process
                # finalize() runs at interpreter exit too (atexit=True).
                self._finalizer = weakref.finalize(self, _terminate, process)
                return self
            _terminate(process)
            last_error = self.stderr_path.read_text(errors="replace")
            if self.port:
                break  # a restart on a fixed port: retrying elsewhere is wrong
        raise RuntimeError(f"rsync --daemon did not start: {last_error or self._log_tail()}")

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL); files stay."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop, and delete the base directory if this object created it."""
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        """Whether the daemon process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> RsyncDaemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- addresses

    def url_for(self, path: str = "", module: str | None = None, user: str | None = None) -> str:
        """``rsync://[user@]127.0.0.1:PORT/<module>/<path>``."""
        login = f"{user}@" if user else ""
        return f"rsync://{login}{self.host}:{self.port}/{module or self.module}/{path.lstrip('/')}"

    def host_module_for(
        self, path: str = "", module: str | None = None, user: str | None = None
    ) -> tuple[str, list[str]]:
        """``("[user@]127.0.0.1::<module>/<path>", ["--port", "PORT"])``.

        The ``host::module`` form has no room for a port, so it must be
        passed to rsync as an option.
        """
        login = f"{user}@" if user else ""
        target = f"{login}{self.host}::{module or self.module}/{path.lstrip('/')}"
        return target, ["--port", str(self.port)]

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_listening(host: str, port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
