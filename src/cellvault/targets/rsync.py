"""The NAS rsync target: an rsync daemon (``host::module/path``) or rsync over ssh.

URLs (the seed's ``BACKUP_NAS_RSYNC`` is converted to them):

* ``rsync://[user@]host[:port]/module/path`` for an rsync daemon; its password
  comes from the ``password`` option or ``RSYNC_PASSWORD``, passed to rsync
  in its environment, never on a command line;
* ``rsync+ssh://[user@]host[:port]/path`` for rsync over ssh (``//abs`` for an
  absolute path), with ``ssh_options`` (a list) added to ssh's arguments.

rsync is always run with an argument list, never through a shell. rsync
writes each file to a temporary name in the destination folder and renames
it when complete, so a transfer cut short never leaves a whole-looking file;
the sidecar, sent last, commits the archive as on every target.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..log import get_logger, redact_text
from ..specs import TargetSpec
from .base import ObjectInfo, Target

log = get_logger(__name__)

__all__ = ["RsyncTarget"]

_LISTING = re.compile(
    r"(?P<mode>[-dlcbps][-rwxsStT]{9})\s+(?P<size>[\d,.]+)\s+\S+\s+\S+\s(?P<name>.+)"
)
# rsync's words when the symlink() that creates a name finds it taken.
_LINK_TAKEN = re.compile(r"symlink .* failed: File exists")
# The longest lease or claim created as a link's text (a Linux path holds 4095 bytes).
_MAX_LINK_TEXT = 3 << 10
# What an rsync daemon with "munge symlinks" puts before a link's text (it strips
# it again when it sends the link; removed here too in case it does not).
_MUNGED = b"/rsyncd-munged/"
_MISSING = ("No such file or directory", "change_dir", "does not exist")


class _RsyncError(OSError):
    """rsync exited with an error; the message holds its (redacted) stderr.

    An OSError: what the target's callers treat as a failure of the store,
    wrapped into a :class:`~cellvault.TargetError` naming the target.
    """

    def __init__(self, code: int, stderr: str) -> None:
        self.code = code
        super().__init__(f"rsync exited with code {code}: {redact_text(stderr.strip())[-500:]}")


# Messages name the type of the error ("... (RsyncError: rsync exited with code 10 ...)").
_RsyncError.__name__ = _RsyncError.__qualname__ = "RsyncError"


def private_socket_dir() -> Path:
    """A directory only this user can enter, for ssh's control sockets (mode 0700).

    A socket in a shared ``/tmp`` path could be planted or hijacked by another
    user: ``<tmp>/cellvault-ssh-<uid>`` is used only when it is a real
    directory (not a link) owned by this user with no access for others;
    otherwise a fresh private directory is made.
    """
    uid = os.getuid()
    path = Path(tempfile.gettempdir()) / f"cellvault-ssh-{uid}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    try:
        st = os.lstat(path)
    except OSError:
        return Path(tempfile.mkdtemp(prefix="cellvault-ssh-"))
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        log.warning("ssh.control_dir_unsafe", path=str(path))
        return Path(tempfile.mkdtemp(prefix="cellvault-ssh-"))
    return path


class RsyncTarget(Target):
    """Archives on a NAS reached with rsync."""

    def __init__(self, spec: TargetSpec) -> None:
        super().__init__(spec)
        self.binary = shutil.which(str(spec.options.get("rsync", "rsync")))
        if self.binary is None:
            raise ConfigError(
                f"target {spec.name}: the rsync program is not installed",
                hint="install it (apt-get install rsync) or use BACKUP_NAS_PATH for a mounted NAS",
            )
        parts = urlsplit(spec.url)
        if parts.scheme not in ("rsync", "rsync+ssh") or not parts.hostname:
            raise ConfigError(
                f"target {spec.name}: cannot use {spec.display()} as an rsync destination"
            )
        self.ssh = parts.scheme == "rsync+ssh"
        user = f"{unquote(parts.username)}@" if parts.username else ""
        path = unquote(parts.path)
        self.env = dict(os.environ)
        password = spec.options.get("password") or (
            unquote(parts.password) if parts.password else None
        )
        if password:
            self.env["RSYNC_PASSWORD"] = str(password)
        self.timeout = int(spec.options.get("timeout", 120))
        self.args: list[str] = [f"--timeout={self.timeout}"]
        if self.ssh:
            ssh = ["ssh", "-o", "BatchMode=yes"]
            if spec.options.get("ssh_multiplex", True):
                # One ssh connection for the many short rsync calls of a run
                # (list, read sidecars, lease, put): handshakes dominate otherwise.
                control = private_socket_dir() / "%C"
                ssh += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}"]
                ssh += ["-o", "ControlPersist=30"]
            if parts.port:
                ssh += ["-p", str(parts.port)]
            ssh += [str(o) for o in spec.options.get("ssh_options", ())]
            # After the operator's options: ssh keeps the first value it is given.
            ssh += ["-o", "ConnectTimeout=15"]
            self.args += ["-e", " ".join(ssh)]
            root = path[1:] if path.startswith("//") else path.lstrip("/")
            if path.startswith("//"):
                root = "/" + root.lstrip("/")
            self.base = f"{user}{parts.hostname}:{root.rstrip('/')}"
        else:
            module_path = path.strip("/")
            if not module_path:
                raise ConfigError(f"target {spec.name}: {spec.display()} names no rsync module")
            port = f":{parts.port}" if parts.port else ""
            self.base = f"rsync://{user}{parts.hostname}{port}/{module_path}"
            self.args.append("--contimeout=15")
        self.scratch = Path(str(spec.options.get("scratch_dir", tempfile.gettempdir())))

    def _remote(self, key: str) -> str:
        if not key:
            return self.base + "/"
        return f"{self.base}/{key}"

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run rsync with *args*; bounded by four times the ``timeout`` option, in all.

        rsync runs in its own process group with its output in files, not
        pipes: when the bound is reached the whole group (rsync and the ssh
        it started) is killed, and no process left holding a pipe can keep
        this call waiting.
        """
        assert self.binary is not None
        argv = [self.binary, *self.args, *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            child = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                code = child.wait(timeout=self.timeout * 4)
            except BaseException as exc:
                _kill_group(child)
                if not isinstance(exc, subprocess.TimeoutExpired):
                    raise
                raise TimeoutError(
                    f"rsync did not finish within {self.timeout * 4} s (4 x the target's "
                    f"timeout option, {self.timeout} s); it was stopped"
                ) from None
            out.seek(0)
            err.seek(0)
            proc = subprocess.CompletedProcess(
                argv,
                code,
                out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"),
            )
        if proc.returncode != 0:
            if any(m in proc.stderr for m in _MISSING) and proc.returncode in (23, 5, 2):
                raise FileNotFoundError(redact_text(proc.stderr.strip()))
            raise _RsyncError(proc.returncode, proc.stderr)
        return proc

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, _RsyncError):
            # 10 socket I/O, 12 protocol stream, 30 timeout, 35 daemon timeout;
            # and two runs' --mkpath racing to create the same folder ("File exists").
            return exc.code in (10, 12, 30, 35) or "File exists (17)" in str(exc)
        return super().is_transient(exc)

    def put_file(self, local: Path, key: str) -> None:
        # --mkpath creates the cell's folder; rsync renames its temporary file into place.
        self._run(["--mkpath", "--no-perms", "--chmod=F0640", str(local), self._remote(key)])

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._scratch_file(data) as path:
            self.put_file(path, key)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create *key* only if absent, atomically: as a symbolic link rsync makes.

        rsync writes a file to a temporary name and renames it over whatever
        is there (``--ignore-existing`` checks only before the transfer), so
        two runs could both "create" a file. A symbolic link it makes with
        ``symlink()``, which fails if the name exists by then ("File exists",
        exit code 23); if the name exists when rsync checks, it skips it.
        So *key* is created as a link whose target text is *data* (a lease
        or a claim: small JSON, no NUL byte); :meth:`read_bytes` reads the
        text back without following it, and a later :meth:`put_bytes` (a
        renewal) replaces the link with a plain file.
        """
        if len(data) > _MAX_LINK_TEXT or b"\0" in data:
            raise ValueError(f"{key}: {len(data)} bytes cannot be created exclusively on rsync")
        folder, _, name = key.rpartition("/")
        with tempfile.TemporaryDirectory(dir=self._scratch_dir()) as src:
            os.symlink(data, Path(src) / name)
            args = ["--links", "--mkpath", "--ignore-existing", "--itemize-changes"]
            try:
                proc = self._run(
                    [*args, str(Path(src) / name), self._remote(folder).rstrip("/") + "/"]
                )
            except _RsyncError as exc:
                if exc.code == 23 and _LINK_TAKEN.search(str(exc)):
                    return False  # our symlink() found the name taken: another run made it first
                raise
        return any(
            line.startswith("cL+") and line[12:].startswith(f"{name} -> ")
            for line in proc.stdout.splitlines()
        )

    def read_bytes(self, key: str) -> bytes:
        """The content of *key*; for a symbolic link (a lease made by
        :meth:`create_exclusive`), its target text, never what it points to."""
        return self.read_bounded(key, -1)

    def read_bounded(self, key: str, limit: int) -> bytes:
        with tempfile.TemporaryDirectory(dir=self._scratch_dir()) as dst:
            local = Path(dst) / "key"
            self._run(["--links", self._remote(key), str(local)])
            if local.is_symlink():
                return os.readlink(os.fsencode(local)).removeprefix(_MUNGED)
            if not local.is_file():
                raise FileNotFoundError(key)  # a folder: rsync copied nothing
            with open(local, "rb") as f:
                return f.read(limit + 1 if limit >= 0 else -1)

    def open_read(self, key: str) -> IO[bytes]:
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".cellvault-fetch-", dir=self.scratch)
        os.close(fd)
        try:
            self._run([self._remote(key), name])
            f = open(name, "rb")  # noqa: SIM115 - handed to the caller
        finally:
            # Unlinked at once: the open file stays readable and nothing is left behind.
            with contextlib.suppress(OSError):
                os.unlink(name)
        return f

    def fetch(self, key: str, local: Path) -> None:
        self._run([self._remote(key), str(local)])

    def list(self, folder: str) -> list[ObjectInfo]:
        try:
            proc = self._run(["--list-only", self._remote(folder).rstrip("/") + "/"])
        except FileNotFoundError:
            return []
        out = []
        for line in proc.stdout.splitlines():
            match = _LISTING.match(line)
            if not match or match["name"] in (".", ".."):
                continue
            size = int(re.sub(r"[,.]", "", match["size"]))
            out.append(ObjectInfo(match["name"], size, match["mode"].startswith("d")))
        return out

    def delete(self, key: str) -> None:
        folder, _, name = key.rpartition("/")
        with tempfile.TemporaryDirectory(dir=self._scratch_dir()) as empty:
            # Sync an empty folder onto the remote one, deleting only *name*.
            args = ["-r", "--delete", f"--include=/{name}", "--exclude=*", empty + "/"]
            try:
                self._run([*args, self._remote(folder).rstrip("/") + "/"])
            except FileNotFoundError:
                return
            except _RsyncError as exc:
                # The folder's parent is missing too: the receiver cannot make the
                # folder to sync into (code 11, mkdir failed), so there is nothing to delete.
                if exc.code == 11 and "mkdir" in str(exc) and _MISSING[0] in str(exc):
                    return
                raise

    def _scratch_dir(self) -> str:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return str(self.scratch)

    @contextlib.contextmanager
    def _scratch_file(self, data: bytes) -> Any:
        fd, name = tempfile.mkstemp(prefix=".cellvault-put-", dir=self._scratch_dir())
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            yield Path(name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """Kill *child* and everything it started (its own process group), and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


@hookimpl
def cellvault_make_target(spec: TargetSpec) -> Target | None:
    """``rsync://`` (daemon) and ``rsync+ssh://`` URLs."""
    if spec.scheme in ("rsync", "rsync+ssh"):
        return RsyncTarget(spec)
    return None
